"""Evaluation that scales: ranks computed in user chunks equal the one-shot ranks; a seeded user sample
is the same for every row of a run and each row says how many users it ranked and how precise its
NDCG@10 is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m6rec.data.eval_inputs import build_eval_inputs
from m6rec.evaluation import offline
from m6rec.evaluation.metrics import ndcg_ci95, rank_of_targets, ranks_in_chunks, sample_users
from m6rec.models.backbones import tiny_encoder
from m6rec.models.retrieval import (
    RetrieverConfig,
    evaluate_retrieval,
    new_retriever,
    query_windows,
    score_windows,
)
from m6rec.models.segments import build_segment_cache
from m6rec.text.textify import TextStyle
from tests.synthetic import ctr_frame, synthetic_rec_data


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_ranks_in_chunks_equal_the_one_shot_ranks(chunk: int) -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(17, 30)).astype(np.float32)
    scores[:, 5] = scores[:, 6]  # ties, broken by item index either way
    targets = rng.integers(0, 30, size=17)
    exclude = [rng.choice(30, size=4, replace=False) for _ in range(17)]
    exclude = [e[e != t] for e, t in zip(exclude, targets, strict=True)]
    want = rank_of_targets(scores, targets, exclude)
    got = ranks_in_chunks(lambda a, b: scores[a:b], targets, exclude, chunk=chunk)
    np.testing.assert_array_equal(got, want)


def test_ndcg_interval_hand_case() -> None:
    # gains 1 and 0: sample std 0.7071, so 1.96 * 0.7071 / sqrt(2) = 0.98
    assert ndcg_ci95(np.array([1, 11])) == pytest.approx(0.98, abs=1e-4)
    assert np.isnan(ndcg_ci95(np.array([1])))


def test_user_sample_is_seeded_and_only_when_needed() -> None:
    users = [f"u{i}" for i in range(100)] * 2
    assert sample_users(users, 100) is None and sample_users(users, None) is None
    sample = sample_users(users, 10, seed=3)
    assert len(sample) == 10 and sample <= set(users) and sample == sample_users(users, 10, seed=3)
    assert sample != sample_users(users, 10, seed=4)


@pytest.fixture(scope="module")
def small_run():
    data = synthetic_rec_data(n_users=40)
    torch.manual_seed(0)
    cache = build_segment_cache(tiny_encoder(seed=0), data, TextStyle())
    model = new_retriever(RetrieverConfig(dim=16, heads=2, max_len=6), data, cache).eval()
    return data, model


def test_sampled_users_are_filtered_everywhere(small_run) -> None:
    data, model = small_run
    users = sample_users(data.holdout("test")["user_id"].astype(str), 7, seed=1)
    windows, targets, _ = query_windows(data, "test", 6, users)
    inputs = build_eval_inputs(data.events, data.n_items, data.item_index, "test", users)
    assert len(windows) == len(targets) == len(inputs.targets) == 7 and set(inputs.user_ids) == users
    # fitting data is not sampled: every user's train events stay
    assert len(inputs.train_sequences) == len(
        build_eval_inputs(data.events, data.n_items, data.item_index).train_sequences
    )
    full = evaluate_retrieval(model, data, "test")
    assert evaluate_retrieval(model, data, "test", users=set(data.users["user_id"].astype(str))) == full


def test_every_row_of_a_sampled_evaluation_ranks_the_same_users(small_run) -> None:
    data, model = small_run
    common = dict(ctr_examples=ctr_frame(data), baselines=("pop", "itemknn"), ctr_models={})
    sampled = offline.evaluate(data, {"m": model}, max_eval_users=9, **common)
    full = offline.evaluate(data, {"m": model}, **common)
    n_test = data.holdout("test")["user_id"].nunique()
    assert {row: m["users"] for row, m in sampled.retrieval.items()} == {row: 9 for row in full.retrieval}
    assert all(m["users"] == n_test for m in full.retrieval.values())
    assert all(m["ndcg@10_ci95"] > 0 for m in full.retrieval.values())
    # the valid metric the serving choice reads is the training's own valid NDCG@10
    assert full.valid["retrieval"]["m"] == pytest.approx(evaluate_retrieval(model, data, "valid")["ndcg@10"])
    assert full.parameters["m"]["lm_trainable_parameters"] == 0
    assert full.serving == {"retrieval": "m"} and full.selection == {"retrieval": "best on valid"}
    # chunking does not change the full evaluation
    windows, targets, exclude = query_windows(data, "test", 6)
    one_shot = offline.ranking_metrics(
        rank_of_targets(score_windows(model, windows), targets, exclude), offline.KS
    )
    assert full.retrieval["m"]["ndcg@10"] == pytest.approx(one_shot["ndcg@10"])
