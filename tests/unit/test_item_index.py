"""The ANN item index: recall against the exact scan, save/load, the size threshold, and a bundle that
serves from its index answering like the exact scan of the same bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m6rec.serving.item_index import (
    IndexConfig,
    ItemIndex,
    build_if_large,
    exact_top_k,
    probe_queries,
    recall_at_k,
)
from m6rec.serving.recommender import HistoryEvent, Recommender, RecommendQuery
from tests.bundle_fixtures import build_tiny_bundle, mixed_queries


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: the shape of real item embeddings (genres, eras)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    out = centres[rng.integers(0, 50, n)] + 0.6 * rng.normal(size=(n, dim))
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_recall_at_k_counts_the_shared_items() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(np.array([[4, 3, 2, 1], [5, 0, 0, 0]]), truth) == pytest.approx((4 + 1) / 8)


@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw"])
def test_the_index_reaches_its_recall_target_and_survives_save_and_load(tmp_path, kind: str) -> None:
    vectors = clustered(3000)
    index = ItemIndex.build(vectors, IndexConfig(kind=kind, target_recall=0.95, recall_queries=200))
    assert index.info["recall_at_10"] >= 0.95 and index.info["n_items"] == 3000
    queries = probe_queries(vectors, 100, seed=7)  # other queries than the build measured on
    scores, found = index.search(queries, 10)
    assert found.shape == (100, 10) and recall_at_k(found, exact_top_k(vectors, queries, 10)) >= 0.9
    np.testing.assert_allclose(scores[:, 0], (vectors[found[:, 0]] * queries).sum(1), rtol=1e-5)
    index.save(tmp_path / "index")
    for mmap in (False, True):
        again = ItemIndex.load(tmp_path / "index", mmap=mmap)
        assert again.info == index.info and again.info["kind"] == kind
        np.testing.assert_array_equal(again.search(queries, 10)[1], found)


def test_small_catalogues_are_scanned_exactly() -> None:
    spaces = [clustered(100), clustered(100, dim=16, seed=1)]
    assert build_if_large(spaces, IndexConfig(exact_below=101)) is None
    index = build_if_large(spaces, IndexConfig(exact_below=100, recall_queries=20))
    assert index is not None and index.info["parts"] == [32, 16] and index.info["dim"] == 48


def test_probe_queries_keep_one_part_or_all() -> None:
    queries = probe_queries(np.concatenate([clustered(200), clustered(200, 16, 1)], axis=1), 300, 0, [32, 16])
    norms = np.stack([np.linalg.norm(queries[:, :32], axis=1), np.linalg.norm(queries[:, 32:], axis=1)], 1)
    assert np.isin(norms.round(5), [0.0, 1.0]).all() and (norms.sum(1) > 0).all()
    assert {tuple(r) for r in norms.round(5)} == {(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)}


def test_probe_queries_take_their_first_part_from_user_vectors() -> None:
    items = np.concatenate([clustered(200), clustered(200, 16, 1)], axis=1)
    users = clustered(7, seed=2)
    queries = probe_queries(items, 30, 0, [32, 16], users)
    history = np.linalg.norm(queries[:, :32], axis=1) > 0
    rows = np.flatnonzero(history)
    np.testing.assert_allclose(queries[rows, :32], users[rows % 7], rtol=1e-5)
    with pytest.raises(ValueError, match="first part is 32"):
        probe_queries(items, 30, 0, [32, 16], users[:, :16])
    index = ItemIndex.build(items, IndexConfig(recall_queries=50), [32, 16], users)
    assert index.info["probe_users"] == 7
    by_parts = index.info["recall_at_10_by_query_parts"]  # each kind of request on its own
    assert set(by_parts) == {"parts 0", "parts 1", "parts 0+1"}
    assert index.info["recall_at_10"] == min(by_parts.values()) >= 0.97


@pytest.fixture(scope="module")
def ann_bundle(tmp_path_factory: pytest.TempPathFactory):
    """The tiny bundle with an ANN index although it has only 40 items."""
    config = IndexConfig(exact_below=1, recall_queries=40)
    return build_tiny_bundle(tmp_path_factory.mktemp("ann") / "model", index_config=config)


def test_the_bundle_ships_its_index_and_its_recall(ann_bundle, tmp_path) -> None:
    ann = json.loads((ann_bundle / "manifest.json").read_text())["item_index"]["ann"]
    assert (ann_bundle / "index" / "index.faiss").is_file()
    assert ann["n_items"] == 40 and ann["recall_at_10"] >= 0.97 and len(ann["parts"]) == 2
    assert ann["probe_users"] > 0  # tuned on the validation users' vectors, as served
    plain = build_tiny_bundle(tmp_path / "plain")
    manifest = json.loads((plain / "manifest.json").read_text())
    assert not (plain / "index").exists() and manifest["item_index"]["ann"] is None


def test_serving_from_the_index_answers_like_the_exact_scan(ann_bundle) -> None:
    """On 40 items the index finds every candidate, so recommendations, their scores (the ranker's and
    the retrieval's) and similar items must equal the exact scan's; this checks the candidate path
    (both spaces in one query, exclusion of seen items, exact re-scoring), not the index's recall."""
    ann = Recommender(ann_bundle, device="cpu")
    exact = Recommender(ann_bundle, device="cpu")
    exact.ann = None
    assert ann.ann is not None
    queries = mixed_queries()[:3] + [
        RecommendQuery([HistoryEvent("i9", 4.0)], k=5, query="a comedy", rerank=0),
        RecommendQuery([HistoryEvent("i9", 4.0)], k=5, rerank=0, exclude_seen=False),
    ]
    for got, want in zip(ann.recommend_batch(queries), exact.recommend_batch(queries), strict=True):
        assert [s.item_id for s in got] == [s.item_id for s in want]
        np.testing.assert_allclose([s.score for s in got], [s.score for s in want], atol=1e-5)
    assert "i1" not in {s.item_id for s in ann.recommend([HistoryEvent("i1", 5.0)], k=10)}
    got, want = ann.similar_items("i3", 5), exact.similar_items("i3", 5)
    assert [s.item_id for s in got] == [s.item_id for s in want]
    np.testing.assert_allclose([s.score for s in got], [s.score for s in want], atol=1e-5)
