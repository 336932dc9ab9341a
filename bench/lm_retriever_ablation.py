"""Ablations of the tuned-LM retriever on MovieLens-100K: what each part of the recipe is worth.

Every variant trains the text-only LM retriever (``m6rec.models.lm_retrieval``) over the same cached
lower-layer segment states for the same wall-clock budget, selects its weights on valid NDCG@10 and is
then scored once on test (selection never looks at test):

- ``full``: the default recipe (top layer tuned fully at the new weights' learning rate, 1e-3, "often
  watched next" in item texts, a constant learning rate);
- ``low_lm_lr``: the top layer tuned at 1e-4 (the default before this ablation);
- ``lr_decay``: the learning rate falling linearly to 0 over the budget;
- ``lora``: LoRA adapters on the top layer instead of full tuning (M6-Rec's ~1%-trainable choice);
- ``frozen_lm``: the top layer not tuned (heads and embeddings only);
- ``random_init``: the top layer's architecture from random weights (no pretrained weight);
- ``no_watched_next``: item texts without the "often watched next" phrase;
- ``two_layers``: the top two layers tuned over layer-4 states;
- ``two_layers_lora``: LoRA adapters on the top two layers over layer-4 states.

Usage: python bench/lm_retriever_ablation.py [--budget-s 420] [--threads 2] [--variants full lora ...]
Writes bench/results/lm_retriever_ablation.json (merged per variant, so variants can run separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from m6rec.data.marts import load_rec_data
from m6rec.models.backbones import load_encoder
from m6rec.models.lm_layers import LowerLayerCache, build_lower_cache
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.models.retrieval import evaluate_retrieval
from m6rec.text.textify import TextStyle
from m6rec.training.profiles import LORA_TUNING, get_profile
from m6rec.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]
STYLE = TextStyle(with_popularity=True, with_watched_next=True)
VARIANTS = {
    # name: (retriever config changes, text style, tuned top layers, lr decay)
    "full": ({}, STYLE, 1, "none"),
    "lr_decay": ({}, STYLE, 1, "linear"),
    "lora": (LORA_TUNING, STYLE, 1, "none"),
    "frozen_lm": ({"tuning": "frozen"}, STYLE, 1, "none"),
    "random_init": ({"pretrained": False}, STYLE, 1, "none"),
    "no_watched_next": ({}, replace(STYLE, with_watched_next=False), 1, "none"),
    "two_layers": ({}, STYLE, 2, "none"),
    "low_lm_lr": ({"lm_lr": 1e-4}, STYLE, 1, "none"),
    "two_layers_lora": (LORA_TUNING, STYLE, 2, "none"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--db", default=os.environ.get("M6REC_DUCKDB_PATH", str(REPO / "data/warehouse.duckdb"))
    )
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(REPO / "bench/results/lm_retriever_ablation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile("default")
    data = load_rec_data(args.db)
    encoder = load_encoder("minilm")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"variants": {}}
    caches: dict[tuple, LowerLayerCache] = {}
    for name in args.variants:
        changes, style, top_layers, decay = VARIANTS[name]
        key = (style, top_layers)
        if key not in caches:
            caches[key] = build_lower_cache(encoder, data, style, encoder.num_layers - top_layers)
        config = replace(profile.lm_retriever, **changes)
        train = TrainConfig(
            output_dir=str(REPO / "data" / "bench" / f"ablation_{name}"),
            max_steps=100_000,
            lr=1e-3,
            eval_every=profile.lm_eval_every,
            patience=profile.patience,
            max_seconds=args.budget_s,
            lr_decay=decay,
            seed=args.seed,
            resume=False,
            progress=False,
        )
        start = time.perf_counter()
        model, result = train_lm_retriever(
            data, caches[key], encoder.model, config, train, batch_size=profile.lm_batch_size, log=print
        )
        test = evaluate_retrieval(model, data, "test")
        results["variants"][name] = {
            "best_valid_ndcg@10": result.best_metric,
            "test": {k: test[k] for k in ("ndcg@10", "hit@10", "ndcg@20", "hit@20")},
            "steps": result.steps,
            "best_step": result.best_step,
            "stopped": result.stopped,
            "train_seconds": round(result.seconds, 1),
            "windows_per_second": round(result.steps_per_second * profile.lm_batch_size, 1),
            "tuned_layers": top_layers,
            "lr_decay": decay,
            "with_watched_next": style.with_watched_next,
            **model.parameter_counts(),
            "config": asdict(config),
            "seconds": round(time.perf_counter() - start, 1),
            "command": "python bench/lm_retriever_ablation.py " + " ".join(sys.argv[1:]),
        }
        print(name, json.dumps(results["variants"][name]["test"]), flush=True)
        results.update(
            {
                "budget_s": args.budget_s,
                "seed": args.seed,
                "machine": {
                    "cpus": os.cpu_count(),
                    "torch_threads": args.threads,
                    "platform": platform.platform(),
                    "cuda": torch.cuda.is_available(),
                },
            }
        )
        out_path.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
