"""Late interaction vs the full cross-encoder, at token level on MiniLM (CTR, TALLRec labels).

For each k (top layers over the concatenation; k = L = 6 is the cross-encoder) a scorer is fine-tuned on
the same sample of train-split CTR examples, then evaluated on test-split examples (AUC) and timed on
ranking 100 candidates for one user: context segments through the lower layers once, candidate
segments cached offline, the top k layers over each (context + candidate).

Usage: python bench/late_interaction.py [--train-examples 1500] [--ks 1,2,3,6] [--threads 2]
Writes bench/results/late_interaction.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from m6rec.data.marts import load_rec_data
from m6rec.evaluation.metrics import ctr_metrics
from m6rec.models.backbones import load_encoder
from m6rec.models.late_interaction import LateInteractionScorer, example_segments, segment_types
from m6rec.text.textify import TextStyle, pronoun, question_text
from m6rec.training.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
STYLE = TextStyle()


def segments_for(examples: pd.DataFrame, data, history: int) -> tuple[list[list[str]], list[list[int]]]:
    """Each example's segment texts (the pipeline's own function) and their segment types."""
    segments = example_segments(examples, data, STYLE, history)
    return segments, [segment_types(len(s)) for s in segments]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=os.environ.get("M6REC_DUCKDB_PATH", "data/warehouse.duckdb"))
    parser.add_argument("--train-examples", type=int, default=1500)
    parser.add_argument("--test-examples", type=int, default=943)
    parser.add_argument("--history", type=int, default=5)
    parser.add_argument("--ks", default="1,2,3,6")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "late_interaction.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_rec_data(args.db)
    with duckdb.connect(args.db, read_only=True) as conn:
        examples = conn.execute("select * from marts.ctr_examples where split in ('train', 'test')").df()
    rng = np.random.default_rng(0)
    train = examples[examples["split"] == "train"].sample(args.train_examples, random_state=0)
    test = examples[examples["split"] == "test"].sample(min(args.test_examples, 943), random_state=0)
    train_segs, train_kinds = segments_for(train, data, args.history)
    test_segs, test_kinds = segments_for(test, data, args.history)
    train_labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    report = {
        "command": "python bench/late_interaction.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "db"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads},
        "variants": {},
    }
    for k in [int(x) for x in args.ks.split(",")]:
        torch.manual_seed(0)
        scorer = LateInteractionScorer(load_encoder("minilm"), top_k=k)
        loader = DataLoader(list(range(len(train_segs))), batch_size=16, shuffle=True)

        def loss_fn(model, idx, scorer=scorer):
            idx = idx.tolist()
            logits = model([train_segs[i] for i in idx], [train_kinds[i] for i in idx])
            return F.binary_cross_entropy_with_logits(logits, train_labels[idx])

        steps = len(loader)
        cfg = TrainConfig(
            output_dir=str(REPO / "data" / "bench" / f"late_k{k}"),
            max_steps=steps,
            lr=5e-5,
            eval_every=steps,
            metric="none",
            resume=False,
            progress=False,
        )
        start = time.perf_counter()
        Trainer(scorer, loss_fn, loader, lambda m: {"none": 0.0}, cfg).fit()
        train_s = time.perf_counter() - start
        scorer.eval()
        with torch.no_grad():
            probs = torch.cat(
                [
                    torch.sigmoid(scorer(test_segs[s : s + 64], test_kinds[s : s + 64]))
                    for s in range(0, len(test_segs), 64)
                ]
            ).numpy()
            auc = ctr_metrics(test["label"].to_numpy(), probs)["auc"]
            # Serving: 100 candidates for one user; candidate segments are cached once (offline).
            candidates = rng.choice(data.n_items, 100, replace=False)
            texts = data.item_texts()
            latencies = []
            for r in range(args.requests):
                segs, kinds = test_segs[r], test_kinds[r]
                who = pronoun(data.profiles()[0])
                cand_states = scorer.encode_segments(
                    [question_text(texts[c], who, STYLE) for c in candidates]
                )
                t0 = time.perf_counter()
                scorer.rank_candidates(segs[:-1], kinds[:-1], cand_states)
                latencies.append(time.perf_counter() - t0)
        report["variants"][f"k={k}"] = {
            "top_layers": k,
            "lower_layers": scorer.split,
            "test_auc": auc,
            "train_s": round(train_s, 1),
            "rank_100_ms_median": round(1000 * statistics.median(latencies), 1),
            "rank_100_ms_p90": round(1000 * float(np.percentile(latencies, 90)), 1),
        }
        print(k, report["variants"][f"k={k}"], flush=True)
    full = report["variants"].get("k=6")
    if full:
        for row in report["variants"].values():
            row["speedup_vs_cross_encoder"] = round(full["rank_100_ms_median"] / row["rank_100_ms_median"], 2)
            row["auc_minus_cross_encoder"] = round(row["test_auc"] - full["test_auc"], 4)
    report["n_train"], report["n_test"] = len(train), len(test)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
