"""The offline evaluation of every trained model beside the baselines and the candidate bundle of the
winners (per task, the best on the valid split)."""

import json
import time

import dagster as dg
import numpy as np

from m6rec.data.marts import load_rec_data
from m6rec.evaluation import offline
from m6rec.evaluation.zero_shot import zero_shot_markdown, zero_shot_report
from m6rec.models.backbones import load_causal_lm, pick_device
from m6rec.models.late_interaction import load_token_ranker
from m6rec.models.ranking import ctr_tensors
from m6rec.serving.bundle import save_bundle
from m6rec.serving.item_index import IndexConfig
from m6rec.serving.precision import bf16_check, supports_scoring_dtype
from orchestration.defs.resources import ArtifactStore, ModelSettings, WarehouseResource
from orchestration.stages import (
    CANDIDATE,
    CTR_MODELS,
    EVALUATION,
    EXPLAINER,
    EXPLAINER_CHECK,
    EXPLAINER_YES_NO,
    LM_CACHE,
    MODEL_ASSETS,
    MODEL_CARD,
    RETRIEVERS,
    ROW_NAMES,
    SEGMENT_CACHE,
    SEGMENT_STYLE,
    TEXT_STYLE,
    TOKEN_RANKER,
    check_same_marts,
    load_cache,
    load_trained,
    trained_keys,
)


def _trained_models(artifacts: ArtifactStore, data, encoder_model):
    """Every model the training assets wrote, by evaluation row: ``{row: (key, model, spec)}``."""
    cache = load_cache(artifacts, SEGMENT_CACHE, data)
    lm_cache = load_cache(artifacts, LM_CACHE, data) if artifacts.exists(LM_CACHE) else None
    out = {}
    for key in trained_keys(artifacts, (*RETRIEVERS, *CTR_MODELS)):
        model, spec = load_trained(artifacts, key, data, cache, lm_cache, encoder_model)
        out[ROW_NAMES[key]] = (key, model, spec)
    return cache, lm_cache, out


def _image(b64: str, title: str) -> str:
    return f"![{title}](data:image/png;base64,{b64})"


@dg.asset(
    group_name="evaluation",
    deps=[MODEL_ASSETS[key] for key in (*RETRIEVERS, *CTR_MODELS, "token_ranker", "explainer")],
    pool="duckdb",
    kinds={"pytorch"},
)
def offline_evaluation(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Test-split metrics of every trained model (the tuned LM text-only and with item IDs, the
    frozen-feature models, the CTR scorers, the explainer LM's Yes/No answers) beside Pop, ItemKNN tuned
    on valid and SASRec trained on the same split; per task the best m6rec model on valid serves."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    start = time.perf_counter()
    data = load_rec_data(warehouse.database)
    _, _, models = _trained_models(artifacts, data, model_settings.load_encoder().model)
    examples = warehouse.read("select * from marts.ctr_examples")
    token = artifacts.path(TOKEN_RANKER)
    extra = {}
    if artifacts.exists(EXPLAINER_YES_NO):
        answers = artifacts.read_json(EXPLAINER_YES_NO)
        check_same_marts("the explainer's Yes/No answers", answers.get("marts_fingerprint"), data)
        extra[answers["row"]] = (np.asarray(answers["labels"]), np.asarray(answers["probabilities"]))
    retrievers = {row: m for row, (_, m, spec) in models.items() if spec["kind"].endswith("retriever")}
    report = offline.evaluate(
        data,
        retrievers,
        {row: m for row, (_, m, spec) in models.items() if spec["kind"].endswith("ranker")},
        examples,
        baselines=profile.baselines,
        sasrec_budget_s=profile.sasrec_budget_s,
        token_ranker=load_token_ranker(token, pick_device()) if token.is_dir() else None,
        style=TEXT_STYLE,
        extra_ctr=extra,
        log=context.log.info,
        max_eval_users=profile.max_eval_users,
        seed=model_settings.seed,
    )
    evaluation = {**report.to_dict(), "marts_fingerprint": data.contract.marts_fingerprint}
    # {} unless the marts hold cold items (dbt var zero_shot on); the explainer LM ranks a sample of the
    # cold events by likelihood (M6-Rec's zero-shot form) beside the item towers.
    explainer = (
        load_causal_lm(artifacts.path(EXPLAINER), device=pick_device())
        if artifacts.exists(EXPLAINER) and data.items["is_cold"].any()
        else None
    )
    zero_shot = zero_shot_report(
        retrievers, data, lm=explainer, lm_events=profile.zero_shot_lm_events, style=TEXT_STYLE
    )
    if zero_shot:
        evaluation["zero_shot"] = zero_shot
    artifacts.write(EVALUATION, json.dumps(evaluation, indent=2, default=float))
    images = offline.plots(report)
    serving_retriever = report.retrieval[report.serving["retrieval"]]
    zero_shot_metadata = (
        {
            "zero_shot": dg.MetadataValue.md(zero_shot_markdown(zero_shot)),
            **{f"zero_shot_hr@50 ({row})": float(m["hr@50"]) for row, m in zero_shot["rows"].items()},
        }
        if zero_shot
        else {}
    )
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(report.markdown()),
            "ndcg_at_k_plot": dg.MetadataValue.md(_image(images["ndcg_at_k"], "NDCG@K")),
            "popularity_plot": dg.MetadataValue.md(_image(images["recommended_popularity"], "popularity")),
            "serving_retrieval": report.serving["retrieval"],
            "serving_ctr": report.serving["ctr"],
            **{f"serving_{task}_why": why for task, why in report.selection.items()},
            **{
                f"test_{k}": float(serving_retriever[k])
                for k in ("ndcg@10", "hit@10", "mrr@10", "coverage@10")
            },
            "test_ctr_auc": float(report.ctr[report.serving["ctr"]]["auc"]),
            **{f"test_ndcg@10 ({row})": float(m["ndcg@10"]) for row, m in report.retrieval.items()},
            **{f"test_auc ({row})": float(m["auc"]) for row, m in report.ctr.items()},
            **{k: float(v) for k, v in report.validation.items()},
            **zero_shot_metadata,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


def _explainer_check(artifacts: ArtifactStore, data) -> dict | None:
    """The explainer's factuality check, refused when it was measured on other marts."""
    if not artifacts.exists(EXPLAINER_CHECK):
        return None
    check = artifacts.read_json(EXPLAINER_CHECK)
    check_same_marts("the explainer's check", check.get("marts_fingerprint"), data)
    return check


@dg.asset(
    group_name="evaluation", deps=[MODEL_ASSETS["offline_evaluation"]], pool="duckdb", kinds={"pytorch"}
)
def item_index(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The candidate bundle: the winning retriever and CTR model of the evaluation, their cached segment
    states and item-tower embeddings for every catalogue item, the ANN index over them when the catalogue
    has ``ann_exact_below`` items or more, the encoder (and the explainer), the evaluation report and
    model card, in one folder the service loads."""
    model_settings.apply_threads()
    data = load_rec_data(warehouse.database)
    encoder = model_settings.load_encoder()
    cache, lm_cache, models = _trained_models(artifacts, data, encoder.model)
    evaluation = artifacts.read_json(EVALUATION)
    check_same_marts("the offline evaluation", evaluation.get("marts_fingerprint"), data)
    serving = evaluation["serving"]
    token_serves = serving["ctr"].startswith(offline.TOKEN_RANKER_PREFIX)
    if token_serves:  # the token ranker ranks; the best pooled CTR model stays as the bundle's ranker.pt
        pooled = {row: auc for row, auc in evaluation["valid"]["ctr"].items() if row in models}
        ranker_row = max(pooled, key=pooled.get)
    else:
        ranker_row = serving["ctr"]
    chosen = {"retriever": models[serving["retrieval"]], "ranker": models[ranker_row]}
    uses_lm = any(spec["kind"].startswith("lm_") for _, _, spec in chosen.values())
    ranker_spec = {**chosen["ranker"][2], "name": ranker_row}
    if supports_scoring_dtype(chosen["ranker"][1]) and not token_serves:
        # may the service score in bfloat16? Measured here, on the valid split, for the manifest
        valid = warehouse.read("select * from marts.ctr_examples where split = 'valid'")
        valid_tensors = ctr_tensors(valid, data)
        ranker_spec["precision"] = bf16_check(chosen["ranker"][1], valid_tensors, model_settings.seed)
        context.log.info(f"bfloat16 check of the served scorer: {ranker_spec['precision']}")
    path = save_bundle(
        artifacts.path(CANDIDATE),
        data=data,
        cache=cache,
        lm_cache=lm_cache if uses_lm else None,
        encoder=encoder,
        retriever=chosen["retriever"][1],
        retriever_spec={**chosen["retriever"][2], "name": serving["retrieval"]},
        ranker=chosen["ranker"][1],
        ranker_spec=ranker_spec,
        style=TEXT_STYLE,
        segment_style=SEGMENT_STYLE,
        metrics=evaluation,
        explainer_dir=artifacts.path(EXPLAINER) if artifacts.exists(EXPLAINER) else None,
        explainer_check=_explainer_check(artifacts, data),
        token_ranker_dir=artifacts.path(TOKEN_RANKER) if token_serves else None,
        index_config=IndexConfig(exact_below=model_settings.ann_exact_below),
    )
    manifest = artifacts.read_json(f"{CANDIDATE}/manifest.json")
    manifest["profile"] = model_settings.resolved().name
    report = offline.EvaluationReport.from_dict(evaluation)
    artifacts.write(f"{CANDIDATE}/evaluation.json", json.dumps(evaluation, indent=2, default=float))
    artifacts.write(f"{CANDIDATE}/{MODEL_CARD}", offline.model_card(report, manifest))
    artifacts.write(f"{CANDIDATE}/manifest.json", json.dumps(manifest, indent=2, default=float))
    ann = manifest["item_index"]["ann"]
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return dg.MaterializeResult(
        metadata={
            "path": str(path),
            "items": manifest["n_items"],
            "retrieval": "exact scan" if ann is None else f"ANN ({ann['kind']}, {ann['library']})",
            **(
                {}
                if ann is None
                else {f"ann_{k}": ann[k] for k in ("effort", "recall_at_10", "build_seconds")}
            ),
            "bundle_mb": round(size / 2**20, 1),
            "serving_retrieval": serving["retrieval"],
            "serving_ctr": serving["ctr"],
            **(
                {f"bf16_check_{k}": v for k, v in ranker_spec["precision"].items() if k != "dtype"}
                if "precision" in ranker_spec
                else {}
            ),
        }
    )
