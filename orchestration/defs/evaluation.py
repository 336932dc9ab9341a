"""The candidate bundle, its offline evaluation beside the baselines, and the promotion gate."""

import json
import shutil
import time

import dagster as dg
import numpy as np

from m6rec.data.marts import load_rec_data
from m6rec.evaluation import offline
from m6rec.models.backbones import pick_device
from m6rec.models.late_interaction import load_token_ranker
from m6rec.models.segments import SegmentCache
from m6rec.serving.bundle import save_bundle
from orchestration.defs.resources import ArtifactStore, ModelSettings, WarehouseResource
from orchestration.stages import (
    CANDIDATE,
    CHAMPION,
    EXPLAINER,
    MODEL_ASSETS,
    SEGMENT_CACHE,
    TEXT_STYLE,
    TOKEN_RANKER,
    load_trained,
)


@dg.asset(
    group_name="evaluation",
    deps=[
        MODEL_ASSETS[name] for name in ("retriever", "ranker", "token_ranker", "explainer", "segment_cache")
    ],
    pool="duckdb",
    kinds={"pytorch"},
)
def item_index(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """The candidate bundle: item-tower embeddings and cached segments for every catalogue item, the
    trained models and the encoder, in one folder the service loads."""
    model_settings.apply_threads()
    data = load_rec_data(warehouse.database)
    cache = SegmentCache.load(artifacts.path(SEGMENT_CACHE))
    retriever_model, ranker_model = load_trained(artifacts, data, cache)
    path = save_bundle(
        artifacts.path(CANDIDATE),
        data=data,
        cache=cache,
        encoder=model_settings.load_encoder(),
        retriever=retriever_model,
        ranker=ranker_model,
        style=TEXT_STYLE,
        metrics={"profile": model_settings.resolved().name},
        explainer_dir=artifacts.path(EXPLAINER) if artifacts.exists(EXPLAINER) else None,
        token_ranker_dir=artifacts.path(TOKEN_RANKER) if artifacts.exists(TOKEN_RANKER) else None,
    )
    vectors = retriever_model.item_vectors().detach().numpy()
    with artifacts.replace(f"{CANDIDATE}/item_index.npy") as tmp, tmp.open("wb") as out:
        np.save(out, vectors)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return dg.MaterializeResult(
        metadata={
            "path": str(path),
            "items": vectors.shape[0],
            "dim": vectors.shape[1],
            "bundle_mb": round(size / 2**20, 1),
            "serving_ranker": "token" if (path / "token_ranker").is_dir() else "segment",
        }
    )


def _image(b64: str, title: str) -> str:
    return f"![{title}](data:image/png;base64,{b64})"


@dg.asset(group_name="evaluation", deps=[MODEL_ASSETS["item_index"]], pool="duckdb", kinds={"pytorch"})
def offline_evaluation(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStore,
    model_settings: ModelSettings,
) -> dg.MaterializeResult:
    """Test-split metrics of every model beside Pop / ItemKNN / SASRec trained on the same split, plus
    CTR AUC; writes the model card and evaluation.json into the candidate bundle."""
    model_settings.apply_threads()
    profile = model_settings.resolved()
    start = time.perf_counter()
    data = load_rec_data(warehouse.database)
    cache = SegmentCache.load(artifacts.path(SEGMENT_CACHE))
    retriever_model, ranker_model = load_trained(artifacts, data, cache)
    examples = warehouse.read("select * from marts.ctr_examples")
    token = artifacts.path(TOKEN_RANKER)
    report = offline.evaluate(
        data,
        retriever_model,
        ranker_model,
        examples,
        baselines=profile.baselines,
        sasrec_budget_s=profile.sasrec_budget_s,
        token_ranker=load_token_ranker(token, pick_device()) if token.is_dir() else None,
        style=TEXT_STYLE,
        log=context.log.info,
    )
    manifest = artifacts.read_json(f"{CANDIDATE}/manifest.json")
    manifest["profile"] = profile.name
    manifest["metrics"] = report.to_dict()
    artifacts.write(f"{CANDIDATE}/evaluation.json", json.dumps(report.to_dict(), indent=2, default=float))
    artifacts.write(f"{CANDIDATE}/model_card.md", offline.model_card(report, manifest))
    artifacts.write(f"{CANDIDATE}/manifest.json", json.dumps(manifest, indent=2, default=float))
    images = offline.plots(report)
    ours = report.retrieval["m6rec retriever"]
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(report.markdown()),
            "ndcg_at_k_plot": dg.MetadataValue.md(_image(images["ndcg_at_k"], "NDCG@K")),
            "popularity_plot": dg.MetadataValue.md(_image(images["recommended_popularity"], "popularity")),
            **{f"test_{k}": float(ours[k]) for k in ("ndcg@10", "hit@10", "mrr@10", "coverage@10")},
            "test_ctr_auc": float(report.ctr["m6rec segment ranker"]["auc"]),
            **{
                f"test_ctr_auc ({name})": float(row["auc"])
                for name, row in report.ctr.items()
                if name.startswith("m6rec token ranker")
            },
            **{k: float(v) for k, v in report.validation.items()},
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


class PromotionConfig(dg.Config):
    """The challenger replaces the champion only if no validation metric drops by more than this."""

    tolerance: float = 0.0


def promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, tolerance: float
) -> tuple[bool, str]:
    """Higher is better for every gated metric; a first model is always promoted."""
    if not champion:
        return True, "no champion yet"
    worse = [
        f"{k}: {challenger.get(k, float('-inf')):.4f} < {v:.4f} - {tolerance}"
        for k, v in champion.items()
        if challenger.get(k, float("-inf")) < v - tolerance
    ]
    return (
        (False, "challenger is worse on " + "; ".join(worse)) if worse else (True, "not worse on any metric")
    )


@dg.asset(group_name="evaluation", deps=[MODEL_ASSETS["offline_evaluation"]])
def promoted_model(
    context: dg.AssetExecutionContext, artifacts: ArtifactStore, config: PromotionConfig
) -> dg.MaterializeResult:
    """The promotion gate: copy the candidate over the champion (atomically) when its validation metrics
    are not worse; otherwise the champion, and the Bento built from it, stay as they are."""
    challenger_metrics = artifacts.read_json(f"{CANDIDATE}/evaluation.json")["validation"]
    champion_metrics = (
        artifacts.read_json(f"{CHAMPION}/evaluation.json")["validation"]
        if artifacts.exists(f"{CHAMPION}/evaluation.json")
        else None
    )
    promote, reason = promotion_decision(challenger_metrics, champion_metrics, config.tolerance)
    if promote:
        with artifacts.replace(CHAMPION) as tmp:
            shutil.copytree(artifacts.path(CANDIDATE), tmp)
    context.log.info(f"{'promoted' if promote else 'kept the champion'}: {reason}")
    manifest = artifacts.read_json(f"{CHAMPION}/manifest.json") if artifacts.exists(CHAMPION) else {}
    return dg.MaterializeResult(
        metadata={
            "promoted": promote,
            "reason": reason,
            "champion_path": str(artifacts.path(CHAMPION)),
            "champion_created_at": manifest.get("created_at", "n/a"),
            "challenger": dg.MetadataValue.json(challenger_metrics),
            "previous_champion": dg.MetadataValue.json(champion_metrics or {}),
        }
    )
