"""Serving benchmark: latency percentiles and throughput of `recommend` and `rank` over localhost at
concurrency 1, 8 and 32, with a bounded number of requests, plus one bounded soak (default 5,000
requests at concurrency 32) that counts errors.

Variants of `recommend` (each at concurrency 1, 8, 32):
  - `rerank 50` (retrieval + the CTR ranker re-scoring the top 50: the late-interaction rerank) and
    `rerank 0` (retrieval only);
  - adaptive batching off (`POST /recommend`) and on (`POST /recommend_batch` with one-element arrays:
    BentoML's dispatcher merges concurrent calls into one model pass).

It serves the latest Bento in $BENTOML_HOME (default data/bentoml, i.e. what `make run` built) with
`bentoml serve` on a free localhost port, and stops it at the end. Without --workers / --threads the
service runs with its own defaults, exactly as `make serve` does (one worker per core, at most 4).

Usage: python bench/serving_load.py [--requests 200] [--repeats 1] [--soak 5000] [--threads N]
                                   [--workers N] [--precision auto|fp32|bf16]
With --repeats R every row is the median of R runs of --requests (seeds 0..R-1; each p99 kept).
Writes bench/results/serving_load.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payloads(items: list[str], kind: str, n: int, seed: int = 0, rerank: int = 50) -> list:
    rng = random.Random(seed)
    out: list = []
    for _ in range(n):
        history = [{"item_id": i, "rating": rng.randint(1, 5)} for i in rng.sample(items, 20)]
        if kind == "recommend":
            out.append({"history": history, "k": 10, "rerank": rerank})
        elif kind == "recommend_batch":
            out.append([{"history": history, "k": 10, "rerank": rerank}])
        else:
            out.append({"history": history, "candidates": rng.sample(items, 100)})
    return out


def run(url: str, bodies: list, concurrency: int) -> dict:
    def call(body) -> tuple[float, int]:
        start = time.perf_counter()
        try:
            response = client.post(url, json=body, timeout=60)
            status = response.status_code
            if status == 200 and isinstance(body, list):  # /recommend_batch: every entry must be 200
                status = max(item["status"] for item in response.json())
        except httpx.HTTPError:
            status = -1
        return time.perf_counter() - start, status

    with (
        httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        start = time.perf_counter()
        results = list(pool.map(call, bodies))
        wall = time.perf_counter() - start
    latencies = np.array([r[0] for r in results]) * 1000
    errors = sum(1 for r in results if r[1] != 200)
    return {
        "requests": len(bodies),
        "concurrency": concurrency,
        "errors": errors,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "throughput_rps": round(len(bodies) / wall, 1),
    }


def median_row(trials: list[dict]) -> dict:
    """One row from repeated runs of the same variant: the median of each latency and throughput,
    errors summed; with several runs, each run's p99 too (``p99_ms_trials``)."""
    row = dict(trials[0])
    for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps"):
        row[key] = round(float(np.median([t[key] for t in trials])), 1)
    row["errors"] = sum(t["errors"] for t in trials)
    if len(trials) > 1:
        row["p99_ms_trials"] = [t["p99_ms"] for t in trials]
    return row


@contextlib.contextmanager
def serve_bento(
    home: Path, *, threads: int | None = None, workers: int | None = None, precision: str = "auto"
) -> Iterator[str]:
    """``bentoml serve m6rec:latest`` from the store at ``home`` on a free localhost port, with the
    service's own defaults unless ``threads`` / ``workers`` are given; yields its base URL once
    ``/readyz`` answers and stops it on exit."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("M6REC_TORCH_THREADS", "M6REC_WORKERS")},
        "BENTOML_HOME": str(home),
        "M6REC_PRECISION": precision,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    if threads is not None:
        env["M6REC_TORCH_THREADS"] = str(threads)
    if workers is not None:
        env["M6REC_WORKERS"] = str(workers)
    bentoml = str(Path(sys.executable).parent / "bentoml")
    proc = subprocess.Popen(
        [bentoml, "serve", "m6rec:latest", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600  # a large catalogue takes minutes to load
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {proc.returncode} before it was ready")
            time.sleep(1)
        else:
            raise RuntimeError("the Bento did not become ready in 600 s")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--soak", type=int, default=5000)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per service worker (default: the service's)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="service worker processes (default: the service's)"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="M6REC_PRECISION (service default: auto)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of --requests per row; the row keeps their medians"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serving_load.json"))
    args = parser.parse_args()
    home = Path(os.environ.get("BENTOML_HOME", REPO / "data" / "bentoml"))
    items = pd.read_parquet(REPO / "data" / "artifacts" / "champion" / "items.parquet")["item_id"].tolist()
    report = {
        "command": "python bench/serving_load.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count()},
        "service_torch_threads": args.threads if args.threads is not None else "service default",
        "service_workers": args.workers if args.workers is not None else "service default",
        "service_precision_setting": args.precision,
        "runs": [],
    }
    with serve_bento(home, threads=args.threads, workers=args.workers, precision=args.precision) as base:
        # what the service really runs in (the bundle's bfloat16 check and this CPU decide ``auto``)
        report["served_precision"] = httpx.post(f"{base}/model_info", json={}, timeout=30).json()["precision"]
        print("served precision", report["served_precision"], flush=True)
        variants = [
            ("recommend", 50, "off"),
            ("recommend_batch", 50, "on"),
            ("recommend", 0, "off"),
            ("recommend_batch", 0, "on"),
            ("rank", None, "off"),
        ]
        for kind, rerank, batching in variants:
            run(f"{base}/{kind}", payloads(items, kind, 10, seed=1, rerank=rerank or 0), 1)  # warm-up
            for concurrency in (1, 8, 32):
                trials = [
                    run(
                        f"{base}/{kind}",
                        payloads(items, kind, args.requests, seed=t, rerank=rerank or 0),
                        concurrency,
                    )
                    for t in range(args.repeats)
                ]
                row = median_row(trials)
                labels = {"endpoint": kind, "rerank": rerank, "adaptive_batching": batching}
                report["runs"].append({**labels, **row})
                print(labels, row, flush=True)
        soak = run(f"{base}/recommend", payloads(items, "recommend", args.soak, seed=2), 32)
        report["soak"] = {"endpoint": "recommend", **soak}
        print("soak", soak, flush=True)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
