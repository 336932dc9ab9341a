"""Metrics against hand-computed cases and against sklearn / a brute-force stable sort."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import log_loss, roc_auc_score

from m6rec.evaluation import metrics
from m6rec.evaluation.metrics import (
    catalogue_coverage,
    ctr_metrics,
    intra_list_diversity,
    novelty,
    rank_of_targets,
    ranking_metrics,
    topk,
)

SCORES = np.array(
    [
        [0.1, 0.5, 0.5, 0.2, 0.9],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [0.3, 0.2, 0.1, 0.0, -1.0],
    ]
)


def test_rank_ties_go_to_the_smaller_item_index() -> None:
    # Row 0: item 4 beats everything; items 1 and 2 tie, item 1 first.
    assert rank_of_targets(SCORES, [1, 4, 0]).tolist() == [2, 5, 1]
    assert rank_of_targets(SCORES, [2, 0, 4]).tolist() == [3, 1, 5]


def test_rank_excludes_history_but_never_the_target() -> None:
    exclude = [np.array([4, 1]), np.array([0, 1, 2, 4]), np.array([0, 1, 2])]
    # Row 0 target 2: 4 and 1 excluded -> first. Row 1 target 4 lies in its own history: kept,
    # and only item 3 (equal score, smaller index) is left before it. Row 2 target 3 after 0..2 go.
    assert rank_of_targets(SCORES, [2, 4, 3], exclude).tolist() == [1, 2, 1]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("form", ["list", "dense_bool", "scipy", "torch_dense", "torch_coo", "torch_csr"])
def test_rank_accepts_every_exclusion_form(form: str) -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(7, 11)).astype(np.float32)  # many ties
    targets = rng.integers(0, 11, size=7)
    mask = rng.random((7, 11)) < 0.4
    lists = [np.flatnonzero(row) for row in mask]
    forms = {
        "list": lambda: lists,
        "dense_bool": lambda: mask,
        "scipy": lambda: sp.csr_matrix(mask),
        "torch_dense": lambda: torch.from_numpy(mask),
        "torch_coo": lambda: torch.from_numpy(mask).to_sparse(),
        "torch_csr": lambda: torch.from_numpy(mask).to_sparse_csr(),
    }
    expected = []
    for row, target in enumerate(targets):
        s = scores[row].astype(np.float64).copy()
        s[mask[row] & (np.arange(11) != target)] = -np.inf
        order = np.argsort(-s, kind="stable")  # brute force: the stable-sort position of the target
        expected.append(int(np.flatnonzero(order == target)[0]) + 1)
    got = rank_of_targets(scores, targets, forms[form](), chunk_size=3)
    assert got.tolist() == expected
    assert rank_of_targets(torch.from_numpy(scores), torch.from_numpy(targets), lists).tolist() == expected


def test_rank_rejects_nan_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rank_of_targets(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="targets"):
        rank_of_targets(SCORES, [0, 1])
    with pytest.raises(ValueError, match="outside"):
        rank_of_targets(SCORES, [0, 1, 5])


def test_topk_order_exclusion_and_padding() -> None:
    assert topk(SCORES, 3).tolist() == [[4, 1, 2], [0, 1, 2], [0, 1, 2]]
    assert topk(SCORES, 2, [[4], [0, 2], []]).tolist() == [[1, 2], [1, 3], [0, 1]]
    # Too few candidates: padded with -1, and an excluded item never appears even at -inf.
    scores = np.array([[-np.inf, 0.0, -np.inf]])
    assert topk(scores, 3, [[0]]).tolist() == [[1, 2, -1]]
    assert topk(scores, 4).tolist() == [[1, 0, 2, -1]]
    # Consistent with the ranks: the item at position r has rank r+1.
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(4, 9)).astype(float)
    exclude = [np.array([0, 5]), np.array([], dtype=int), np.array([8]), np.arange(4)]
    lists = topk(scores, 5, exclude, chunk_size=2)
    for pos in range(5):
        ranks = rank_of_targets(scores, lists[:, pos], exclude)
        assert ranks.tolist() == [pos + 1] * 4


def test_ranking_metrics_hand_values_and_k_boundaries() -> None:
    ranks = np.array([1, 2, 10, 11, 20, 21])
    m = ranking_metrics(ranks, ks=(10, 20))
    assert m["hit@10"] == m["recall@10"] == pytest.approx(3 / 6)  # rank 10 counts, 11 does not
    assert m["hit@20"] == pytest.approx(5 / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6)
    assert m["ndcg@20"] == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(21)) / 6
    )
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 6)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 20) / 6)
    assert set(ranking_metrics(ranks, ks=(5,))) == {"recall@5", "hit@5", "ndcg@5", "mrr@5", "mrr@10"}
    assert ranking_metrics([1], ks=(1,))["ndcg@1"] == 1.0
    with pytest.raises(ValueError):
        ranking_metrics([0, 1])


def test_ctr_metrics_match_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(0.3 * labels + rng.random(500) * 0.7, 0, 1)
    probs[:5] = [0.0, 1.0, 0.0, 1.0, 0.5]  # extremes: log loss must stay finite via clipping
    groups = rng.integers(0, 40, 500)
    m = ctr_metrics(labels, probs, groups)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["logloss"] == pytest.approx(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)))
    assert np.isfinite(m["logloss"])
    num = den = 0.0
    for g in np.unique(groups):
        sel = groups == g
        if len(np.unique(labels[sel])) == 2:
            num += sel.sum() * roc_auc_score(labels[sel], probs[sel])
            den += sel.sum()
    assert m["gauc"] == pytest.approx(num / den)


def test_gauc_hand_case() -> None:
    labels = [1, 0, 1, 0, 0, 1, 1, 1, 1, 0]
    probs = [0.9, 0.1, 0.2, 0.8, 0.1, 0.3, 0.4, 0.6, 0.5, 0.5]
    groups = ["a", "a", "b", "b", "b", "b", "c", "c", "d", "d"]
    # a: 1.0 (2 rows); b: positives 0.2, 0.3 vs negatives 0.8, 0.1 -> 2/4 = 0.5 (4 rows);
    # c: one class, skipped; d: a tie -> 0.5 (2 rows).
    assert ctr_metrics(labels, probs, groups)["gauc"] == pytest.approx((2 * 1.0 + 4 * 0.5 + 2 * 0.5) / 8)
    assert math.isnan(ctr_metrics(labels, probs)["gauc"])
    assert math.isnan(ctr_metrics([1, 1], [0.2, 0.3], ["a", "b"])["gauc"])


def test_catalogue_coverage() -> None:
    assert catalogue_coverage([[0, 1], [1, 2]], 5) == pytest.approx(3 / 5)
    assert catalogue_coverage(np.array([[0, -1], [0, 4]]), 5) == pytest.approx(2 / 5)  # -1 = padding


def test_intra_list_diversity_hand_case() -> None:
    features = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    c = 1 / math.sqrt(2)
    assert intra_list_diversity([[0, 1]], features) == pytest.approx(1.0)
    assert intra_list_diversity([[0, 2]], features) == pytest.approx(1 - c)
    assert intra_list_diversity([[0, 1, 2]], features) == pytest.approx(1 - (0 + c + c) / 3)
    # Averaged over lists; a one-item list has no pairs and is skipped; sparse features agree.
    expected = (1.0 + (1 - c)) / 2
    assert intra_list_diversity([[0, 1], [0, 2], [3]], features) == pytest.approx(expected)
    assert intra_list_diversity([[0, 1], [0, 2]], sp.csr_matrix(features)) == pytest.approx(expected)
    assert intra_list_diversity([[0, 0]], features) == pytest.approx(0.0)


def test_novelty_hand_case() -> None:
    counts = np.array([10, 5, 0])  # item 2 never seen: count clipped to 1
    value = novelty([[0, 1], [2, 1]], counts, n_users=10)
    assert value == pytest.approx(((0 + 1) / 2 + (math.log2(10) + 1) / 2) / 2)


def test_topk_by_threshold_matches_the_full_sort_with_ties_exclusions_and_minus_inf(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    cases = []
    for trial in range(100):
        n, items, k = int(rng.integers(1, 12)), int(rng.integers(1, 40)), int(rng.integers(0, 10))
        scores = rng.integers(0, 4, size=(n, items)).astype(np.float32)  # many ties
        if trial % 3 == 0:
            scores[rng.random(scores.shape) < 0.3] = -np.inf
        exclude = [rng.choice(items, size=int(rng.integers(0, items + 1)), replace=False) for _ in range(n)]
        cases.append((scores, k, exclude, topk(scores, k, exclude, chunk_size=5)))
    monkeypatch.setattr(metrics, "_top_by_threshold", lambda chunk, k: None)  # the full sort only
    for scores, k, exclude, fast in cases:
        assert np.array_equal(fast, topk(scores, k, exclude, chunk_size=5))
