"""The cost curve: wall time and peak memory of every stage as the log grows.

For each size, a seeded log from ``m6rec.data.generator`` goes through the Dagster jobs in a fresh
``M6REC_HOME`` (one child process per size, so nothing is shared between sizes): ``data_pipeline``
(ingest, suites, dbt build, suites), and, up to ``--whole-graph-max-events``, ``m6rec_pipeline`` on the
``default`` profile (everything to the Bento). A daily drop (``--drop-fraction``) is timed
``--drop-repeats`` times from the same warehouse and the median run kept. Per stage (Dagster step):
seconds from its STEP_START to its STEP_SUCCESS in the run's event log, and the peak resident memory
of this process tree (dbt runs as a child) sampled every 0.2 s while the step ran.

After a whole-graph run the served bundle is measured as users meet it: recall@10 of the served
retrieval (ANN index past 50,000 items, else the exact scan) against the exact scan over 300 seeded
users, and ``POST /recommend`` (rerank 50) p99 at concurrency 8 from the built Bento under
``bentoml serve`` with its own defaults (``bench/serving_load.py``'s client).

Usage: python bench/scale.py [--sizes EVENTS:USERS:ITEMS ...] [--whole-graph-max-events N]
Writes bench/results/scale.json (or --out); sizes already in that file are kept unless run again.
``python bench/scale.py --report`` prints the Markdown table of that file and draws docs/scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEFAULT_SIZES = ["100000:10000:10000", "1000000:100000:100000", "10000000:1000000:100000"]


class MemorySampler:
    """Resident memory of this process and its children, sampled on a thread: ``(time, bytes)``."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        self.proc, self.every, self.samples = psutil.Process(), every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a child that just ended
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._rss()))
            time.sleep(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_gb(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        """Peak GB sampled in ``[start, end]``; None for a step shorter than the sampling interval."""
        inside = [b for t, b in self.samples if start <= t <= end]
        return round(max(inside) / 2**30, 2) if inside else None


def run_job(
    job_name: str, run_config: dict | None, sampler: MemorySampler, partition_key: str | None = None
) -> dict:
    """One job in-process on an ephemeral instance: its wall time and per-step seconds and memory."""
    import dagster as dg

    from orchestration.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    job = defs().resolve_job_def(job_name)
    start = time.time()
    result = job.execute_in_process(
        run_config=run_config, instance=instance, raise_on_error=False, partition_key=partition_key
    )
    end = time.time()
    starts, stages = {}, {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            begun = starts[event.step_key]
            stages[event.step_key] = {
                "seconds": round(entry.timestamp - begun, 1),
                "peak_memory_gb": sampler.peak_gb(begun, entry.timestamp),
                **({"failed": True} if event.event_type_value == "STEP_FAILURE" else {}),
            }
    return {
        "success": result.success,
        "seconds": round(end - start, 1),
        "peak_memory_gb": sampler.peak_gb(start, end),
        "stages": stages,
    }


def measure_serving(home: Path, users: int = 300, requests: int = 200) -> dict:
    """Recall@10 of the served retrieval against the exact scan, and recommend p99 at concurrency 8."""
    import numpy as np
    import pandas as pd
    from bench_common import served_recall_at_10
    from serving_load import payloads, run, serve_bento

    from m6rec.serving.recommender import HistoryEvent, Recommender, RecommendQuery

    bundle = home / "artifacts" / "champion"
    rec = Recommender(bundle, device="cpu")
    events = pd.read_parquet(bundle.parent.parent / "scale_histories.parquet")
    rng = np.random.default_rng(0)
    picked = rng.choice(
        events["user_id"].unique(), size=min(users, events["user_id"].nunique()), replace=False
    )
    queries = []
    for user in picked:
        rows = events[events["user_id"] == user].tail(20)
        history = [HistoryEvent(str(r.item_id), float(r.rating), int(r.ts)) for r in rows.itertuples()]
        queries.append(RecommendQuery(history, k=10, rerank=0))
    index = rec.ann
    recall = served_recall_at_10(rec, queries)
    items = rec.items["item_id"].astype(str).tolist()
    with serve_bento(home / "bentoml") as base:
        run(f"{base}/recommend", payloads(items, "recommend", 10, seed=1), 1)  # warm-up
        load = run(f"{base}/recommend", payloads(items, "recommend", requests), 8)
    return {
        "retrieval": "exact scan" if index is None else f"ANN ({index.info['kind']})",
        "recall_at_10": round(recall, 4),
        "index_recall_at_10_at_build": None if index is None else index.info["recall_at_10"],
        "p99_ms": load["p99_ms"],
        "p50_ms": load["p50_ms"],
        "concurrency": 8,
        "errors": load["errors"],
    }


def run_drop(day: str, sampler: MemorySampler, repeats: int) -> list[dict]:
    """The ``daily_drops`` job for ``day``, ``repeats`` times from the same warehouse (a copy taken
    before the first run is put back before each further one): the host's speed drifts by tens of
    per cent from minute to minute, and one run of ~20 s shows it. The warehouse ends as after one drop."""
    from orchestration import settings

    warehouse = settings.warehouse_path()
    before = warehouse.with_name(warehouse.name + ".before_drop")
    shutil.copy(warehouse, before)
    trials = []
    for trial in range(max(1, repeats)):
        if trial:
            shutil.copy(before, warehouse)
        trials.append(run_job("daily_drops", None, sampler, partition_key=day))
    before.unlink()
    return trials


def child(
    spec: str, work: Path, whole_graph: bool, drop_fraction: float = 0.0, drop_repeats: int = 3
) -> dict:
    """One size in this (fresh) process: generate, data half, a daily drop of ``drop_fraction`` of the
    events (the newest; the data half then loads the rest; timed ``drop_repeats`` times, the median
    kept), whole graph, serving."""
    events, users, items = (int(float(x)) for x in spec.split(":"))
    home = work / "home"
    os.environ["M6REC_HOME"] = str(home)
    os.environ["BENTOML_HOME"] = str(home / "bentoml")
    os.environ.setdefault("M6REC_TORCH_THREADS", str(os.cpu_count() or 1))
    os.environ["M6REC_DROPS"] = str(work / "drops")
    from m6rec.data.generator import LogSpec, generate_log, write_drops

    start = time.time()
    log = generate_log(LogSpec(events=events, users=users, items=items, seed=0))
    drops = {}
    if drop_fraction:
        base, drops = log.split_drops(drop_fraction, 1)
        write_drops(drops, work / "drops")
        source = base.write(work / "source")
    else:
        source = log.write(work / "source")
    generated = time.time() - start
    home.mkdir(parents=True, exist_ok=True)
    log.interactions.rename(columns={"timestamp": "ts"}).to_parquet(home / "scale_histories.parquet")
    row = {
        "events": int(len(log.interactions)),
        "events_asked": events,
        "users": int(log.interactions["user_id"].nunique()),
        "items": int(len(log.items)),
        "generate_seconds": round(generated, 1),
    }
    config = {"ops": {"raw_behaviour_logs": {"config": {"source": str(source)}}}}
    with MemorySampler() as sampler:
        data = run_job("data_pipeline", config, sampler)
        row["data_half_seconds"] = data["seconds"]
        row["data_half_success"] = data["success"]
        row["stages"] = data["stages"]
        row["peak_memory_gb"] = data["peak_memory_gb"]
        row["whole_graph_seconds"] = None
        row["ann"] = None
        row["incremental"] = None
        if drops and data["success"]:
            [(day, frame)] = drops.items()
            trials = run_drop(day, sampler, drop_repeats)
            drop = sorted(trials, key=lambda t: t["seconds"])[len(trials) // 2]  # the median run
            row["incremental"] = {
                "drop_events": len(frame),
                "drop_fraction": drop_fraction,
                "full_events": row["events"] - len(frame),
                "drop_seconds": drop["seconds"],
                "drop_seconds_trials": [t["seconds"] for t in trials],
                "full_rebuild_seconds": data["seconds"],
                "ratio": round(drop["seconds"] / data["seconds"], 3),
                "success": all(t["success"] for t in trials),
                "peak_memory_gb": drop["peak_memory_gb"],
                "stages": drop["stages"],
            }
        if whole_graph and data["success"]:
            whole = run_job("m6rec_pipeline", config, sampler)
            row["whole_graph_seconds"] = whole["seconds"]
            row["whole_graph_success"] = whole["success"]
            row["stages"] = whole["stages"]  # every stage, the data half's included (run again)
            row["peak_memory_gb"] = max(data["peak_memory_gb"] or 0, whole["peak_memory_gb"] or 0)
            if whole["success"]:
                row["ann"] = measure_serving(home)
    return row


DATA_HALF = ("raw_behaviour_logs", "raw_items_suite", "raw_ratings_suite", "raw_users_suite", "published_raw")
DATA_HALF += ("m6rec_dbt", "ctr_examples_suite", "item_catalogue_suite", "splits_suite", "published_marts")


def markdown_and_plot(path: Path, plot: Path) -> str:
    """The Markdown table of every size (data half and whole graph, seconds and peak GB, the served
    retrieval's p99) and a log-log plot of each stage's seconds against events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads(path.read_text())["runs"]
    lines = [
        "| events | users | items | data half s | daily drop s (share) | whole graph s | peak GB | "
        "retrieval served | recall@10 | recommend p99 ms (c=8) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ann = r.get("ann") or {}
        whole = r.get("whole_graph_seconds")
        inc = r.get("incremental")
        drop = (
            f"{inc['drop_seconds']} ({inc['ratio']:.1%}, {inc['drop_events']:,} events)" if inc else "not run"
        )
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['data_half_seconds']} | {drop} | "
            f"{whole if whole is not None else 'not run'} | {r['peak_memory_gb']} | "
            f"{ann.get('retrieval', '–')} | {ann.get('recall_at_10', '–')} | {ann.get('p99_ms', '–')} |"
        )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stages = sorted({s for r in runs for s in r["stages"]})
    colours = plt.cm.tab20.colors
    totals = {"data half (total)": "data_half_seconds", "whole graph (total)": "whole_graph_seconds"}
    for i, (label, key) in enumerate(totals.items()):
        points = sorted((r["events"], r[key]) for r in runs if r.get(key) is not None)
        ax.plot(*zip(*points, strict=True), "k" + "-:"[i], marker="s", lw=2, label=label)
    for i, stage in enumerate(stages):
        points = sorted((r["events"], r["stages"][stage]["seconds"]) for r in runs if stage in r["stages"])
        xs, ys = zip(*points, strict=True)
        style = "-" if stage in DATA_HALF else ""
        ax.plot(
            xs, [max(y, 0.1) for y in ys], style, marker="o^v<>"[i % 5], color=colours[i % 20], label=stage
        )
    ax.set(
        xscale="log", yscale="log", xlabel="events", ylabel="seconds", title="m6rec stage cost by log size"
    )
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="EVENTS:USERS:ITEMS")
    parser.add_argument("--whole-graph-max-events", type=float, default=1e7)
    parser.add_argument(
        "--drop-fraction",
        type=float,
        default=0.0,
        help="hold the newest events out of the whole load and process them as one daily drop",
    )
    parser.add_argument(
        "--drop-repeats", type=int, default=3, help="time the daily drop this many times (median kept)"
    )
    parser.add_argument("--work", help="keep each size's data here (default: a temp folder, removed)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "scale.json"))
    parser.add_argument("--report", action="store_true", help="print the table, draw docs/scale.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--whole-graph", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        print(markdown_and_plot(Path(args.out), REPO / "docs" / "scale.png"))
        return
    if args.child:
        row = child(args.child, Path(args.work), args.whole_graph, args.drop_fraction, args.drop_repeats)
        Path(args.child_out).write_text(json.dumps(row))
        return
    from bench_common import cpu_model

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"runs": []}
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    for spec in args.sizes:
        events = int(float(spec.split(":")[0]))
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            work = Path(tmp)
            cmd = [sys.executable, __file__, "--child", spec, "--work", str(work)]
            cmd += ["--child-out", str(work / "row.json"), "--drop-fraction", str(args.drop_fraction)]
            cmd += ["--drop-repeats", str(args.drop_repeats)]
            if events <= args.whole_graph_max_events:
                cmd.append("--whole-graph")
            print("size", spec, flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
            row = {"size": spec, "command": " ".join(["python bench/scale.py", *sys.argv[1:]])}
            row |= json.loads((work / "row.json").read_text())
        print(json.dumps(row), flush=True)
        report["runs"] = [r for r in report["runs"] if r.get("size") != spec] + [row]
        report["runs"].sort(key=lambda r: (r["events"], r["items"]))
        report.update(
            cpu=cpu_model(),
            cpus=os.cpu_count(),
            profile="default",
        )
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
