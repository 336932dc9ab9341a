"""Quality benchmark: the default-profile retriever and CTR ranker beside Pop, ItemKNN and SASRec,
all on one leave-one-out split of MovieLens-100K (RecBole LS valid_and_test, order TO).

Usage:
  python bench/quality_ml100k.py [--db data/warehouse.duckdb] [--budget-s 900] [--skip-baselines]
Writes bench/results/quality_ml100k.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import duckdb
import numpy as np
import torch

from m6rec.backbones import load_encoder
from m6rec.baselines import ItemKNN, Popularity, SASRecBaseline
from m6rec.data import load_rec_data
from m6rec.evaluation_data import build_eval_inputs
from m6rec.metrics import (
    catalogue_coverage,
    intra_list_diversity,
    novelty,
    rank_of_targets,
    ranking_metrics,
    topk,
)
from m6rec.ranking import RankerConfig, ctr_tensors, evaluate_ctr, train_ranker
from m6rec.retrieval import (
    RetrieverConfig,
    SegmentCache,
    build_segment_cache,
    query_windows,
    score_windows,
    train_retriever,
)
from m6rec.trainer import TrainConfig

RESULTS = Path(__file__).parent / "results"


def genre_features(data) -> np.ndarray:
    genres = sorted({g for gs in data.items["genres"] for g in gs})
    index = {g: i for i, g in enumerate(genres)}
    feats = np.zeros((data.n_items, len(genres)), dtype=np.float32)
    for i, gs in enumerate(data.items["genres"]):
        feats[i, [index[g] for g in gs]] = 1.0
    return feats


def full_report(scores: np.ndarray, targets: np.ndarray, exclude, data, train_counts, features) -> dict:
    ranks = rank_of_targets(scores, targets, exclude)
    out = ranking_metrics(ranks, (10, 20, 50))
    lists = topk(scores, 10, exclude)
    out["coverage@10"] = catalogue_coverage(lists, data.n_items)
    out["diversity@10"] = intra_list_diversity(lists, features)
    out["novelty@10"] = novelty(lists, train_counts, data.n_users)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=os.environ.get("M6REC_DUCKDB_PATH", "data/warehouse.duckdb"))
    parser.add_argument("--cache", default="data/cache/segments_minilm.pt")
    parser.add_argument("--budget-s", type=float, default=900.0, help="training budget per model")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "quality_ml100k.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "versions": {p: version(p) for p in ["torch", "transformers", "accelerate", "duckdb"]},
        "command": "python bench/quality_ml100k.py " + f"--budget-s {args.budget_s:g}",
        "models": {},
    }
    data = load_rec_data(args.db)
    with duckdb.connect(args.db, read_only=True) as conn:
        examples = conn.execute("select * from marts.ctr_examples").df()
    train_counts = data.items["n_train_interactions"].to_numpy()
    features = genre_features(data)

    start = time.perf_counter()
    cache_path = Path(args.cache)
    if cache_path.exists():
        cache = SegmentCache.load(cache_path)
    else:
        cache = build_segment_cache(load_encoder("minilm"), data)
        cache.save(cache_path)
    report["segment_cache_s"] = round(time.perf_counter() - start, 1)

    # --- the retriever (default CPU profile) -------------------------------------------------------
    ret_cfg = RetrieverConfig()
    train_cfg = TrainConfig(
        output_dir="data/bench/retriever",
        max_steps=5000,
        lr=1e-3,
        eval_every=100,
        patience=5,
        max_seconds=args.budget_s,
        resume=False,
        progress=False,
    )
    model, result = train_retriever(data, cache, ret_cfg, train_cfg, log=print)
    windows, targets, exclude = query_windows(data, "test", ret_cfg.max_len)
    t0 = time.perf_counter()
    scores = score_windows(model, windows)
    score_s = time.perf_counter() - t0
    report["models"]["m6rec retriever (MiniLM segments + ID + popularity)"] = {
        **full_report(scores, targets, exclude, data, train_counts, features),
        "train_s": round(result.seconds, 1),
        "best_valid_ndcg@10": result.best_metric,
        "best_step": result.best_step,
        "stopped": result.stopped,
        "score_all_users_s": round(score_s, 2),
        "config": ret_cfg.__dict__,
    }
    text_cfg = RetrieverConfig(use_ids=False)
    text_model, text_result = train_retriever(
        data,
        cache,
        text_cfg,
        TrainConfig(**{**train_cfg.__dict__, "output_dir": "data/bench/retriever_text"}),
        log=print,
    )
    report["models"]["m6rec retriever, text + popularity only (no IDs)"] = {
        **full_report(score_windows(text_model, windows), targets, exclude, data, train_counts, features),
        "train_s": round(text_result.seconds, 1),
        "best_valid_ndcg@10": text_result.best_metric,
    }

    # --- baselines, same split ----------------------------------------------------------------------
    if not args.skip_baselines:
        splits = data.events
        test = build_eval_inputs(splits, data.n_items, data.item_index, "test")
        valid = build_eval_inputs(splits, data.n_items, data.item_index, "valid")
        for name, baseline in [
            ("Pop", Popularity()),
            ("ItemKNN", ItemKNN()),
            ("SASRec (ID only)", SASRecBaseline(max_train_seconds=args.budget_s, num_threads=args.threads)),
        ]:
            t0 = time.perf_counter()
            if isinstance(baseline, SASRecBaseline):
                baseline.fit(test.train_sequences, data.n_items, valid=valid)
            else:
                baseline.fit(test.train_sequences, data.n_items)
            fit_s = time.perf_counter() - t0
            b_scores = baseline.score(test.histories)
            report["models"][name] = {
                **full_report(b_scores, test.targets, test.histories, data, train_counts, features),
                "train_s": round(fit_s, 1),
            }

    # --- CTR ranker (TALLRec protocol) --------------------------------------------------------------
    rank_cfg = RankerConfig()
    rank_train = TrainConfig(
        output_dir="data/bench/ranker",
        max_steps=20000,
        lr=1e-3,
        eval_every=200,
        metric="auc",
        patience=5,
        max_seconds=args.budget_s,
        resume=False,
        progress=False,
    )
    ranker, rank_result = train_ranker(data, cache, examples, rank_cfg, rank_train, log=print)
    test_ctr = ctr_tensors(examples[examples["split"] == "test"], data)
    report["ctr"] = {
        "m6rec segment ranker": {
            **evaluate_ctr(ranker, test_ctr),
            "train_s": round(rank_result.seconds, 1),
            "best_valid_auc": rank_result.best_metric,
            "n_train_examples": int((examples["split"] == "train").sum()),
            "n_test_examples": int(len(test_ctr["labels"])),
        }
    }

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    cols = [
        "ndcg@10",
        "hit@10",
        "mrr@10",
        "ndcg@20",
        "hit@20",
        "hit@50",
        "coverage@10",
        "diversity@10",
        "novelty@10",
        "train_s",
    ]
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in report["models"].items():
        print(
            f"| {name} | "
            + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols)
            + " |"
        )
    print(json.dumps(report["ctr"], indent=2, default=float))


if __name__ == "__main__":
    main()
