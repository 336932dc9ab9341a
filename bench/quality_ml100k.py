"""Quality benchmark: every m6rec model beside Pop, ItemKNN (tuned on valid) and SASRec, all from one
run on one leave-one-out split of MovieLens-100K (RecBole LS valid_and_test, order TO), selected on
valid and scored once on test.

Retrieval rows: the tuned-LM retriever text only (MiniLM's top layer fully tuned), the same with LoRA
adapters (M6-Rec's ~1%-trainable choice), the text-only model warm-started with item-ID rows added, and
the frozen-feature retriever (a transformer from scratch over frozen sentence embeddings, with IDs).
CTR rows: the tuned-LM scorer, the frozen-feature segment ranker, the item-mean-rating baseline and
SmolLM2-135M's zero-shot Yes/No answers on a seeded sample of test examples.

Usage:
  python bench/quality_ml100k.py [--db data/warehouse.duckdb] [--threads 2] [--lm-s 600] [--lora-s 900]
      [--ids-s 180] [--frozen-s 450] [--lm-ranker-s 540] [--ranker-s 300] [--sasrec-s 300]
      [--smollm2-examples 200]
Budgets are ceilings meant to reach each model's best valid checkpoint on a 2-core CPU, so the rows
compare models rather than the host's speed (the JSON's ``train`` says where each stopped and why).
Writes bench/results/quality_ml100k.json (``retrieval`` / ``ctr``: test metrics by row; ``train``:
budgets, valid metrics and parameter counts by row, ``lm_trainable_parameters`` among them) and prints
the markdown table.
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
import numpy as np
import torch

from m6rec.data.marts import load_rec_data
from m6rec.evaluation import offline
from m6rec.models.backbones import load_causal_lm, load_encoder
from m6rec.models.generation import yes_no_sample
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_ranking import train_lm_ranker
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.models.ranking import train_ranker
from m6rec.models.retrieval import train_retriever
from m6rec.text.textify import TextStyle
from m6rec.training.profiles import LORA_TUNING, get_profile
from m6rec.training.trainer import TrainConfig, result_metadata

REPO = Path(__file__).resolve().parents[1]
TEXT_STYLE = TextStyle(with_popularity=True)  # as orchestration.stages: behaviour sentences
SEGMENT_STYLE = replace(TEXT_STYLE, with_watched_next=True)  # item segments
LM_LORA = "m6rec LM retriever (text only, LoRA)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--db", default=os.environ.get("M6REC_DUCKDB_PATH", str(REPO / "data/warehouse.duckdb"))
    )
    parser.add_argument("--lm-s", type=float, default=600)
    parser.add_argument("--lora-s", type=float, default=900)
    parser.add_argument("--ids-s", type=float, default=180)
    parser.add_argument("--frozen-s", type=float, default=450)
    parser.add_argument("--lm-ranker-s", type=float, default=540)
    parser.add_argument("--ranker-s", type=float, default=300)
    parser.add_argument("--sasrec-s", type=float, default=300)
    parser.add_argument("--smollm2-examples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench/results/quality_ml100k.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile("default")
    data = load_rec_data(args.db)
    with duckdb.connect(args.db, read_only=True) as conn:
        examples = conn.execute("select * from marts.ctr_examples").df()
    encoder = load_encoder("minilm")
    start = time.perf_counter()
    lm_cache = build_lower_cache(encoder, data, SEGMENT_STYLE, profile.lm_split(encoder.num_layers))
    cache = lm_cache.sentences()
    cache_s = time.perf_counter() - start

    def train_config(name: str, budget: float, metric: str, **changes) -> TrainConfig:
        return TrainConfig(
            output_dir=str(REPO / "data" / "bench" / name),
            max_steps=100_000,
            lr=1e-3,
            metric=metric,
            patience=profile.patience,
            max_seconds=budget,
            resume=False,
            progress=False,
            **{"eval_every": profile.eval_every, **changes},
        )

    lm_kwargs = {"eval_every": profile.lm_eval_every, "lr_decay": profile.lm_lr_decay}
    trained = {}  # row -> (model, TrainResult, TrainConfig, batch size)

    def record(row, model, result, cfg, batch_size):
        trained[row] = (model, result, cfg, batch_size)
        print(f"{row}: best valid {cfg.metric} {result.best_metric:.4f} ({result.seconds:.0f}s)", flush=True)
        return model

    cfg = train_config("lm_retriever", args.lm_s, "ndcg@10", **lm_kwargs)
    text_only = record(
        offline.LM_TEXT_ONLY,
        *train_lm_retriever(
            data, lm_cache, encoder.model, profile.lm_retriever, cfg, batch_size=profile.lm_batch_size
        ),
        cfg,
        profile.lm_batch_size,
    )
    cfg = train_config("lm_retriever_lora", args.lora_s, "ndcg@10", **lm_kwargs)
    lora = replace(profile.lm_retriever, **LORA_TUNING)
    record(
        LM_LORA,
        *train_lm_retriever(data, lm_cache, encoder.model, lora, cfg, batch_size=profile.lm_batch_size),
        cfg,
        profile.lm_batch_size,
    )
    cfg = train_config("lm_retriever_ids", args.ids_s, "ndcg@10", **lm_kwargs)
    with_ids = replace(profile.lm_retriever, use_ids=True)
    record(
        offline.LM_WITH_IDS,
        *train_lm_retriever(
            data, lm_cache, encoder.model, with_ids, cfg, batch_size=profile.lm_batch_size, init=text_only
        ),
        cfg,
        profile.lm_batch_size,
    )
    cfg = train_config("frozen_retriever", args.frozen_s, "ndcg@10")
    record(
        offline.FROZEN_RETRIEVER_ROW,
        *train_retriever(data, cache, profile.retriever, cfg, batch_size=profile.batch_size),
        cfg,
        profile.batch_size,
    )
    ctr_train = examples[examples["split"].isin(["train", "valid"])]
    cfg = train_config("lm_ranker", args.lm_ranker_s, "auc", **lm_kwargs)
    record(
        offline.LM_SCORER,
        *train_lm_ranker(
            data,
            lm_cache,
            encoder.model,
            ctr_train,
            profile.lm_ranker,
            cfg,
            batch_size=profile.lm_ranker_batch_size,
        ),
        cfg,
        profile.lm_ranker_batch_size,
    )
    cfg = train_config("segment_ranker", args.ranker_s, "auc")
    record(
        offline.SEGMENT_RANKER_ROW,
        *train_ranker(data, cache, ctr_train, profile.ranker, cfg, batch_size=profile.ranker_batch_size),
        cfg,
        profile.ranker_batch_size,
    )

    t0 = time.perf_counter()
    lm = load_causal_lm("smollm2", REPO / "data" / "cache")
    items = dict(zip(data.items["item_id"], data.item_texts(), strict=True))
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    sample, probs = yes_no_sample(
        lm, examples[examples["split"] == "test"], items, profiles, args.smollm2_examples, style=TEXT_STYLE
    )
    yes_no_row = f"{lm.name} Yes/No (zero-shot, {len(sample)} sampled test examples)"
    yes_no_s = time.perf_counter() - t0
    del lm

    ctr_rows = (offline.LM_SCORER, offline.SEGMENT_RANKER_ROW)
    retrievers = {row: m for row, (m, *_) in trained.items() if row not in ctr_rows}
    rankers = {row: trained[row][0] for row in ctr_rows}
    report = offline.evaluate(
        data,
        retrievers,
        rankers,
        examples,
        sasrec_budget_s=args.sasrec_s,
        extra_ctr={yes_no_row: (sample["label"].to_numpy(), np.asarray(probs))},
        log=print,
    )
    train = {}
    for row, (model, result, cfg, batch_size) in trained.items():
        meta = result_metadata(result, cfg, batch_size)
        meta.pop("config")
        train[row] = {
            **meta,
            **report.parameters[row],
            "budget_s": cfg.max_seconds,
            "lr_decay": cfg.lr_decay,
            "model_config": asdict(model.config),
        }
    train[yes_no_row] = {"lm_trainable_parameters": 0, "seconds": round(yes_no_s, 1), "examples": len(sample)}
    table = report.markdown()
    sasrec = report.retrieval["SASRec (IDs)"]["ndcg@10"]
    out = {
        "command": "python bench/quality_ml100k.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "versions": {p: version(p) for p in ["torch", "transformers", "accelerate", "peft", "duckdb"]},
        "segment_cache_s": round(cache_s, 1),
        "cached_layers": lm_cache.split,
        "tuned_layers": encoder.num_layers - lm_cache.split,
        **report.to_dict(),
        "train": train,
        "ratio_to_sasrec_ndcg@10": {
            row: report.retrieval[row]["ndcg@10"] / sasrec
            for row in report.retrieval
            if row.startswith("m6rec")
        },
        "table": table,
    }
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(table)


if __name__ == "__main__":
    main()
