"""Jobs and the incoming-folder sensor."""

import hashlib
import time
from pathlib import Path

import dagster as dg

from m6rec.data.sources import TABLE_SUFFIXES
from orchestration import settings

DATA_GROUPS = ("ingest", "staging", "intermediate", "marts")
MODEL_GROUPS = ("training", "evaluation", "packaging")

data_job = dg.define_asset_job(
    "data_pipeline",
    selection=dg.AssetSelection.groups(*DATA_GROUPS),
    description="Ingest behaviour logs, transform them in dbt and gate them with Great Expectations.",
)
pipeline_job = dg.define_asset_job(
    "m6rec_pipeline",
    selection=dg.AssetSelection.groups(*DATA_GROUPS, *MODEL_GROUPS),
    description="The whole graph: ingest, dbt, quality gates, training, evaluation, promotion, Bento.",
)
retrain_job = dg.define_asset_job(
    "retrain",
    # Training reads the published marts, which passed every suite before they were published.
    selection=dg.AssetSelection.groups(*MODEL_GROUPS),
    description="Retrain on the published marts, evaluate, promote if not worse, rebuild the Bento.",
)
weekly_retrain = dg.ScheduleDefinition(
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain every Monday at 03:00 (turn it on in the UI).",
)

LOG_SUFFIXES = (*TABLE_SUFFIXES, ".inter", ".item", ".user", ".data")
SETTLE_S = 10.0


def incoming_fingerprint(folder: Path, *, settle_s: float = SETTLE_S) -> str | None:
    """A digest of the log files' names, sizes and mtimes, or None while there are none or while any
    was modified in the last ``settle_s`` seconds (a copy may still be in progress)."""
    files = (
        sorted(
            p
            for p in folder.glob("*")
            if p.is_file() and not p.is_symlink() and p.suffix.lower() in LOG_SUFFIXES
        )
        if folder.is_dir()
        else []
    )
    if not files:
        return None
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    if time.time() - max(s[2] for s in stats) / 1e9 < settle_s:
        return None
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:16]


@dg.sensor(
    job=pipeline_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-ingests the incoming folder (M6REC_INCOMING) when its log files change, then retrains.",
)
def incoming_logs_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    folder = settings.incoming_dir()
    fingerprint = incoming_fingerprint(folder)
    if fingerprint is None:
        return dg.SkipReason(f"no settled log files in {folder}")
    if fingerprint == context.cursor:
        return dg.SkipReason(f"{folder} unchanged since the last ingest")
    run_config = {"ops": {"raw_behaviour_logs": {"config": {"source": str(folder), "source_format": "auto"}}}}
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=fingerprint, run_config=run_config)], cursor=fingerprint
    )
