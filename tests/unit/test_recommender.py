"""A saved bundle loads and answers recommend / rank / similar_items; unknown ids fail clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from m6rec.data.marts import DataContract
from m6rec.models.retrieval import collate, query_windows
from m6rec.serving.recommender import HistoryEvent, Recommender, UnknownItemError
from m6rec.text.textify import Profile
from tests.bundle_fixtures import build_tiny_bundle, mixed_queries, tiny_models


@pytest.fixture(scope="module", params=["lm", "frozen"])
def bundle(request, tmp_path_factory: pytest.TempPathFactory):
    """A bundle served by the tuned-LM models, then one served by the frozen-feature models."""
    path = build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model", kind=request.param)
    data, *_, retriever, ranker = tiny_models(request.param)
    return path, data, retriever


def test_bundle_layout_and_swap(bundle) -> None:
    path, _, _ = bundle
    assert {p.name for p in path.iterdir()} >= {
        "manifest.json",
        "items.parquet",
        "segments.pt",
        "retriever.pt",
        "ranker.pt",
        "encoder",
    }
    assert not list(path.parent.glob("model.tmp-*"))


def test_recommend_matches_the_trained_user_tower(bundle) -> None:
    path, data, retriever = bundle
    rec = Recommender(path, device="cpu")
    user0 = data.events[(data.events["user_idx"] == 0) & (data.events["split"] != "test")]
    history = [HistoryEvent(r.item_id, r.rating, int(r.ts)) for r in user0.itertuples()]
    windows, _, _ = query_windows(data, "test", 8)
    batch = collate(windows[:1])
    profile = Profile(age=20, gender="F", occupation="engineer")
    batch["profile_states"] = rec._profile_state(profile, rec.retriever)[None]
    with torch.no_grad():
        expected = (retriever.user_vectors(batch) @ retriever.item_vectors().T)[0].numpy()
    got = rec.retrieve_scores(history, Profile(age=20, gender="F", occupation="engineer"))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    top = rec.recommend(history, k=5, profile=Profile(age=20, gender="F", occupation="engineer"))
    assert len(top) == 5 and not {t.item_id for t in top} & {h.item_id for h in history}
    assert all(0.0 <= t.score <= 1.0 for t in top)  # re-ranked: like probabilities
    assert [t.score for t in top] == sorted((t.score for t in top), reverse=True)


def test_rank_similar_and_free_text(bundle) -> None:
    rec = Recommender(bundle[0], device="cpu")
    probs = rec.rank(
        [HistoryEvent("i1", 5.0, 100), HistoryEvent("i2", None, 200)], ["i3", "i4", "i5"], now_ts=300
    )
    assert probs.shape == (3,) and ((probs > 0) & (probs < 1)).all()
    similar = rec.similar_items("i3", k=4)
    assert len(similar) == 4 and "i3" not in {s.item_id for s in similar}
    by_text = rec.recommend([], k=3, query="Movie number 7")
    assert len(by_text) == 3
    text = rec.behaviour_text([HistoryEvent("i1", 5.0, 100)], "i3", Profile(age=30, gender="M"))
    assert "Movie number 1" in text and text.endswith("?") and "i1" not in text.split()


def test_unknown_ids_are_named(bundle) -> None:
    rec = Recommender(bundle[0], device="cpu")
    with pytest.raises(UnknownItemError, match="'nope'"):
        rec.recommend([HistoryEvent("nope")], k=3)
    with pytest.raises(UnknownItemError):
        rec.similar_items("missing")


def test_a_batch_scores_exactly_like_one_request_at_a_time(bundle) -> None:
    """The batched path (one retrieval and one ranking pass for all queries; what adaptive batching
    serves) gives each query the same items and scores as calling it alone."""
    rec = Recommender(bundle[0], device="cpu")
    queries = mixed_queries()
    batched = rec.recommend_batch(queries)
    for query, got in zip(queries, batched, strict=True):
        [alone] = rec.recommend_batch([query])
        assert [s.item_id for s in got] == [s.item_id for s in alone] and len(got) == query.k
        np.testing.assert_allclose([s.score for s in got], [s.score for s in alone], atol=1e-5)
    # rerank=0 returns the retrieval scores themselves (no ranker).
    raw = rec.retrieve_scores(queries[3].history)
    np.testing.assert_allclose(
        [s.score for s in batched[3]], [raw[rec.index[s.item_id]] for s in batched[3]], atol=1e-5
    )


def test_serving_reads_the_data_contract_from_the_manifest(tmp_path) -> None:
    """The CTR history length and the like rule come from the bundle's ``contract`` (what the marts were
    built with), not from constants in serving code; a bundle without one is refused by name."""
    contract = DataContract(
        like_threshold=4.0,
        ctr_history_length=2,
        dbt_vars={"like_threshold": 4, "ctr_history_length": 2},
        marts_fingerprint="abc123",
        marts_run_id="run-1",
        source="marts.build_info",
    )
    path = build_tiny_bundle(tmp_path / "model", contract=contract)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["contract"] == contract.to_dict()
    rec = Recommender(path, device="cpu")
    assert rec.contract == contract
    assert not rec.contract.is_like(4.0) and rec.contract.is_like(4.5) and rec.contract.is_like(None)
    # the ranker reads the last 2 events: what came before them changes nothing
    recent = [HistoryEvent("i5", 5.0, 500), HistoryEvent("i6", 2.0, 600)]
    longer = [HistoryEvent("i1", 1.0, 100), HistoryEvent("i2", 5.0, 200), *recent]
    candidates = ["i7", "i8", "i9"]
    np.testing.assert_allclose(
        rec.rank(recent, candidates, now_ts=700), rec.rank(longer, candidates, now_ts=700), atol=1e-6
    )
    default = Recommender(build_tiny_bundle(tmp_path / "default"), device="cpu")
    assert default.contract.ctr_history_length == 10 and default.contract.source == "defaults"
    assert not np.allclose(
        default.rank(recent, candidates, now_ts=700), default.rank(longer, candidates, now_ts=700), atol=1e-6
    )
    del manifest["contract"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest.json: the manifest has no 'contract'"):
        Recommender(path, device="cpu")
