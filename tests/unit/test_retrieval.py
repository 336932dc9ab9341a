"""Two-tower retriever over cached segments: shapes, learning, unseen items, evaluation protocol."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from m6rec.models.backbones import tiny_encoder
from m6rec.models.retrieval import (
    RetrieverConfig,
    collate,
    evaluate_retrieval,
    new_retriever,
    query_windows,
    training_windows,
)
from m6rec.models.segments import SegmentCache, build_segment_cache, gap_buckets, rating_ids
from m6rec.training.trainer import TrainConfig, Trainer
from tests.synthetic import synthetic_rec_data


def _setup(**cfg):
    data = synthetic_rec_data()
    cache = build_segment_cache(tiny_encoder(seed=0), data)
    torch.manual_seed(0)
    return data, cache, new_retriever(RetrieverConfig(dim=32, heads=2, max_len=8, **cfg), data, cache)


def test_features() -> None:
    assert rating_ids(np.array([1.0, 4.6, np.nan, 12])).tolist() == [1, 5, 11, 10]
    hours = 3600
    assert gap_buckets(np.array([0, 0, 3 * hours, 3 * hours + 1000 * hours])).tolist() == [0, 0, 2, 9]


def test_segment_cache_round_trip(tmp_path) -> None:
    data, cache, _ = _setup()
    assert cache.item_states.shape == (40, 32) and cache.profile_states.shape == (24, 32)
    torch.testing.assert_close(cache.item_states.norm(dim=-1), torch.ones(40))
    cache.save(tmp_path / "c.pt")
    torch.testing.assert_close(SegmentCache.load(tmp_path / "c.pt").item_states, cache.item_states)


def test_windows_cover_every_train_event_once_and_queries_follow_protocol() -> None:
    data = synthetic_rec_data()
    windows = training_windows(data, max_len=4)
    assert sum(len(w.items) for w in windows) == (data.events["split"] == "train").sum()
    assert max(len(w.items) for w in windows) == 4
    wins, targets, exclude = query_windows(data, "test", max_len=4)
    user0 = data.events[data.events["user_idx"] == 0]
    assert targets[0] == user0[user0["split"] == "test"]["item_idx"].item()
    assert len(exclude[0]) == 11  # train + valid events are the history of the test event
    assert wins[0].items.tolist() == user0["item_idx"].tolist()[7:11]


def _reference_windows(data, split, max_len):
    """Per-user frames, as the windows were first built: history events before the held-out one."""
    chosen = data.events[data.events["split"].isin(data.history_splits(split))]
    out = []
    for row in data.holdout(split).itertuples(index=False):
        frame = chosen[chosen["user_idx"] == row.user_idx]
        gaps = gap_buckets(frame["ts"].to_numpy())
        before = (frame["position"] < row.position).to_numpy()
        items = frame["item_idx"].to_numpy()[before]
        start = max(0, len(items) - max_len)
        out.append((row.user_idx, items[start:], gaps[before][start:], row.item_idx))
    return out


def test_array_windows_match_per_user_frames_including_interleaved_cold_events() -> None:
    data = synthetic_rec_data()
    events = data.events.copy()
    events["ts"] += events["user_idx"] * 365 * 86_400  # each user after the last: gaps never cross users
    events.loc[(events["user_idx"] % 3 == 0) & (events["position"] == 5), "split"] = "cold"  # mid-history
    events.loc[(events["user_idx"] == 1) & (events["split"] == "train"), "split"] = "cold"  # no train events
    data.events = events
    for split in ("valid", "test", "cold"):
        windows, targets, exclude = query_windows(data, split, max_len=20)
        reference = _reference_windows(data, split, 20)
        assert len(windows) == len(reference) > 0
        for window, target, seen, (user, items, gaps, item) in zip(
            windows, targets, exclude, reference, strict=True
        ):
            assert (window.user, target) == (user, item)
            assert window.items.tolist() == items.tolist() == seen[-20:].tolist()
            assert window.gaps.tolist() == gaps.tolist()
    train = training_windows(data, max_len=4)
    assert not any(w.user == 1 for w in train)
    assert sum(len(w.items) for w in train) == (data.events["split"] == "train").sum()


def test_loss_backward_and_unit_norm_scores() -> None:
    data, _, model = _setup()
    batch = collate(training_windows(data, 8)[:5])
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.item_proj.weight.grad is not None
    assert model.id_emb.weight.grad is not None
    scores = model.score(batch)
    assert scores.shape == (5, 40) and scores.abs().max() <= 1.0 + 1e-5


def test_unseen_item_scores_from_text_alone() -> None:
    data, _, model = _setup()
    model.has_id[3] = False
    with torch.no_grad():
        model.id_emb.weight[3] += 100.0
    model.eval()
    before = model.item_vectors()[3].clone()
    with torch.no_grad():
        model.id_emb.weight[3] -= 50.0
    torch.testing.assert_close(model.item_vectors()[3], before)  # the ID row is ignored


def test_training_learns_the_next_item_pattern(tmp_path) -> None:
    data, _, model = _setup(use_ids=True, id_dropout=0.0, dropout=0.0)
    untrained = evaluate_retrieval(model, data, "valid")
    loader = DataLoader(training_windows(data, 8), batch_size=16, shuffle=True, collate_fn=collate)
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=150, lr=3e-3, eval_every=50, progress=False)
    result = Trainer(
        model, lambda m, b: m.loss(b), loader, lambda m: evaluate_retrieval(m, data, "valid"), cfg
    ).fit()
    assert result.best_metric > untrained["ndcg@10"] + 0.3
    assert evaluate_retrieval(model, data, "test")["hit@10"] > 0.8


def test_in_batch_negatives_and_hard_negatives() -> None:
    data, _, full = _setup(dropout=0.0, id_dropout=0.0)
    batch = collate(training_windows(data, 8)[:4])
    _, _, in_batch = _setup(dropout=0.0, id_dropout=0.0, full_softmax_max_items=0)
    _, _, hard = _setup(dropout=0.0, id_dropout=0.0, full_softmax_max_items=0, hard_negatives=5)
    torch.manual_seed(0)
    loss_full, loss_batch, loss_hard = full.loss(batch), in_batch.loss(batch), hard.loss(batch)
    # Same weights (same seed): more negative classes can only raise the cross-entropy.
    assert loss_batch <= loss_hard + 1e-6 <= loss_full + 2e-6
    loss_hard.backward()
    assert hard.item_proj.weight.grad is not None
