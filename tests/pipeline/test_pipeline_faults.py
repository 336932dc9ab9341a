"""Faults the pipeline must survive: runs that overlap on one DuckDB file and one artefact folder (two
data runs on an instance without the pool, two whole pipeline runs with it, models made from marts that
another run replaced), a failed data check, SIGKILL mid-training and during the Bento build, and a worse
challenger — each must leave the warehouse, the champion and the Bento either the old good ones or the
new good ones.

Overlapping runs overlap by construction, not by timing: the test holds the warehouse's write lock while
the first run's ingest step waits for it, launches the second run, and lets go only once the second run
is waiting too (for the lock, or for the ``duckdb`` pool slot the first run holds)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests import REPO_ROOT
from tests.pipeline import asset_metadata, copy_published_for_audit, run_selection
from tests.servers import log_tail
from tests.synthetic import INTERACTIONS

pytestmark = pytest.mark.slow

WAIT_S = 600  # generous bounds on waiting for a launched run (a busy CI machine is slow, never wrong)
# What a run that lost the race for the DuckDB lock may say: m6rec.data.warehouse.connect's message (the
# Python steps and the dbt step wait for the lock the same way, then fail with it).
LOCK_MESSAGES = re.compile(r"is locked by another process for more than")
EXPECTED_COUNTS = {  # the conftest generic logs, through dbt
    "raw.ratings": 10,
    "raw.items": 5,
    "raw.users": 4,
    "marts.user_events": 10,
    "marts.splits": 10,
    "marts.ctr_examples": 6,
    "marts.item_catalogue": 5,
    "marts.user_profiles": 4,
}
STEP_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE"}


def _dagster_home(root: Path, *, with_pool: bool) -> Path:
    home = root / "dagster_home"
    home.mkdir()
    if with_pool:
        shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    else:  # an instance whose dagster.yaml lacks the `duckdb` pool limit
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Create the run/event storage once, as an existing DAGSTER_HOME has it (two processes creating
    # the same SQLite schema at the same moment is not what this test is about).
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits
    return home


def _run_steps(instance: dg.DagsterInstance, run_id: str) -> dict:
    """A run's steps from the event log: (start, end) times, the successful steps, the failures' full
    error texts (causes included) and the engine messages."""
    times: dict[str, list[float]] = {}
    succeeded, failures, engine = set(), [], []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value in STEP_EVENTS:
            times.setdefault(event.step_key, []).append(record.timestamp)
        if event.event_type_value == "STEP_SUCCESS":
            succeeded.add(event.step_key)
        if event.event_type_value == "STEP_FAILURE":
            failures.append(event.event_specific_data.error.to_string())
        if event.event_type_value == "ENGINE_EVENT":
            engine.append(record.message or "")
    spans = {k: (min(v), max(v)) for k, v in times.items()}
    return {"spans": spans, "succeeded": succeeded, "failures": failures, "engine": engine}


def _warehouse_is_valid(db: Path, loads: int) -> None:
    with duckdb.connect(str(db), read_only=True) as conn:
        counts = {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in EXPECTED_COUNTS}
        assert counts == EXPECTED_COUNTS
        assert conn.execute("select count(*) from raw.load_log").fetchone()[0] == loads
        splits = dict(conn.execute("select split, count(*) from marts.splits group by 1").fetchall())
        assert splits == {"train": 5, "valid": 2, "test": 3}
        for table, key in (
            ("raw.ratings", "event_seq"),
            ("marts.splits", "event_seq"),
            ("marts.ctr_examples", "example_id"),
            ("marts.item_catalogue", "item_id"),
            ("marts.user_profiles", "user_id"),
        ):
            dupes = conn.execute(f"select count(*) - count(distinct {key}) from {table}").fetchone()[0]
            assert dupes == 0, (table, key)


def _gx_suites_pass(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every blocking GX suite of orchestration/defs/quality.py, run again on the published tables."""
    from orchestration.defs import quality

    checks = [
        k for v in vars(quality).values() if isinstance(v, dg.AssetChecksDefinition) for k in v.check_keys
    ]
    assert len(checks) == 6
    run_id = str(uuid.uuid4())
    for layer in ("raw", "marts"):
        copy_published_for_audit(db, layer, run_id)
    monkeypatch.setenv("M6REC_DUCKDB_PATH", str(db))
    result = run_selection(dg.AssetSelection.checks(*checks), run_id)
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 6 and all(e.passed for e in evaluations), [
        e.description for e in evaluations if not e.passed
    ]


def _dbt_tests_pass(db: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), "test", "--quiet"]
        + ["--vars", json.dumps({"marts_audit_schema": "marts"})]  # the published marts
        + ["--target-path", str(tmp_path / "dbt_target"), "--log-path", str(tmp_path / "dbt_logs")],
        cwd=REPO_ROOT / "transforms",
        env={**os.environ, "M6REC_DUCKDB_PATH": str(db)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _ingest_is_waiting(instance: dg.DagsterInstance, run_id: str) -> bool:
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START" and event.step_key == "raw_behaviour_logs":
            return True
        if event.event_type_value == "ENGINE_EVENT" and "blocked by limit for pool duckdb" in (
            record.message or ""
        ):
            return True
    return False


def _wait_until(
    condition: Callable[[], bool], what: str, procs: list[subprocess.Popen], logs: list[Path]
) -> None:
    """Poll ``condition`` for up to WAIT_S; fail, with the launch logs, if a launch exits or time runs out."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        exited = [i for i, p in enumerate(procs) if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            reason = f"dg launch {exited} exited" if exited else f"not within {WAIT_S} s"
            pytest.fail(f"waiting for {what}: {reason}\n" + "\n".join(log_tail(log) for log in logs))
        time.sleep(1.0)


def _launch_two_at_once(
    job: str, config: dict, env: dict, dagster_home: Path, db: Path, logs: list[Path], timeout: float
) -> list[int]:
    """Two ``dg launch --job job`` processes that overlap by construction: the test holds the warehouse's
    write lock until the first run's ingest step waits for it and the second run waits too (for the lock
    or the pool slot); then lets go and returns both exit codes."""
    cmd = [
        str(Path(sys.executable).parent / "dg"),
        "launch",
        "--job",
        job,
        "--config-json",
        json.dumps(config),
    ]
    procs: list[subprocess.Popen] = []

    def launch(log: Path) -> None:
        with log.open("w") as out:
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))

    def waiting_runs() -> int:
        """Launched runs whose ingest step has started (and waits for the lock) or waits for the pool."""
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            return sum(_ingest_is_waiting(instance, r.dagster_run.run_id) for r in instance.get_run_records())

    db.parent.mkdir(parents=True, exist_ok=True)
    holder = duckdb.connect(str(db))  # the write lock: every step that opens the warehouse waits for it
    try:
        launch(logs[0])
        _wait_until(lambda: waiting_runs() == 1, "the first run's ingest step to start", procs, logs)
        launch(logs[1])
        _wait_until(lambda: waiting_runs() == 2, "the second run to wait for the lock or pool", procs, logs)
        holder.close()
        try:
            return [p.wait(timeout=timeout) for p in procs]
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the runs did not finish within {timeout} s\n" + "\n".join(log_tail(g) for g in logs)
            )
    finally:
        holder.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_two_data_runs_at_once_without_the_pool_leave_a_valid_warehouse(
    m6rec_home: Path, write_generic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance without the `duckdb` pool limit: the steps of two runs meet DuckDB's lock instead and
    wait for it (the shipped pool is exercised by the two whole runs below)."""
    import orchestration.defs.dbt  # noqa: F401  (parses a stale dbt manifest here, not in both children)

    dagster_home = _dagster_home(tmp_path, with_pool=False)
    db = m6rec_home / "warehouse.duckdb"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "M6REC_DUCKDB_PATH": str(db),
        "OMP_NUM_THREADS": "1",
        "M6REC_TORCH_THREADS": "1",
    }
    config = {
        "ops": {"raw_behaviour_logs": {"config": {"source": str(write_generic())}}},
        # the waits below may take minutes on a busy machine: no step gives up on the lock meanwhile
        "resources": {"warehouse": {"config": {"database": str(db), "lock_wait_s": 3 * WAIT_S}}},
    }
    logs = [tmp_path / f"launch_{i}.log" for i in range(2)]
    codes = _launch_two_at_once("data_pipeline", config, env, dagster_home, db, logs, WAIT_S)

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records()
        assert len(records) == 2, [log_tail(log) for log in logs]
        runs = [(r, _run_steps(instance, r.dagster_run.run_id)) for r in records]
    tails = [log_tail(log, 3000) for log in logs]

    # The two runs overlapped (by construction: the first was waiting when the second started).
    (a, steps_a), (b, steps_b) = runs
    assert max(a.start_time, b.start_time) < min(a.end_time, b.end_time), "the two runs did not overlap"

    statuses = [r.dagster_run.status for r, _ in runs]
    assert set(statuses) <= {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}, statuses
    assert sorted(codes) == sorted(0 if s == dg.DagsterRunStatus.SUCCESS else 1 for s in statuses), tails
    for status, (_, steps) in zip(statuses, runs, strict=True):
        if status == dg.DagsterRunStatus.FAILURE:  # losing the race for the lock is the only allowed failure
            assert steps["failures"], tails
            assert all(LOCK_MESSAGES.search(f) for f in steps["failures"]), steps["failures"]
    assert dg.DagsterRunStatus.SUCCESS in statuses, tails

    loads = sum("raw_behaviour_logs" in steps["succeeded"] for _, steps in runs)
    _warehouse_is_valid(db, loads)
    _gx_suites_pass(db, monkeypatch)
    _dbt_tests_pass(db, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# A failed blocking data check: the champion and the Bento built from it stay as they were.

RAW_GATE_STEPS = {  # a failed raw suite: nothing after the ingest and its three suites may start
    "raw_behaviour_logs",
    "raw_ratings_suite",
    "raw_items_suite",
    "raw_users_suite",
}
# The steps that build, evaluate, promote and package a model: none may start after any failed data suite.
RELEASE_STEPS = {"item_index", "offline_evaluation", "promoted_model", "bento"}
# Every user has 3 events: leave-one-out leaves 1/3 in train, below QualityThresholds.min_train_fraction.
SHORT_HISTORIES = "user_id,item_id,timestamp,rating\n" + "".join(
    f"{u},{i},{1000 + 10 * k},{r}\n"
    for u in ("u1", "u2", "u3", "u4")
    for k, (i, r) in enumerate((("i1", 5), ("i2", 2), ("i3", 4)))
)
BAD_DROPS = {
    # ingest accepts any number as a rating; raw_ratings_suite does not accept 99
    "raw_suite": (INTERACTIONS.replace("u1,i3,1020,4", "u1,i3,1020,99"), "raw_ratings_suite"),
    # ingest and the raw suites pass, dbt rebuilds the marts, splits_suite fails
    "marts_suite": (SHORT_HISTORIES, "splits_suite"),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder``: size, mtime (ns) and SHA-256."""
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _marts_splits(home: Path) -> list[tuple[str, int]]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        return conn.execute("select split, count(*) from marts.splits group by 1 order by 1").fetchall()


@pytest.mark.parametrize("drop", list(BAD_DROPS))
def test_failed_data_check_keeps_the_promoted_model_and_its_bento(
    smoke_run,
    write_generic,
    drop: str,
) -> None:
    from m6rec.serving.packaging import _bentoml
    from orchestration.definitions import defs

    home, first = smoke_run  # the whole graph once: a champion and its Bento
    assert first.success and asset_metadata(first, "promoted_model")["promoted"] is True
    built = asset_metadata(first, "bento")
    artifacts = home / "artifacts"
    champion = artifacts / "champion"
    before = _snapshot(champion)
    marker = (artifacts / "bento.json").read_bytes()
    created_at = json.loads((champion / "manifest.json").read_text())["created_at"]
    assert json.loads(marker)["bento_tag"] == built["bento_tag"]
    bentoml = _bentoml()
    assert str(bentoml.bentos.get("m6rec:latest").tag) == built["bento_tag"]
    marts_before = _marts_splits(home)

    interactions, failing_check = BAD_DROPS[drop]
    bad = write_generic(f"bad_{drop}", interactions=interactions)
    second = (
        defs()
        .resolve_job_def("m6rec_pipeline")
        .execute_in_process(
            run_config={"ops": {"raw_behaviour_logs": {"config": {"source": str(bad)}}}},
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )
    assert not second.success
    evaluations = {e.asset_check_key.name: e for e in second.get_asset_check_evaluations()}
    failed = {name for name, e in evaluations.items() if not e.passed}
    assert failed == {failing_check}, failed
    assert "expect_column" in evaluations[failing_check].description
    check_failures = [
        e
        for e in second.get_step_failure_events()
        if "Nothing was published" in e.event_specific_data.error.message
    ]
    assert [e.step_key for e in check_failures] == [failing_check], check_failures
    started = {e.step_key for e in second.all_events if e.event_type_value == "STEP_START"}
    assert not started & RELEASE_STEPS, started
    assert not started & {"segment_cache", "retriever", "ranker", "token_ranker", "explainer"}, started
    if drop == "raw_suite":  # the marts the champion was trained on were not even rebuilt
        assert started == RAW_GATE_STEPS, started
        assert _marts_splits(home) == marts_before

    # The champion bundle is byte-for-byte (and mtime-for-mtime) what it was; the Bento is the same one,
    # still the latest, and it serves the champion's model.
    assert _snapshot(champion) == before
    assert json.loads((champion / "manifest.json").read_text())["created_at"] == created_at
    assert (artifacts / "bento.json").read_bytes() == marker
    assert str(bentoml.bentos.get("m6rec:latest").tag) == built["bento_tag"]
    assert bentoml.models.get(built["model_tag"]).info.metadata["bundle"]["created_at"] == created_at


# ---------------------------------------------------------------------------------------------------------
# SIGKILL mid-training: the next run of the same asset resumes from the last checkpoint and ends where an
# uninterrupted run ends.

TRAIN_STEPS = 600  # smoke models: enough steps that the kill lands mid-run, long after a checkpoint
TRAIN_SCRIPT = """
import json, sys
import dagster as dg
from orchestration.definitions import defs
# no early stop, no time limit: the run ends at its step count, so the kill lands mid-run
settings = {"profile": "smoke", "steps": int(sys.argv[1]), "budget_s": 3600, "patience": 10**6}
result = defs().resolve_job_def("retrain").execute_in_process(
    asset_selection=[dg.AssetKey("lm_retriever")],
    run_config={"resources": {"model_settings": {"config": settings}}},
    instance=dg.DagsterInstance.ephemeral(),
)
[event] = result.get_asset_materialization_events()
meta = event.materialization.metadata
print("RESULT " + json.dumps({k: meta[k].value for k in ("best_ndcg@10", "best_step", "steps")}))
"""


def _training_home(smoke_home: Path, root: Path) -> Path:
    """A data folder with the smoke run's published marts and segment caches (what lm_retriever reads)."""
    root.mkdir()
    shutil.copy(smoke_home / "warehouse.duckdb", root / "warehouse.duckdb")
    (root / "artifacts").mkdir()
    for name in ("segment_cache.pt", "lm_segment_cache.pt", "segment_cache.json"):
        shutil.copy(smoke_home / "artifacts" / name, root / "artifacts" / name)
    return root


def _home_env(home: Path) -> dict[str, str]:
    """The variables that point m6rec at one data folder: warehouse, artefacts, BentoML store."""
    return {
        "M6REC_HOME": str(home),
        "M6REC_DUCKDB_PATH": str(home / "warehouse.duckdb"),
        "BENTOML_HOME": str(home / "bentoml"),
    }


def _smoke_child(script: str, args: list[str], home: Path, log: Path) -> subprocess.Popen:
    """``python -c script *args`` on the data folder ``home`` with the smoke profile and one thread, in
    its own process group (killing the group takes its children too, e.g. ``bentoml build``)."""
    env = {**os.environ, **_home_env(home), "M6REC_PROFILE": "smoke", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _train(home: Path, log: Path) -> subprocess.Popen:
    return _smoke_child(TRAIN_SCRIPT, [str(TRAIN_STEPS)], home, log)


def _result(proc: subprocess.Popen, log: Path) -> dict:
    assert proc.wait(timeout=WAIT_S) == 0, log_tail(log)
    [line] = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _weights(home: Path) -> dict:
    import torch

    return torch.load(home / "artifacts" / "lm_retriever" / "model.pt", weights_only=True)


def test_sigkill_mid_training_then_the_rerun_resumes_and_matches(smoke_run, tmp_path: Path) -> None:
    smoke_home, _ = smoke_run
    killed = _training_home(smoke_home, tmp_path / "killed")
    runs = killed / "artifacts" / "lm_retriever" / "run"

    def checkpoint_step() -> int:
        states = list(runs.glob("*/checkpoint/trainer_state.json"))
        return json.loads(states[0].read_text())["step"] if states else 0

    first = _train(killed, tmp_path / "first.log")
    _wait_until(lambda: checkpoint_step() >= 45, "a checkpoint at step 45", [first], [tmp_path / "first.log"])
    first.send_signal(signal.SIGKILL)  # mid-epoch, between two checkpoints
    first.wait()
    step_at_kill = checkpoint_step()
    assert (
        45 <= step_at_kill < TRAIN_STEPS and not (killed / "artifacts" / "lm_retriever" / "model.pt").exists()
    )

    resumed = _result(_train(killed, tmp_path / "second.log"), tmp_path / "second.log")
    assert f"resumed from {runs}" in (tmp_path / "second.log").read_text()
    assert not runs.exists()  # a finished run keeps no checkpoint

    fresh = _training_home(smoke_home, tmp_path / "fresh")
    uninterrupted = _result(_train(fresh, tmp_path / "fresh.log"), tmp_path / "fresh.log")
    assert "resumed from" not in (tmp_path / "fresh.log").read_text()
    assert resumed == uninterrupted, (resumed, uninterrupted)
    a, b = _weights(killed), _weights(fresh)
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.allclose(x.float(), y.float(), atol=1e-6))


# ---------------------------------------------------------------------------------------------------------
# A second real run whose challenger is worse on the same data: the champion and its Bento stay.


def test_second_run_with_a_worse_challenger_keeps_the_champion_and_its_bento(smoke_run) -> None:
    from m6rec.evaluation.gate import SameDataEvaluation, decide
    from m6rec.serving.packaging import _bentoml
    from orchestration.definitions import defs
    from orchestration.defs.resources import ModelSettings

    home, first = smoke_run
    built = asset_metadata(first, "bento")
    champion = home / "artifacts" / "champion"
    before, marker = _snapshot(champion), (home / "artifacts" / "bento.json").read_bytes()
    # The same marts, every model trained for a fraction of a second: a real, worse challenger.
    second = (
        defs()
        .resolve_job_def("retrain")
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            resources={"model_settings": ModelSettings(profile="smoke", budget_s=0.05)},
            raise_on_error=False,
        )
    )
    assert second.success
    gate = asset_metadata(second, "promoted_model")
    assert gate["promoted"] is False and gate["rule"] == "same data", gate["reason"]
    assert gate["coverage"] == 1.0 and gate["events_compared"] == 943
    assert "challenger is worse on the same 943 valid events" in gate["reason"]
    # The champion, re-scored on this run's valid split, scores what its own evaluation said (same data).
    champion_eval = json.loads((champion / "evaluation.json").read_text())["validation"]
    inputs = gate["decision_inputs"]
    for metric, value in inputs["same_data"]["champion"].items():
        assert abs(value - champion_eval[metric]) < 1e-4, (metric, value, champion_eval[metric])
    # The decision follows from the recorded inputs alone.
    again = decide(**{**inputs, "same_data": SameDataEvaluation(**inputs["same_data"])})
    assert (again.promote, again.rule, again.reason) == (False, gate["rule"], gate["reason"])
    assert asset_metadata(second, "bento")["rebuilt"] is False
    assert _snapshot(champion) == before and (home / "artifacts" / "bento.json").read_bytes() == marker
    assert str(_bentoml().bentos.get("m6rec:latest").tag) == built["bento_tag"]


# ---------------------------------------------------------------------------------------------------------
# SIGKILL while the Bento is being built: the champion is a whole bundle (the old one or the new one), the
# Bento recorded in bento.json is still in the store with its model, and the next run builds the new one.

RETRAIN_SCRIPT = """
import sys
import dagster as dg
from orchestration.definitions import defs
selection = [dg.AssetKey(k) for k in sys.argv[1:]] or None  # None: the whole job
result = defs().resolve_job_def("retrain").execute_in_process(
    instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, asset_selection=selection
)
print("RESULT", result.success)
"""


def _retrain(home: Path, log: Path, *assets: str) -> subprocess.Popen:
    return _smoke_child(RETRAIN_SCRIPT, list(assets), home, log)


def _building_bento(proc: subprocess.Popen) -> bool:
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        return any({"bentoml", "build"} <= set(child.cmdline()) for child in children)
    except psutil.Error:  # a child that exited between the listing and the read
        return False


def _bento_is_whole(bentoml, tag: str) -> str:
    """The bundle ``created_at`` of the model the Bento ``tag`` ships (both must be in the store)."""
    bento = bentoml.bentos.get(tag)
    assert (Path(bento.path) / "bento.yaml").is_file() and (Path(bento.path) / "src" / "m6rec").is_dir()
    [model] = [m for m in bento.info.models if m.tag.name == "m6rec"]
    return bentoml.models.get(str(model.tag)).info.metadata["bundle"]["created_at"]


def test_sigkill_during_the_bento_build_keeps_a_whole_champion_and_the_previous_bento(
    smoke_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m6rec.serving.packaging import _bentoml
    from m6rec.serving.recommender import Recommender

    smoke_home, _ = smoke_run
    home = tmp_path / "home"  # a copy: the other tests of this module read the smoke run as it was
    shutil.copytree(smoke_home, home, symlinks=True)
    monkeypatch.setenv("BENTOML_HOME", str(home / "bentoml"))
    bentoml = _bentoml()
    artifacts = home / "artifacts"
    marker = (artifacts / "bento.json").read_bytes()
    old = json.loads(marker)
    old_champion = json.loads((artifacts / "champion" / "manifest.json").read_text())["created_at"]

    # Same marts, same seed, step-bounded smoke models: the challenger ties the champion, is promoted,
    # and the Bento is rebuilt; the whole process group is killed while `bentoml build` runs.
    log = tmp_path / "killed.log"
    proc = _retrain(home, log)
    try:
        _wait_until(lambda: _building_bento(proc), "`bentoml build` to start", [proc], [log])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    champion = json.loads((artifacts / "champion" / "manifest.json").read_text())["created_at"]
    promoted = json.loads((artifacts / "promotion.json").read_text())
    assert promoted["decision"]["promote"] is True and champion != old_champion, promoted["decision"]
    Recommender(artifacts / "champion", device="cpu")  # the new champion is whole and loads
    assert (artifacts / "bento.json").read_bytes() == marker  # still the last Bento that was built
    assert _bento_is_whole(bentoml, old["bento_tag"]) == old_champion
    latest = str(bentoml.bentos.get("m6rec:latest").tag)
    # The kill landed mid-build: the latest Bento is the old one (or, had the build just finished, a
    # whole new one of the new champion; never a Bento without its model).
    assert _bento_is_whole(bentoml, latest) in {old_champion, champion}

    # Materializing `bento` again (what the next run ends with) builds the Bento of the new champion.
    log = tmp_path / "rerun.log"
    rerun = _retrain(home, log, "bento")
    assert rerun.wait(timeout=WAIT_S) == 0 and "RESULT True" in log.read_text(), log_tail(log)
    record = json.loads((artifacts / "bento.json").read_text())
    final = json.loads((artifacts / "champion" / "manifest.json").read_text())["created_at"]
    assert record["champion_created_at"] == final and record["bento_tag"] != old["bento_tag"]
    assert str(bentoml.bentos.get("m6rec:latest").tag) == record["bento_tag"]
    assert _bento_is_whole(bentoml, record["bento_tag"]) == final


# ---------------------------------------------------------------------------------------------------------
# Runs that overlap. Every step that writes shared state sits in the `duckdb` pool, so two runs interleave
# step by step; a model or evaluation made from marts that another run has since replaced is refused, so
# a bundle never mixes two generations of data.


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for var, value in _home_env(home).items():
        monkeypatch.setenv(var, value)


def test_models_trained_on_replaced_marts_are_never_bundled(
    smoke_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.definitions import defs

    smoke_home, _ = smoke_run
    home = tmp_path / "home"
    shutil.copytree(smoke_home, home, symlinks=True)
    _use_home(monkeypatch, home)
    artifacts = home / "artifacts"
    before = {name: _snapshot(artifacts / name) for name in ("candidate", "champion")}
    # Another run publishes marts from the same logs with another like threshold (other CTR labels).
    data = (
        defs()
        .resolve_job_def("data_pipeline")
        .execute_in_process(
            run_config={"ops": {"m6rec_dbt": {"config": {"like_threshold": 4}}}},
            instance=dg.DagsterInstance.ephemeral(),
        )
    )
    assert data.success
    # This run's evaluation and bundle steps, after its models were trained on the replaced marts.
    late = (
        defs()
        .resolve_job_def("retrain")
        .execute_in_process(
            asset_selection=[dg.AssetKey("offline_evaluation"), dg.AssetKey("item_index")],
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    )
    assert not late.success
    [failure] = [e for e in late.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.to_string()
    assert failure.step_key == "offline_evaluation" and "StaleModelError" in message, message
    assert "but the published marts are now" in message and "launch `retrain`" in message
    assert {name: _snapshot(artifacts / name) for name in before} == before


def test_two_full_runs_at_once_both_finish_with_one_champion_and_its_bento(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `dg launch --job m6rec_pipeline` on the same data folder, overlapping by construction (the
    first waits for the warehouse lock the test holds until the second waits too)."""
    import orchestration.defs.dbt  # noqa: F401  (parses a stale dbt manifest here, not in both children)
    from m6rec.serving.packaging import _bentoml
    from m6rec.serving.recommender import Recommender
    from tests import SHARED_CACHE

    home = tmp_path / "home"
    home.mkdir()
    _use_home(monkeypatch, home)
    dagster_home = _dagster_home(tmp_path, with_pool=True)
    db = home / "warehouse.duckdb"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "M6REC_CACHE": str(SHARED_CACHE),
        "M6REC_PROFILE": "smoke",
        "OMP_NUM_THREADS": "1",
    }
    config = {"resources": {"warehouse": {"config": {"database": str(db), "lock_wait_s": 3 * WAIT_S}}}}
    logs = [tmp_path / f"launch_{i}.log" for i in range(2)]
    codes = _launch_two_at_once("m6rec_pipeline", config, env, dagster_home, db, logs, 2 * WAIT_S)
    tails = [log_tail(log, 3000) for log in logs]
    assert codes == [0, 0], tails
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records()
        assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 2, tails
        a, b = records
        assert max(a.start_time, b.start_time) < min(a.end_time, b.end_time), "the two runs did not overlap"
        steps_a, steps_b = (_run_steps(instance, r.dagster_run.run_id) for r in records)
    # Every step of the job sits in the `duckdb` pool: the runs took turns, no two steps ran at once.
    overlaps = [
        (sa, sb)
        for sa, (a0, a1) in steps_a["spans"].items()
        for sb, (b0, b1) in steps_b["spans"].items()
        if a0 < b1 and b0 < a1
    ]
    assert not overlaps, overlaps
    assert any("blocked by limit for pool duckdb" in m for m in steps_a["engine"] + steps_b["engine"])

    # One warehouse (two loads, one set of marts), one champion that loads, and the Bento built from it.
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("select count(*) from raw.load_log").fetchone()[0] == 2
        splits = dict(conn.execute("select split, count(*) from marts.splits group by 1").fetchall())
        assert splits["test"] == splits["valid"] == 943
        leftovers = conn.execute(
            "select schema_name from information_schema.schemata where schema_name like '%_audit_%'"
        ).fetchall()
        assert leftovers == []  # both runs published and dropped their audit schemas
    artifacts = home / "artifacts"
    champion = json.loads((artifacts / "champion" / "manifest.json").read_text())
    Recommender(artifacts / "champion", device="cpu")
    record = json.loads((artifacts / "bento.json").read_text())
    assert record["champion_created_at"] == champion["created_at"]
    bentoml = _bentoml()
    assert str(bentoml.bentos.get("m6rec:latest").tag) == record["bento_tag"]
    assert _bento_is_whole(bentoml, record["bento_tag"]) == champion["created_at"]


def test_a_challenger_whose_explanations_fail_the_check_keeps_the_champion(smoke_run) -> None:
    """The explainer's check is a gate condition: with a ceiling nothing can pass, the candidate (the
    same bundle as the champion) is refused on that rule alone, and the champion stays as it was."""
    from orchestration.definitions import defs

    home, _ = smoke_run
    champion = home / "artifacts" / "champion"
    before = _snapshot(champion)
    result = (
        defs()
        .resolve_job_def("retrain")
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            asset_selection=[dg.AssetKey("promoted_model")],
            run_config={"ops": {"promoted_model": {"config": {"max_false_explanations": -1.0}}}},
            raise_on_error=False,
        )
    )
    assert result.success
    gate = asset_metadata(result, "promoted_model")
    assert gate["promoted"] is False and gate["rule"] == "explanations fail the check", gate["reason"]
    assert gate["decision_inputs"]["explanations"]["n"] == 4
    assert _snapshot(champion) == before
