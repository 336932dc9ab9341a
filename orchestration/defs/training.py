"""Training: cached segment states, then the retriever and the CTR ranker over them."""

import time
from dataclasses import replace

import dagster as dg
import pandas as pd
import torch

from m6rec.data.marts import load_rec_data
from m6rec.models.ranking import train_ranker
from m6rec.models.retrieval import train_retriever
from m6rec.models.segments import SegmentCache, build_segment_cache
from m6rec.training.trainer import TrainConfig, result_metadata
from orchestration.defs.resources import ArtifactStore, ModelSettings, WarehouseResource
from orchestration.stages import (
    EXPLAINER,
    GATED_MARTS,
    MARTS,
    MODEL_ASSETS,
    RANKER,
    RETRIEVER,
    SEGMENT_CACHE,
    TEXT_STYLE,
    TOKEN_RANKER,
    save_trained,
)


def param_count(model: torch.nn.Module) -> dict[str, int]:
    return {
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
    """Every item and profile text through the frozen encoder once (pooled states), for all models."""
    model_settings.apply_threads()
    start = time.perf_counter()
    data = load_rec_data(warehouse.database)
    encoder = model_settings.load_encoder()
    cache = build_segment_cache(encoder, data, TEXT_STYLE)
    cache.save(artifacts.path(SEGMENT_CACHE))
    return dg.MaterializeResult(
        metadata={
            "encoder": encoder.name,
            "items": cache.item_states.shape[0],
            "profiles": cache.profile_states.shape[0],
            "state_dim": cache.item_states.shape[1],
            "device": str(encoder.device),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


def _train_config(
    name: str, artifacts: ArtifactStore, model_settings: ModelSettings, steps: int, metric: str
) -> TrainConfig:
    profile = model_settings.resolved()
    return TrainConfig(
        output_dir=str(artifacts.path(f"{name}/run")),
        max_steps=steps,
        lr=1e-3,
        eval_every=profile.eval_every,
        metric=metric,
        patience=profile.patience,
        max_seconds=profile.budget_s,
        seed=model_settings.seed,
        resume=False,
        progress=False,
    )


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["segment_cache"], MARTS["splits"]],
    pool="duckdb",
    kinds={"pytorch"},
)
def retriever(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Two-tower retriever, trained on next-item prediction, early-stopped on valid NDCG@10."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data = load_rec_data(warehouse.database)
    cache = SegmentCache.load(artifacts.path(SEGMENT_CACHE))
    cfg = _train_config(RETRIEVER, artifacts, model_settings, profile.retriever_steps, "ndcg@10")
    model, result = train_retriever(
        data, cache, profile.retriever, cfg, batch_size=profile.batch_size, log=context.log.info
    )
    save_trained(artifacts, RETRIEVER, model, profile.retriever)
    history = pd.DataFrame(result.history)
    return dg.MaterializeResult(
        metadata={
            **result_metadata(result, cfg, profile.batch_size),
            **param_count(model),
            "profile": profile.name,
            "valid_curve": dg.MetadataValue.md(
                history[["step", "train_loss", "ndcg@10", "hit@10"]].to_markdown(index=False)
                if len(history)
                else "(no evaluation)"
            ),
        }
    )


@dg.asset(
    group_name="training",
    deps=[MODEL_ASSETS["segment_cache"], MARTS["ctr_examples"]],
    pool="duckdb",
    kinds={"pytorch"},
)
def ranker(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Late-interaction CTR ranker over cached segments (TALLRec labels), early-stopped on valid AUC."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    data = load_rec_data(warehouse.database)
    examples = warehouse.read("select * from marts.ctr_examples")
    cache = SegmentCache.load(artifacts.path(SEGMENT_CACHE))
    cfg = _train_config(RANKER, artifacts, model_settings, profile.ranker_steps, "auc")
    model, result = train_ranker(
        data, cache, examples, profile.ranker, cfg, batch_size=profile.ranker_batch_size, log=context.log.info
    )
    save_trained(artifacts, RANKER, model, profile.ranker)
    return dg.MaterializeResult(
        metadata={
            **result_metadata(result, cfg, profile.ranker_batch_size),
            **param_count(model),
            "profile": profile.name,
        }
    )


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
        _train_config(TOKEN_RANKER, artifacts, model_settings, config.max_steps, "auc"),
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
    """The instruct causal LM used zero-shot (no tuning on CPU): its Yes/No like-probability AUC on a
    sample of valid-split CTR examples and a few "... because" explanations, saved for the bundle."""
    from m6rec.data.marts import events_of
    from m6rec.evaluation.metrics import ctr_metrics
    from m6rec.models.generation import ctr_behaviour_texts, explain, like_probabilities, like_prompts

    model_settings.apply_threads()
    lm = model_settings.load_explainer()
    if lm is None:
        artifacts.remove(EXPLAINER)
        return dg.MaterializeResult(metadata={"explainer": "none"})
    start = time.perf_counter()
    data = load_rec_data(warehouse.database)
    items = dict(zip(data.items["item_id"], data.item_texts(), strict=True))
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    sample = warehouse.read("select * from marts.ctr_examples where split = 'valid' order by example_id")
    sample = sample.sample(min(len(sample), 64), random_state=0)
    texts = ctr_behaviour_texts(sample, items, profiles, style=TEXT_STYLE, max_events=10)
    probs = like_probabilities(lm, like_prompts(lm, texts))
    scored = time.perf_counter() - start
    examples = []
    for row in sample.head(2).itertuples(index=False):
        user = data.events[data.events["user_id"] == row.user_id]
        history = events_of(user[user["position"] < row.position].tail(10), data.item_texts())
        examples.append(
            f"- {items[row.target_item_id].title}: "
            + explain(
                lm,
                profiles[row.user_id],
                history,
                items[row.target_item_id],
                int(row.target_ts),
                max_new_tokens=32,
                style=TEXT_STYLE,
            )
        )
    with artifacts.replace(EXPLAINER) as tmp:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
    return dg.MaterializeResult(
        metadata={
            "explainer": lm.name,
            "tuning": "none (zero-shot instruct model)",
            "zero_shot_valid_auc": float(ctr_metrics(sample["label"].to_numpy(), probs)["auc"]),
            "auc_sample_size": len(sample),
            "yes_no_seconds": round(scored, 1),
            "sample_explanations": dg.MetadataValue.md("\n".join(examples)),
            "seconds": round(time.perf_counter() - start, 1),
            "path": str(artifacts.path(EXPLAINER)),
        }
    )
