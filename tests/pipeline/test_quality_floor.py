"""A quality floor on the real data: a short run of the fine-tuned LM retriever (text only: no item
IDs) on MovieLens-100K, with the real MiniLM and the ``default`` profile's model, must beat the same
split's Pop and tuned ItemKNN by a stated margin on test NDCG@10.

A benchmark-style assertion with slack, not a timing: training is bounded by steps, so the result does
not depend on how fast the machine is. Measured here (2 CPU threads, 2026-12-07):
``bench/results/quality_floor.json`` (written by this test) — see docs/benchmarks.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from m6rec.data.eval_inputs import build_eval_inputs
from m6rec.data.marts import load_rec_data
from m6rec.evaluation.metrics import rank_of_targets, ranking_metrics
from m6rec.evaluation.offline import tune_itemknn
from m6rec.models.backbones import load_encoder
from m6rec.models.baselines import ItemKNN, Popularity
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.models.retrieval import evaluate_retrieval
from m6rec.training.profiles import get_profile
from m6rec.training.trainer import TrainConfig
from orchestration.stages import SEGMENT_STYLE
from tests import REPO_ROOT, SHARED_CACHE
from tests.pipeline import ml100k_marts

pytestmark = pytest.mark.slow

STEPS = 1000  # the default recipe (its layer at 1e-3) passes the 1e-4 one on valid after ~800 steps
MARGIN_OVER_ITEMKNN = 1.10  # measured ~1.2x at this length (and 1.37x after the main command's 330 s)
MARGIN_OVER_POP = 1.5  # measured ~1.9x
RESULT = REPO_ROOT / "bench" / "results" / "quality_floor.json"


def _baseline_ndcg(model, inputs) -> float:
    ranks = rank_of_targets(model.score(inputs.histories), inputs.targets, inputs.histories)
    return ranking_metrics(ranks)["ndcg@10"]


def test_short_lm_run_beats_pop_and_tuned_itemknn_on_movielens(tmp_path: Path, ml100k_dir: Path) -> None:
    import torch

    torch.set_num_threads(2)
    db = tmp_path / "warehouse.duckdb"
    dbt = ml100k_marts(db, ml100k_dir)
    assert dbt.returncode == 0, dbt.stdout[-3000:]
    data = load_rec_data(db)
    profile = get_profile("default")
    encoder = load_encoder(profile.encoder, SHARED_CACHE, device="cpu")
    cache = build_lower_cache(encoder, data, SEGMENT_STYLE, profile.lm_split(encoder.num_layers))
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=STEPS,
        lr=1e-3,
        eval_every=100,
        metric="ndcg@10",
        patience=profile.patience,
        seed=0,
        resume=False,
        progress=False,
        lr_decay=profile.lm_lr_decay,
    )
    start = time.perf_counter()
    model, result = train_lm_retriever(
        data, cache, encoder.model, profile.lm_retriever, cfg, batch_size=profile.lm_batch_size
    )
    seconds = time.perf_counter() - start
    lm = evaluate_retrieval(model, data, "test")["ndcg@10"]

    test = build_eval_inputs(data.events, data.n_items, data.item_index, "test")
    valid = build_eval_inputs(data.events, data.n_items, data.item_index, "valid")
    pop = _baseline_ndcg(Popularity().fit(test.train_sequences, data.n_items), test)
    params = tune_itemknn(valid)  # on valid, never on test
    knn = _baseline_ndcg(
        ItemKNN(k=int(params["k"]), shrink=float(params["shrink"])).fit(test.train_sequences, data.n_items),
        test,
    )
    record = {
        "command": "make test (tests/pipeline/test_quality_floor.py)",
        "steps": STEPS,
        "train_seconds": round(seconds, 1),
        "best_valid_ndcg@10": result.best_metric,
        "best_step": result.best_step,
        "test_ndcg@10": {"m6rec LM retriever (text only)": lm, "Pop": pop, "ItemKNN (tuned on valid)": knn},
        "margins": {"over_itemknn": MARGIN_OVER_ITEMKNN, "over_pop": MARGIN_OVER_POP},
        "ratio_over_itemknn": lm / knn,
        "ratio_over_pop": lm / pop,
    }
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    assert lm >= MARGIN_OVER_ITEMKNN * knn, record
    assert lm >= MARGIN_OVER_POP * pop, record
