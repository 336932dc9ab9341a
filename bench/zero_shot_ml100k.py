"""Zero-shot benchmark: hold 20% of the items with >= 10 interactions out of training entirely
(dbt var zero_shot), train the text-only tuned-LM retriever (and the frozen-feature retriever) on the
rest, then rank each held-out interaction's item among all cold items from the user's earlier history,
beside the content baseline a practitioner would use (TF-IDF over item text, the user's liked history as
the query) and random ranking. Pop and ID models cannot rank these items at all (no training
interaction, no ID row).

M6-Rec's LM-likelihood form (SmolLM2-135M, untuned: the explainer of the pipeline) ranks the cold items
for a seeded sample of ``--lm-events`` cold events; ``zero_shot.sample`` holds every row on that sample.

Usage: python bench/zero_shot_ml100k.py [--budget-s 600] [--frozen-s 300] [--fraction 0.2]
    [--lm-events 20] [--threads 2]
Writes bench/results/zero_shot_ml100k.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from m6rec.data.marts import load_rec_data
from m6rec.data.movielens import fetch_movielens_100k
from m6rec.data.sources import read_source
from m6rec.data.warehouse import connect, replace_raw_tables
from m6rec.evaluation import offline
from m6rec.evaluation.zero_shot import CONTENT_ROW, RANDOM_ROW, zero_shot_report
from m6rec.models.backbones import load_causal_lm, load_encoder
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.models.retrieval import evaluate_retrieval, train_retriever
from m6rec.text.textify import TextStyle
from m6rec.training.profiles import get_profile
from m6rec.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TEXT_STYLE = TextStyle(with_popularity=True)  # behaviour sentences, as orchestration.stages


def build_warehouse(db: Path, fraction: float) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with connect(db) as conn:
        replace_raw_tables(conn, read_source(fetch_movielens_100k(REPO / "data" / "cache")), "ml-100k")
    # built by hand as a user would: the marts straight into `marts` (the pipeline's dbt step writes an
    # audit schema its suites check before publishing; nothing here reads one)
    dbt_vars = json.dumps({"marts_audit_schema": "marts", "zero_shot": True, "cold_item_fraction": fraction})
    subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), "build", "--quiet", "--vars", dbt_vars],
        cwd=REPO / "transforms",
        env={**os.environ, "M6REC_DUCKDB_PATH": str(db)},
        check=True,
    )


def ratios(rows: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Each model row's HR@50 over the content baseline's (None where the baseline hit nothing)."""
    content = rows[CONTENT_ROW]["hr@50"]
    return {
        row: (m["hr@50"] / content if content else None)
        for row, m in rows.items()
        if row not in (CONTENT_ROW, RANDOM_ROW)
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--frozen-s", type=float, default=300.0)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--lm-events", type=int, default=20, help="cold events SmolLM2 ranks (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile("default")
    db = REPO / "data" / "bench" / "zero_shot.duckdb"
    start = time.perf_counter()
    build_warehouse(db, args.fraction)
    data = load_rec_data(db)
    encoder = load_encoder("minilm")
    style = replace(TEXT_STYLE, with_watched_next=True)  # item segments
    lm_cache = build_lower_cache(encoder, data, style, profile.lm_split(encoder.num_layers))
    prepared = time.perf_counter() - start

    def train_config(name: str, budget: float, **changes) -> TrainConfig:
        return TrainConfig(
            output_dir=str(REPO / "data" / "bench" / name),
            max_steps=100_000,
            patience=profile.patience,
            max_seconds=budget,
            resume=False,
            progress=False,
            **{"eval_every": profile.eval_every, **changes},
        )

    lm, lm_result = train_lm_retriever(
        data,
        lm_cache,
        encoder.model,
        profile.lm_retriever,
        train_config(
            "zero_shot_lm", args.budget_s, eval_every=profile.lm_eval_every, lr_decay=profile.lm_lr_decay
        ),
        batch_size=profile.lm_batch_size,
        log=print,
    )
    frozen, frozen_result = train_retriever(
        data,
        lm_cache.sentences(),
        replace(profile.retriever),
        train_config("zero_shot_frozen", args.frozen_s),
        batch_size=profile.batch_size,
        log=print,
    )
    models = {offline.LM_TEXT_ONLY: lm, offline.FROZEN_RETRIEVER_ROW: frozen}
    likelihood_start = time.perf_counter()
    explainer = load_causal_lm("smollm2", REPO / "data" / "cache") if args.lm_events else None
    zero_shot = zero_shot_report(models, data, lm=explainer, lm_events=args.lm_events, style=TEXT_STYLE)
    scored = time.perf_counter() - likelihood_start
    report = {
        "command": "python bench/zero_shot_ml100k.py " + " ".join(sys.argv[1:]),
        "cold_item_fraction": args.fraction,
        "prepare_s": round(prepared, 1),
        "train_s": {
            offline.LM_TEXT_ONLY: round(lm_result.seconds, 1),
            offline.FROZEN_RETRIEVER_ROW: round(frozen_result.seconds, 1),
        },
        "zero_shot_scoring_s": round(scored, 1),
        "lm_trainable_parameters": lm.parameter_counts()["lm_trainable_parameters"],
        "zero_shot": zero_shot,
        "ratio_to_content_hr@50": ratios(zero_shot["rows"]),
        "ratio_to_content_hr@50_sample": ratios(zero_shot["sample"]["rows"]) if "sample" in zero_shot else {},
        "warm_test_same_run": {
            row: evaluate_retrieval(model, data, "test", ks=(10, 20, 50)) for row, model in models.items()
        },
    }
    out = REPO / "bench" / "results" / "zero_shot_ml100k.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
