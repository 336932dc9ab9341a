"""Training: the segment caches (one encoder pass), then the tuned language model as retriever and CTR
scorer, and the frozen-feature retriever and segment ranker beside them (each one evaluation row)."""

import hashlib
import json
import time
from dataclasses import asdict, replace

import dagster as dg
import pandas as pd
import torch

from m6rec.data.marts import load_rec_data
from m6rec.data.warehouse import read_build_info
from m6rec.evaluation.metrics import sample_users
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_ranking import train_lm_ranker
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.models.ranking import train_ranker
from m6rec.models.retrieval import train_retriever
from m6rec.training.trainer import TrainConfig, TrainResult, result_metadata
from orchestration.defs.resources import ArtifactStore, ModelSettings, WarehouseResource
from orchestration.stages import (
    EXPLAINER,
    EXPLAINER_CHECK,
    EXPLAINER_YES_NO,
    FROZEN_RETRIEVER,
    GATED_MARTS,
    LM_CACHE,
    LM_RANKER,
    LM_RETRIEVER,
    LM_RETRIEVER_IDS,
    MARTS,
    MODEL_ASSETS,
    SEGMENT_CACHE,
    SEGMENT_RANKER,
    SEGMENT_STYLE,
    TEXT_STYLE,
    TOKEN_RANKER,
    load_cache,
    load_trained,
    save_caches,
    save_trained,
)


def param_count(model: torch.nn.Module) -> dict[str, int]:
    counts = getattr(model, "parameter_counts", None)
    if counts is not None:
        return counts()
    return {
        "lm_trainable_parameters": 0,  # frozen features: no weight of the language model is trained
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "cached_state_values": sum(b.numel() for b in model.buffers()),  # segment cache, not trained
    }


@dg.asset(
    group_name="training",
    deps=[*GATED_MARTS, MARTS["user_profiles"]],
    pool="duckdb",
    kinds={"pytorch"},
)
def segment_cache(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Every item and profile text through the frozen encoder once: the pooled states after the lower
    layers (what the tuned top layers read) and the sentence embeddings (the frozen-feature models)."""
    model_settings.apply_threads()
    start = time.perf_counter()
    data = load_rec_data(warehouse.database)
    encoder = model_settings.load_encoder()
    split = model_settings.resolved().lm_split(encoder.num_layers)
    cache = build_lower_cache(encoder, data, SEGMENT_STYLE, split)
    save_caches(artifacts, cache, data)
    return dg.MaterializeResult(
        metadata={
            "encoder": encoder.name,
            "items": cache.item_states.shape[0],
            "profiles": cache.profile_states.shape[0],
            "state_dim": cache.item_states.shape[1],
            "cached_layers": split,
            "tuned_layers": encoder.num_layers - split,
            "device": str(encoder.device),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


def _valid_users(data, model_settings: ModelSettings) -> set[str] | None:
    """The users whose valid targets select every retriever (all of them on small logs)."""
    holdout = data.holdout("valid")["user_id"].astype(str)
    return sample_users(holdout, model_settings.resolved().max_eval_users, model_settings.seed)


def _run_key(name: str, warehouse: WarehouseResource, model_settings: ModelSettings, steps: int) -> str:
    """What a training run's checkpoints belong to: the published marts (their fingerprint), the profile
    with its overrides, the seed and the step count. A run killed mid-training resumes only into the same
    key; new data or another config starts fresh."""
    with warehouse.connect(read_only=True) as conn:
        info = read_build_info(conn)
    payload = {
        "model": name,
        "marts": info["fingerprint"] if info else "unpublished",
        "profile": asdict(model_settings.resolved()),
        "seed": model_settings.seed,
        "steps": steps,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _train_config(
    name: str,
    artifacts: ArtifactStore,
    warehouse: WarehouseResource,
    model_settings: ModelSettings,
    steps: int,
    metric: str,
    *,
    tuned_lm: bool = False,
) -> TrainConfig:
    """The trainer's settings for ``name``: checkpoints in ``<name>/run/<run key>`` after every
    evaluation, resumed from when the same run is launched again after a kill (older keys are dropped).
    ``tuned_lm``: the tuned-LM models' evaluation interval and learning-rate schedule."""
    profile = model_settings.resolved()
    key = _run_key(name, warehouse, model_settings, steps)
    runs = artifacts.path(f"{name}/run/{key}").parent
    for stale in runs.iterdir():
        if stale.name != key:
            artifacts.remove(f"{name}/run/{stale.name}")
    return TrainConfig(
        output_dir=str(artifacts.path(f"{name}/run/{key}")),
        max_steps=steps,
        lr=1e-3,
        eval_every=profile.lm_eval_every if tuned_lm else profile.eval_every,
        lr_decay=profile.lm_lr_decay if tuned_lm else "none",
        metric=metric,
        patience=profile.patience,
        max_seconds=model_settings.budget(name),
        seed=model_settings.seed,
        resume=True,
        progress=False,
    )


def _metadata(result: TrainResult, cfg: TrainConfig, batch_size: int, model, profile) -> dict:
    history = pd.DataFrame(result.history)
    curve = [c for c in ("step", "train_loss", cfg.metric, "hit@10") if c in history]
    return {
        **result_metadata(result, cfg, batch_size),
        **param_count(model),
        "profile": profile.name,
        "valid_curve": dg.MetadataValue.md(
            history[curve].to_markdown(index=False) if len(history) else "(no evaluation)"
        ),
    }


def _lm_inputs(warehouse: WarehouseResource, artifacts: ArtifactStore, model_settings: ModelSettings):
    data = load_rec_data(warehouse.database)
    return data, load_cache(artifacts, LM_CACHE, data), model_settings.load_encoder().model


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["segment_cache"], *GATED_MARTS],
    pool="duckdb",
    kinds={"pytorch"},
)
def lm_retriever(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The retriever M6-Rec's way, text only: the encoder's own top layers, initialised from the
    checkpoint and tuned on next-item prediction over the cached segments (no item IDs anywhere);
    early-stopped on valid NDCG@10."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data, cache, encoder_model = _lm_inputs(warehouse, artifacts, model_settings)
    cfg = _train_config(
        LM_RETRIEVER, artifacts, warehouse, model_settings, profile.retriever_steps, "ndcg@10", tuned_lm=True
    )
    model, result = train_lm_retriever(
        data,
        cache,
        encoder_model,
        profile.lm_retriever,
        cfg,
        batch_size=profile.lm_batch_size,
        log=context.log.info,
        eval_users=_valid_users(data, model_settings),
    )
    save_trained(artifacts, LM_RETRIEVER, model, profile.lm_retriever, data)
    return dg.MaterializeResult(metadata=_metadata(result, cfg, profile.lm_batch_size, model, profile))


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["lm_retriever"], *GATED_MARTS],
    pool="duckdb",
    kinds={"pytorch"},
)
def lm_retriever_ids(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Item IDs as an add-on: the text-only LM retriever, warm-started, with a learned row per item seen
    in training added to its item tower; reported beside the text-only model."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data, cache, encoder_model = _lm_inputs(warehouse, artifacts, model_settings)
    text_only, _ = load_trained(
        artifacts, LM_RETRIEVER, data, load_cache(artifacts, SEGMENT_CACHE, data), cache, encoder_model
    )
    config = replace(profile.lm_retriever, use_ids=True)
    cfg = _train_config(
        LM_RETRIEVER_IDS,
        artifacts,
        warehouse,
        model_settings,
        profile.retriever_steps,
        "ndcg@10",
        tuned_lm=True,
    )
    model, result = train_lm_retriever(
        data,
        cache,
        encoder_model,
        config,
        cfg,
        batch_size=profile.lm_batch_size,
        init=text_only,
        log=context.log.info,
        eval_users=_valid_users(data, model_settings),
    )
    save_trained(artifacts, LM_RETRIEVER_IDS, model, config, data)
    return dg.MaterializeResult(metadata=_metadata(result, cfg, profile.lm_batch_size, model, profile))


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["segment_cache"], *GATED_MARTS],
    pool="duckdb",
    kinds={"pytorch"},
)
def lm_ranker(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The CTR scorer M6-Rec's way: the encoder's own top layers tuned over [profile, last history
    events, candidate] segments (TALLRec labels), early-stopped on valid AUC."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data, cache, encoder_model = _lm_inputs(warehouse, artifacts, model_settings)
    examples = warehouse.read("select * from marts.ctr_examples where split in ('train', 'valid')")
    cfg = _train_config(
        LM_RANKER, artifacts, warehouse, model_settings, profile.ranker_steps, "auc", tuned_lm=True
    )
    model, result = train_lm_ranker(
        data,
        cache,
        encoder_model,
        examples,
        profile.lm_ranker,
        cfg,
        batch_size=profile.lm_ranker_batch_size,
        log=context.log.info,
    )
    save_trained(artifacts, LM_RANKER, model, profile.lm_ranker, data)
    return dg.MaterializeResult(metadata=_metadata(result, cfg, profile.lm_ranker_batch_size, model, profile))


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["segment_cache"], *GATED_MARTS],
    pool="duckdb",
    kinds={"pytorch"},
)
def frozen_retriever(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The frozen-feature baseline: a small transformer trained from scratch over the frozen sentence
    embeddings, with item-ID rows (no weight of the language model is trained)."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data = load_rec_data(warehouse.database)
    cache = load_cache(artifacts, SEGMENT_CACHE, data)
    cfg = _train_config(
        FROZEN_RETRIEVER, artifacts, warehouse, model_settings, profile.retriever_steps, "ndcg@10"
    )
    model, result = train_retriever(
        data,
        cache,
        profile.retriever,
        cfg,
        batch_size=profile.batch_size,
        log=context.log.info,
        eval_users=_valid_users(data, model_settings),
    )
    save_trained(artifacts, FROZEN_RETRIEVER, model, profile.retriever, data)
    return dg.MaterializeResult(metadata=_metadata(result, cfg, profile.batch_size, model, profile))


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["segment_cache"], *GATED_MARTS],
    pool="duckdb",
    kinds={"pytorch"},
)
def segment_ranker(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The frozen-feature CTR baseline: a small transformer from scratch over the frozen sentence
    embeddings of the segments, with item-ID rows; early-stopped on valid AUC."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data = load_rec_data(warehouse.database)
    examples = warehouse.read("select * from marts.ctr_examples where split in ('train', 'valid')")
    cache = load_cache(artifacts, SEGMENT_CACHE, data)
    cfg = _train_config(SEGMENT_RANKER, artifacts, warehouse, model_settings, profile.ranker_steps, "auc")
    model, result = train_ranker(
        data, cache, examples, profile.ranker, cfg, batch_size=profile.ranker_batch_size, log=context.log.info
    )
    save_trained(artifacts, SEGMENT_RANKER, model, profile.ranker, data)
    return dg.MaterializeResult(metadata=_metadata(result, cfg, profile.ranker_batch_size, model, profile))


@dg.asset(
    group_name="training",
    deps=GATED_MARTS,
    pool="duckdb",
    kinds={"pytorch"},
)
def token_ranker(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Token-level fine-tuning (profiles ``full`` and ``smoke``): the encoder itself, trained as a
    late-interaction CTR scorer over the behaviour text's segments, early-stopped on valid AUC. The CPU
    ``default`` profile leaves it out (the pooled ``ranker`` serves instead)."""
    from m6rec.models.late_interaction import save_token_ranker, train_token_ranker

    model_settings.apply_threads()
    profile = model_settings.resolved()
    if profile.token_ranker is None:
        artifacts.remove(TOKEN_RANKER)
        return dg.MaterializeResult(
            metadata={"token_ranker": f"off in profile {profile.name!r} (the pooled ranker serves)"}
        )
    config = profile.token_ranker
    if profile.encoder != "tiny" and not torch.cuda.is_available():
        context.log.warning(
            "token-level fine-tuning on CPU: MiniLM trained ~2 examples/s on a 2-core CPU "
            "(docs/benchmarks.md), hours per epoch; the full profile is meant for a GPU"
        )
    data = load_rec_data(warehouse.database)
    examples = warehouse.read("select * from marts.ctr_examples where split in ('train', 'valid')")
    cfg = replace(
        _train_config(TOKEN_RANKER, artifacts, warehouse, model_settings, config.max_steps, "auc"),
        lr=config.lr,
        warmup_steps=min(500, config.max_steps // 10),
        weight_decay=0.01,
    )
    encoder = model_settings.load_encoder()
    scorer, result = train_token_ranker(
        data, encoder, examples, config, cfg, TEXT_STYLE, log=context.log.info
    )
    out = save_token_ranker(scorer, config, artifacts.path(TOKEN_RANKER))
    n_train = int((examples["split"] == "train").sum())
    return dg.MaterializeResult(
        metadata={
            **result_metadata(result, cfg, config.batch_size),
            **param_count(scorer),
            "profile": profile.name,
            "encoder": encoder.name,
            "top_layers": config.top_k,
            "lower_layers": scorer.split,
            "train_examples": min(n_train, config.max_train_examples or n_train),
            "path": str(out),
        }
    )


@dg.asset(
    group_name="training",
    deps=GATED_MARTS,
    pool="duckdb",
    kinds={"pytorch"},
)
def explainer(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The instruct causal LM as explainer: its zero-shot Yes/No answers on a seeded sample of test-split
    CTR examples (a CTR row of the evaluation); then LoRA-tuned on explanations built from the train
    split (the history items that share the item's genres, by the like rule) and checked on valid
    events by the factuality rules — the false-statement and evidence rates are this asset's metadata
    and the promotion gate's explanation condition. Saved, merged, for the bundle."""
    from m6rec.evaluation.metrics import ctr_metrics
    from m6rec.models.explainer_tuning import check_explainer, explanation_cases, tune_explainer
    from m6rec.models.generation import yes_no_sample

    model_settings.apply_threads()
    lm = model_settings.load_explainer()
    if lm is None:
        for key in (EXPLAINER, EXPLAINER_YES_NO, EXPLAINER_CHECK):
            artifacts.remove(key)
        return dg.MaterializeResult(metadata={"explainer": "none"})
    start = time.perf_counter()
    profile = model_settings.resolved()
    tuning = profile.explainer_tuning
    data = load_rec_data(warehouse.database)
    catalogue = data.item_texts()
    items = dict(zip(data.items["item_id"], catalogue, strict=True))
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    examples = warehouse.read("select * from marts.ctr_examples where split = 'test'")
    test, test_probs = yes_no_sample(
        lm, examples, items, profiles, profile.smollm2_test_examples, style=TEXT_STYLE
    )
    artifacts.write(
        EXPLAINER_YES_NO,
        json.dumps(
            {
                "row": f"{lm.name} Yes/No (zero-shot, {len(test)} sampled test examples)",
                "example_ids": test["example_id"].tolist(),
                "labels": test["label"].astype(int).tolist(),
                "probabilities": [float(p) for p in test_probs],
                "marts_fingerprint": data.contract.marts_fingerprint,
            }
        ),
    )
    scored = time.perf_counter() - start
    seed = model_settings.seed
    is_like = data.contract.is_like
    tuning_metadata: dict = {"tuning": "none (the instruct model as it is)"}
    if tuning.method != "none":
        cases = explanation_cases(data, "train", tuning.examples, seed=seed, max_events=tuning.max_events)
        tuned = tune_explainer(
            lm, cases, is_like, replace(tuning, seed=seed), style=TEXT_STYLE, log=context.log.info
        )
        tuning_metadata = {
            "tuning": str(tuned.report),
            "lm_trainable_parameters": tuned.report.trainable_parameters,
            "total_parameters": tuned.report.total_parameters,
            "train_examples": tuned.examples,
            "train_steps": tuned.train.steps,
            "train_seconds": round(tuned.train.seconds, 1),
            "samples_per_second": round(tuned.train.steps * tuning.batch_size / tuned.train.step_seconds, 2)
            if tuned.train.step_seconds
            else 0.0,
            "train_loss_last": float(tuned.train.history[-1].get("train_loss", float("nan")))
            if tuned.train.history
            else float("nan"),
        }
    valid = explanation_cases(data, "valid", tuning.check_users, seed=seed + 1, max_events=tuning.max_events)
    check = check_explainer(
        lm,
        valid,
        catalogue,
        is_like,
        style=TEXT_STYLE,
        max_events=tuning.max_events,
        max_new_tokens=tuning.max_new_tokens,
        grounded=tuning.grounded,
    )
    record = {
        "explainer": lm.name,
        "split": "valid",
        "tuning": tuning_metadata["tuning"],
        # the prompt's history and the decoding: the service explains the same way
        "max_events": tuning.max_events,
        "decoding": "grounded" if tuning.grounded else "free",
        **check.to_dict(),
        "marts_fingerprint": data.contract.marts_fingerprint,
    }
    with artifacts.replace(EXPLAINER) as tmp:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
    artifacts.write(EXPLAINER_CHECK, json.dumps(record, indent=2))
    return dg.MaterializeResult(
        metadata={
            "explainer": lm.name,
            **tuning_metadata,
            "zero_shot_test_auc": float(ctr_metrics(test["label"].to_numpy(), test_probs)["auc"]),
            "test_yes_no_examples": len(test),
            "yes_no_seconds": round(scored, 1),
            "valid_false_statement_rate": float(check.summary["false_statement_rate"]),
            "valid_evidence_rate": float(check.summary["evidence_rate"]),
            "checked_explanations": int(check.summary["n"]),
            "check_seconds": round(check.seconds, 1),
            "sample_explanations": dg.MetadataValue.md("\n".join(f"- {t}" for t in check.explanations[:5])),
            "false_claims_found": dg.MetadataValue.json(record["false_claims_found"]),
            "seconds": round(time.perf_counter() - start, 1),
            "path": str(artifacts.path(EXPLAINER)),
        }
    )
