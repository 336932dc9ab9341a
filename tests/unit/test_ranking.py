"""Late interaction equals the cross-encoder at k = L, caches item segments, and the CTR ranker learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from m6rec.models.backbones import tiny_encoder
from m6rec.models.late_interaction import LateInteractionScorer
from m6rec.models.ranking import (
    RankerConfig,
    TensorBatches,
    ctr_tensors,
    evaluate_ctr,
    new_ranker,
)
from m6rec.models.segments import (
    CANDIDATE,
    HISTORY,
    PROFILE,
    build_segment_cache,
    gaps_before,
    rating_ids,
)
from m6rec.training.trainer import TrainConfig, Trainer
from tests.synthetic import ctr_frame, synthetic_rec_data

SEGMENTS = [
    "A 24-year-old male technician.",
    "3 days ago he watched Heat (1995; Action) and rated it 5 stars.",
    "yesterday he watched Fargo (1996; Crime).",
    "Will he like Alien (1979; Horror, Sci-Fi)?",
]
TYPES = [PROFILE, HISTORY, HISTORY, CANDIDATE]


def _cross_encoder_reference(scorer: LateInteractionScorer) -> torch.Tensor:
    """Every layer over the concatenated segment embeddings: the full cross-encoder, written out."""
    tok = scorer.tokenizer(SEGMENTS, padding=False, truncation=True, max_length=64)
    embeds = [
        scorer.bert.embeddings(
            input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)
        )[0]
        for ids in tok["input_ids"]
    ]
    types = torch.cat([torch.full((len(e),), t) for e, t in zip(embeds, TYPES, strict=True)])
    hidden = torch.cat(embeds)[None] + scorer.segment_emb(types)[None]
    out = scorer.bert.encoder(hidden, attention_mask=None).last_hidden_state[0]
    return scorer.head(out[types == CANDIDATE].mean(0))[0]


def test_k_equals_l_is_the_cross_encoder() -> None:
    enc = tiny_encoder(seed=1)
    scorer = LateInteractionScorer(enc, top_k=enc.num_layers).eval()
    torch.nn.init.normal_(scorer.segment_emb.weight, std=0.1)
    with torch.no_grad():
        torch.testing.assert_close(scorer([SEGMENTS], [TYPES])[0], _cross_encoder_reference(scorer))


def test_smaller_k_differs_and_cached_candidates_give_the_same_scores() -> None:
    enc = tiny_encoder(seed=1)
    full = LateInteractionScorer(enc, top_k=enc.num_layers).eval()
    late = LateInteractionScorer(enc, top_k=1).eval()
    late.load_state_dict(full.state_dict())
    candidates = ["Will he like Alien (1979; Horror)?", "Will he like Toy Story (1995; Comedy)?"]
    with torch.no_grad():
        direct = late([SEGMENTS[:3] + [c] for c in candidates], [TYPES] * 2)
        cached = late.encode_segments(candidates)  # computed once, offline
        served = late.rank_candidates(SEGMENTS[:3], TYPES[:3], cached)
        assert not torch.allclose(direct, full([SEGMENTS[:3] + [c] for c in candidates], [TYPES] * 2))
    torch.testing.assert_close(direct, served)


def test_late_interaction_backward() -> None:
    scorer = LateInteractionScorer(tiny_encoder(seed=2), top_k=2).train()
    loss = scorer([SEGMENTS], [TYPES]).sum()
    loss.backward()
    assert scorer.segment_emb.weight.grad is not None and scorer.head.weight.grad is not None


def test_ctr_tensors_hold_each_example_history_as_written() -> None:
    data = synthetic_rec_data()
    frame = ctr_frame(data).head(30).copy()
    frame.at[0, "history_item_ids"], frame.at[0, "history_ratings"], frame.at[0, "history_ts"] = [], [], []
    frame.at[0, "history_length"] = 0
    frame.at[3, "history_ratings"] = [None, *frame.at[3, "history_ratings"][1:]]  # an unrated event
    tensors = ctr_tensors(frame, data)
    for i, row in enumerate(frame.itertuples(index=False)):
        k = len(row.history_item_ids)
        assert tensors["hist_items"][i, :k].tolist() == [data.item_index[x] for x in row.history_item_ids]
        assert (tensors["hist_items"][i, k:] == -1).all() and (tensors["hist_ratings"][i, k:] == 0).all()
        ratings = rating_ids(np.asarray(row.history_ratings, dtype=float))
        assert tensors["hist_ratings"][i, :k].tolist() == ratings.tolist()
        gaps = gaps_before(np.asarray(row.history_ts, dtype=np.int64), row.target_ts)
        assert tensors["hist_gaps"][i, :k].tolist() == gaps.tolist()
    assert tensors["hist_ratings"][3, 0] == rating_ids(np.array([np.nan]))[0]
    frame.at[5, "history_item_ids"] = ["no-such-item", *frame.at[5, "history_item_ids"][1:]]
    with pytest.raises(KeyError, match="no-such-item"):
        ctr_tensors(frame, data)


def test_segment_ranker_learns_likes(tmp_path) -> None:
    data = synthetic_rec_data()
    cache = build_segment_cache(tiny_encoder(seed=0), data)
    frame = ctr_frame(data)
    train = ctr_tensors(frame[frame["split"] == "train"], data)
    valid = ctr_tensors(frame[frame["split"] != "train"], data)
    assert train["hist_items"].shape[1] == 5 and (train["hist_items"] >= -1).all()
    torch.manual_seed(0)
    model = new_ranker(RankerConfig(dim=32, heads=2, dropout=0.0), data, cache)
    loader = DataLoader(TensorBatches(train), batch_size=32, shuffle=True)
    cfg = TrainConfig(
        output_dir=str(tmp_path), max_steps=120, lr=3e-3, eval_every=40, metric="auc", progress=False
    )
    result = Trainer(model, lambda m, b: m.loss(b), loader, lambda m: evaluate_ctr(m, valid), cfg).fit()
    # Likes are a function of the item (rating = 1 + item % 5): the ranker must find it.
    assert result.best_metric > 0.9


def test_train_examples_never_see_their_own_rating_in_the_item_mean() -> None:
    data = synthetic_rec_data()
    frame = ctr_frame(data)
    tensors = ctr_tensors(frame, data)
    train = data.events[data.events["split"] == "train"]
    for i in [0, 5, len(frame) - 1]:
        row = frame.iloc[i]
        ratings = train[train["item_id"] == row.target_item_id]["rating"]
        if row.split == "train":
            expected = (ratings.sum() - row.target_rating) / (len(ratings) - 1) if len(ratings) > 1 else None
        else:
            expected = ratings.mean()
        got = float(tensors["cand_mean"][i])
        assert (expected is None and got != got) or abs(got - expected) < 1e-5


def test_cached_item_vectors_score_the_same_and_training_drops_them() -> None:
    data = synthetic_rec_data()
    cache = build_segment_cache(tiny_encoder(seed=0), data)
    batch = ctr_tensors(ctr_frame(data), data)
    batch.pop("cand_mean")  # serving passes no per-example mean rating: the cached table applies
    torch.manual_seed(0)
    model = new_ranker(RankerConfig(dim=32, heads=2), data, cache).eval()
    with torch.no_grad():
        fresh = model(batch)
        model.cache_item_vectors()
        assert model._item_table is not None
        torch.testing.assert_close(model(batch), fresh)
    model.train()  # weights are about to change: the table must not outlive them
    assert model._item_table is None


def test_eval_scores_run_the_last_layer_for_the_candidate_alone_with_the_same_result() -> None:
    data = synthetic_rec_data()
    cache = build_segment_cache(tiny_encoder(seed=0), data)
    batch = ctr_tensors(ctr_frame(data), data)
    assert (batch["hist_items"] < 0).any() and (batch["hist_items"] >= 0).any()  # padded rows too
    torch.manual_seed(0)
    model = new_ranker(RankerConfig(dim=32, heads=2, layers=2), data, cache)
    with torch.no_grad():
        model.eval()
        fast = model(batch)
        model.encoder.layers[-1].linear2.weight[0].add_(0.5)  # the candidate-only path reads this layer
        moved = model(batch)
        model.encoder.layers[-1].linear2.weight[0].sub_(0.5)
        model.train()
        for module in model.modules():  # training mode without dropout: the whole encoder, every position
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(module, torch.nn.MultiheadAttention):
                module.dropout = 0.0
        whole = model(batch)
    torch.testing.assert_close(fast, whole, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(moved, whole, atol=1e-3)
