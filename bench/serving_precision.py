"""What serving the CTR model in bfloat16 buys and costs, on one bundle, in-process (no HTTP noise).

For the bundle (default: the `make run` champion) it loads the service's recommender twice — the CTR
model's layers in float32 and in bfloat16 (`M6REC_PRECISION` fp32 / bf16) — and measures, on one torch
thread:
  - `recommend` (retrieval + rerank of the top 50, `bench/serving_load.py`'s requests) milliseconds per
    request, the two precisions interleaved round by round so that the host's drifting speed hits both
    alike (the median round is kept);
  - CTR AUC through the served ranking path (the promotion gate's `ctr_auc`) on the valid and the test
    examples of the warehouse's marts, in both precisions;
  - how far the top 10 lists move: mean overlap@10 and the share of identical lists.
It also copies the bundle's own check (`manifest.json` → `ranker.precision`, written by `item_index`).

Usage: python bench/serving_precision.py [--bundle data/artifacts/champion] [--requests 300] [--rounds 5]
Writes bench/results/serving_precision.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import cpu_model  # noqa: E402
from serving_load import payloads  # noqa: E402

from m6rec.data.marts import load_rec_data  # noqa: E402
from m6rec.data.warehouse import connect  # noqa: E402
from m6rec.evaluation.gate import ctr_auc, ctr_jobs  # noqa: E402
from m6rec.serving.precision import native_bf16  # noqa: E402
from m6rec.serving.recommender import HistoryEvent, Recommender  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "data" / "artifacts" / "champion"))
    parser.add_argument("--warehouse", default=str(REPO / "data" / "warehouse.duckdb"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serving_precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    recs = {p: Recommender(args.bundle, device="cpu", precision=p) for p in PRECISIONS}
    items = recs["fp32"].item_ids.tolist()
    histories = [
        [HistoryEvent(e["item_id"], float(e["rating"])) for e in body["history"]]
        for body in payloads(items, "recommend", args.requests, seed=0)
    ]
    tops = {
        p: [[s.item_id for s in rec.recommend(h, 10, rerank=50)] for h in histories]
        for p, rec in recs.items()
    }
    rounds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.rounds):
        for p, rec in recs.items():
            start = time.perf_counter()
            for history in histories:
                rec.recommend(history, 10, rerank=50)
            rounds[p].append(round((time.perf_counter() - start) / len(histories) * 1000, 3))
    data = load_rec_data(args.warehouse)
    with connect(args.warehouse, read_only=True) as conn:
        examples = conn.execute("select * from marts.ctr_examples").df()
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    known = set(map(str, recs["fp32"].index))
    auc = {}
    for split in ("valid", "test"):
        jobs, labels = ctr_jobs(examples, known, profiles, split=split)
        auc[split] = {p: round(ctr_auc(rec, jobs, labels), 6) for p, rec in recs.items()}
    pairs = list(zip(tops["fp32"], tops["bf16"], strict=True))
    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    report = {
        "command": "python bench/serving_precision.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "bundle": args.bundle,
        "bundle_created_at": manifest["created_at"],
        "ctr_model": manifest["ranker"].get("name", manifest["ranker"]["kind"]),
        "bundle_check": manifest["ranker"].get("precision"),
        "native_bf16": native_bf16(torch.device("cpu")),
        "recommend_rerank50_ms": {p: float(np.median(r)) for p, r in rounds.items()},
        "recommend_rerank50_ms_rounds": rounds,
        "speedup": round(float(np.median(rounds["fp32"]) / np.median(rounds["bf16"])), 2),
        "served_ctr_auc": auc,
        "top10_overlap": round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])), 4),
        "top10_identical": round(float(np.mean([a == b for a, b in pairs])), 4),
        "requests": args.requests,
        "torch_threads": 1,
    }
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
