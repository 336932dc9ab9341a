"""Quality benchmark: the default-profile retriever and CTR ranker beside Pop, ItemKNN and SASRec,
all from one run on one leave-one-out split of MovieLens-100K (RecBole LS valid_and_test, order TO).

Usage:
  python bench/quality_ml100k.py [--db data/warehouse.duckdb] [--retriever-s 600] [--ranker-s 300]
                                 [--sasrec-s 300] [--text-only-s 300]
Writes bench/results/quality_ml100k.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path

import duckdb
import torch

from m6rec.data.marts import load_rec_data
from m6rec.evaluation.offline import evaluate, genre_features, ranking_report
from m6rec.models.backbones import load_encoder
from m6rec.models.ranking import train_ranker
from m6rec.models.retrieval import query_windows, score_windows, train_retriever
from m6rec.models.segments import SegmentCache, build_segment_cache
from m6rec.text.textify import TextStyle
from m6rec.training.profiles import get_profile
from m6rec.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--db", default=os.environ.get("M6REC_DUCKDB_PATH", str(REPO / "data/warehouse.duckdb"))
    )
    parser.add_argument("--retriever-s", type=float, default=600)
    parser.add_argument("--text-only-s", type=float, default=300)
    parser.add_argument("--ranker-s", type=float, default=300)
    parser.add_argument("--sasrec-s", type=float, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile("default")
    data = load_rec_data(args.db)
    with duckdb.connect(args.db, read_only=True) as conn:
        examples = conn.execute("select * from marts.ctr_examples").df()
    start = time.perf_counter()
    cache_path = REPO / "data" / "cache" / "segments_minilm.pt"
    if cache_path.exists():
        cache = SegmentCache.load(cache_path)
    else:
        cache = build_segment_cache(load_encoder("minilm"), data, TextStyle(with_popularity=True))
        cache.save(cache_path)
    cache_s = time.perf_counter() - start

    def train_cfg(name: str, budget: float, steps: int, metric: str) -> TrainConfig:
        return TrainConfig(
            output_dir=str(REPO / "data" / "bench" / name),
            max_steps=steps,
            eval_every=100,
            metric=metric,
            patience=profile.patience,
            max_seconds=budget,
            resume=False,
            progress=False,
        )

    retriever, r_result = train_retriever(
        data, cache, profile.retriever, train_cfg("retriever", args.retriever_s, 10_000, "ndcg@10"), log=print
    )
    text_cfg = replace(profile.retriever, use_ids=False)
    text_only, t_result = train_retriever(
        data, cache, text_cfg, train_cfg("retriever_text", args.text_only_s, 10_000, "ndcg@10")
    )
    ranker, k_result = train_ranker(
        data, cache, examples, profile.ranker, train_cfg("ranker", args.ranker_s, 20_000, "auc"), log=print
    )
    report = evaluate(data, retriever, ranker, examples, sasrec_budget_s=args.sasrec_s, log=print)
    windows, targets, exclude = query_windows(data, "test", text_cfg.max_len)
    metrics, curve, pop = ranking_report(
        score_windows(text_only, windows), targets, exclude, data, genre_features(data)
    )
    report.retrieval["m6rec retriever, text + popularity only (no ID rows)"] = metrics
    table = report.markdown()
    out = {
        "command": "python bench/quality_ml100k.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "versions": {p: version(p) for p in ["torch", "transformers", "accelerate", "duckdb"]},
        "segment_cache_s": round(cache_s, 1),
        "train": {
            "retriever": {
                "seconds": round(r_result.seconds, 1),
                "best_valid_ndcg@10": r_result.best_metric,
                "best_step": r_result.best_step,
                "stopped": r_result.stopped,
            },
            "retriever_text_only": {
                "seconds": round(t_result.seconds, 1),
                "best_valid_ndcg@10": t_result.best_metric,
            },
            "ranker": {
                "seconds": round(k_result.seconds, 1),
                "best_valid_auc": k_result.best_metric,
                "stopped": k_result.stopped,
            },
        },
        "config": {"retriever": asdict(profile.retriever), "ranker": asdict(profile.ranker)},
        **report.to_dict(),
        "table": table,
    }
    path = REPO / "bench" / "results" / "quality_ml100k.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(table)


if __name__ == "__main__":
    main()
