"""The promotion gate: the candidate bundle replaces the champion only when it is not worse."""

import shutil

import dagster as dg

from orchestration.defs.resources import ArtifactStore
from orchestration.stages import CANDIDATE, CHAMPION, MODEL_ASSETS


class PromotionConfig(dg.Config):
    """The challenger replaces the champion only if no validation metric drops by more than this."""

    tolerance: float = 0.0


def promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, tolerance: float
) -> tuple[bool, str]:
    """Higher is better for every gated metric; a first model is always promoted, and so is one whose
    champion gated other metrics (an older bundle format: nothing to compare)."""
    if not champion:
        return True, "no champion yet"
    shared = [k for k in champion if k in challenger]
    if not shared:
        return True, f"the champion's metrics ({', '.join(sorted(champion))}) are not comparable"
    worse = [
        f"{k}: {challenger[k]:.4f} < {champion[k]:.4f} - {tolerance}"
        for k in shared
        if challenger[k] < champion[k] - tolerance
    ]
    return (
        (False, "challenger is worse on " + "; ".join(worse)) if worse else (True, "not worse on any metric")
    )


@dg.asset(group_name="evaluation", deps=[MODEL_ASSETS["item_index"]])
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
