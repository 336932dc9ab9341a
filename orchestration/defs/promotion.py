"""The promotion gate: the candidate bundle replaces the champion only when, scored on the same current
valid split, it is not worse — or when the champion cannot serve the current data and the candidate
beats this run's baselines (:mod:`m6rec.evaluation.gate`)."""

import json
import shutil

import dagster as dg

from m6rec.data.marts import load_rec_data
from m6rec.evaluation.gate import (
    MAX_FALSE_EXPLANATIONS,
    MIN_COVERAGE,
    decide,
    evaluate_same_data,
    metrics_table,
)
from m6rec.models.backbones import pick_device
from orchestration.defs.resources import ArtifactStore, ModelSettings, WarehouseResource
from orchestration.stages import CANDIDATE, CHAMPION, MODEL_ASSETS, PROMOTION_RECORD


class PromotionConfig(dg.Config):
    """``tolerance``: how much a gated metric may drop on the same data; ``min_coverage``: the share of
    the current valid events a champion must be able to score to count as serving the current data;
    ``max_false_explanations``: the share of the explainer's checked valid explanations that may state
    something false (the ``explainer`` asset's check)."""

    tolerance: float = 0.0
    min_coverage: float = MIN_COVERAGE
    max_false_explanations: float = MAX_FALSE_EXPLANATIONS


@dg.asset(group_name="evaluation", deps=[MODEL_ASSETS["item_index"]], pool="duckdb", kinds={"pytorch"})
def promoted_model(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStore,
    warehouse: WarehouseResource,
    model_settings: ModelSettings,
    config: PromotionConfig,
) -> dg.MaterializeResult:
    """Score the champion and the candidate on this run's valid split through the serving path, decide,
    and copy the candidate over the champion (atomically) when it wins. ``promotion.json`` and this
    asset's metadata hold every input of the decision: ``decide(**inputs)`` gives it again."""
    from m6rec.serving.recommender import Recommender

    model_settings.apply_threads()
    evaluation = artifacts.read_json(f"{CANDIDATE}/evaluation.json")
    candidate = artifacts.read_json(f"{CANDIDATE}/manifest.json")
    has_champion = artifacts.exists(f"{CHAMPION}/manifest.json")
    same_data, champion_error = None, None
    if has_champion:
        try:
            champion = Recommender(artifacts.path(CHAMPION), device=pick_device())
        except Exception as exc:  # an older format, a broken copy: it cannot serve what this m6rec serves
            champion_error = f"the champion bundle does not load: {type(exc).__name__}: {exc}"
        else:
            data = load_rec_data(warehouse.database)
            examples = warehouse.read("select * from marts.ctr_examples")
            challenger = Recommender(artifacts.path(CANDIDATE), device=pick_device())
            same_data = evaluate_same_data(
                challenger,
                champion,
                data,
                examples,
                log=context.log.info,
                max_users=model_settings.resolved().max_eval_users,
                seed=model_settings.seed,
            )
    inputs = {
        "challenger_valid": evaluation["validation"],
        "valid_baselines": evaluation.get("valid_baselines", {}),
        "same_data": same_data,
        "champion_error": champion_error,
        "has_champion": has_champion,
        "tolerance": config.tolerance,
        "min_coverage": config.min_coverage,
        "explanations": _check_summary(candidate.get("explainer_check")),
        "max_false_explanations": config.max_false_explanations,
    }
    decision = decide(**inputs)
    previous = artifacts.read_json(f"{CHAMPION}/manifest.json") if has_champion else {}
    if decision.promote:
        with artifacts.replace(CHAMPION) as tmp:
            shutil.copytree(artifacts.path(CANDIDATE), tmp)
    context.log.info(
        f"{'promoted' if decision.promote else 'kept the champion'} ({decision.rule}): {decision.reason}"
    )
    record = {
        "decision": decision.to_dict(),
        "inputs": {**inputs, "same_data": same_data.__dict__ if same_data else None},
        "champion_before": previous.get("created_at"),
        "candidate": candidate.get("created_at"),
    }
    artifacts.write(PROMOTION_RECORD, json.dumps(record, indent=2, default=float))
    recorded_inputs = dg.MetadataValue.json(json.loads(json.dumps(record["inputs"], default=float)))
    if (not decision.promote and not has_champion) or decision.rule == "challenger below floor":
        # nothing can serve the current data: say so loudly
        hint = (
            " Tune the explainer longer (the profile's explainer_tuning) or bundle none "
            "(model_settings.explainer: none)."
            if decision.rule == "explanations fail the check"
            else ""
        )
        raise dg.Failure(
            description=f"No model promoted: {decision.reason}.{hint} "
            "The champion and its Bento stay as they are.",
            metadata={"decision_inputs": recorded_inputs},
        )
    manifest = artifacts.read_json(f"{CHAMPION}/manifest.json")
    return dg.MaterializeResult(
        metadata={
            "promoted": decision.promote,
            "rule": decision.rule,
            "reason": decision.reason,
            "same_data": dg.MetadataValue.md(metrics_table(same_data)) if same_data else "not scored",
            "events_compared": same_data.events if same_data else 0,
            "coverage": round(same_data.coverage, 4) if same_data else 0.0,
            "catalogue_overlap": round(same_data.catalogue_overlap, 4) if same_data else 0.0,
            "decision_inputs": recorded_inputs,
            "champion_path": str(artifacts.path(CHAMPION)),
            "champion_created_at": manifest.get("created_at", "n/a"),
        }
    )


def _check_summary(check: dict | None) -> dict | None:
    """What the gate reads of the explainer's check (the rates and how many were checked)."""
    if not check:
        return None
    return {k: check[k] for k in ("n", "false_statement_rate", "evidence_rate") if k in check}
