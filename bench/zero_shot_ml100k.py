"""Zero-shot benchmark: hold 20% of the items with >= 10 interactions out of training entirely
(dbt var zero_shot), train the default-profile retriever, then rank each held-out interaction's item
among all cold items from the user's earlier history. Pop and ID models cannot rank these items at all
(no training interaction, no ID row); the reference points are random ranking and a training-free
text-similarity baseline.

Usage: python bench/zero_shot_ml100k.py [--budget-s 600] [--fraction 0.2]
Writes bench/results/zero_shot_ml100k.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from m6rec.data.marts import load_rec_data
from m6rec.data.movielens import fetch_movielens_100k
from m6rec.data.sources import read_source
from m6rec.data.warehouse import connect, replace_raw_tables
from m6rec.evaluation.zero_shot import zero_shot_report
from m6rec.models.backbones import load_encoder
from m6rec.models.retrieval import RetrieverConfig, evaluate_retrieval, train_retriever
from m6rec.models.segments import build_segment_cache
from m6rec.text.textify import TextStyle
from m6rec.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def build_warehouse(db: Path, fraction: float) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with connect(db) as conn:
        replace_raw_tables(conn, read_source(fetch_movielens_100k(REPO / "data" / "cache")), "ml-100k")
    dbt_vars = json.dumps({"zero_shot": True, "cold_item_fraction": fraction})
    subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), "build", "--quiet", "--vars", dbt_vars],
        cwd=REPO / "transforms",
        env={**os.environ, "M6REC_DUCKDB_PATH": str(db)},
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    db = REPO / "data" / "bench" / "zero_shot.duckdb"
    start = time.perf_counter()
    build_warehouse(db, args.fraction)
    data = load_rec_data(db)
    cache = build_segment_cache(load_encoder("minilm"), data, TextStyle(with_popularity=True))
    prepared = time.perf_counter() - start
    cfg = RetrieverConfig()
    train_cfg = TrainConfig(
        output_dir=str(REPO / "data" / "bench" / "zero_shot_retriever"),
        max_steps=5000,
        eval_every=100,
        patience=5,
        max_seconds=args.budget_s,
        resume=False,
        progress=False,
    )
    model, result = train_retriever(data, cache, cfg, train_cfg, log=print)
    report = {
        "command": "python bench/zero_shot_ml100k.py "
        + f"--budget-s {args.budget_s:g} --fraction {args.fraction}",
        "cold_item_fraction": args.fraction,
        "prepare_s": round(prepared, 1),
        "train_s": round(result.seconds, 1),
        "zero_shot": zero_shot_report(model, data, ks=(10, 20, 50)),
        "warm_test_same_run": evaluate_retrieval(model, data, "test", ks=(10, 20, 50)),
    }
    out = REPO / "bench" / "results" / "zero_shot_ml100k.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
