"""The token-level ranker (``full`` profile): it learns, survives save/load, and the bundle serves it with
cached candidate states that give exactly the scores of the uncached training-time forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m6rec.models.backbones import tiny_encoder
from m6rec.models.late_interaction import (
    CandidateStates,
    TokenRankerConfig,
    example_segments,
    load_token_ranker,
    predict_token_ctr,
    save_token_ranker,
    segment_types,
    train_token_ranker,
)
from m6rec.serving.bundle import save_bundle
from m6rec.serving.recommender import HistoryEvent, Recommender
from m6rec.text.textify import Event, Profile, TextStyle, behaviour_segments
from m6rec.training.trainer import TrainConfig
from tests.bundle_fixtures import tiny_models
from tests.synthetic import ctr_frame, synthetic_rec_data

STYLE = TextStyle(with_popularity=True)
CONFIG = TokenRankerConfig(top_k=1, history=4, max_length=32, lr=2e-3, batch_size=16, max_steps=40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    data = synthetic_rec_data()
    examples = ctr_frame(data, history=5)
    cfg = TrainConfig(
        output_dir=str(tmp_path_factory.mktemp("run")),
        max_steps=CONFIG.max_steps,
        lr=CONFIG.lr,
        eval_every=20,
        metric="auc",
        patience=5,
        resume=False,
        progress=False,
    )
    scorer, result = train_token_ranker(data, tiny_encoder(seed=0), examples, CONFIG, cfg, STYLE)
    return data, examples, scorer, result


def test_every_encoder_weight_is_fine_tuned(trained) -> None:
    _, _, scorer, result = trained
    fresh = tiny_encoder(seed=0).model.state_dict()
    changed = [k for k, v in scorer.bert.state_dict().items() if not torch.equal(v, fresh[k])]
    assert result.steps > 0 and "auc" in result.history[-1]
    # The lower and the top layers both moved: token-level fine-tuning, not a frozen encoder.
    assert any(".layer.0." in k for k in changed) and any(".layer.3." in k for k in changed)


def test_it_learns_the_synthetic_rating_pattern(trained) -> None:
    # Labels are rating > 3 and ratings follow the item number, which is in the title: learnable.
    data, examples, scorer, _ = trained
    train = examples[examples["split"] == "train"]
    probs = predict_token_ctr(scorer, example_segments(train, data, STYLE, CONFIG.history), CONFIG.max_length)
    from m6rec.evaluation.metrics import ctr_metrics

    assert ctr_metrics(train["label"].to_numpy(), probs)["auc"] > 0.7


def test_segments_are_the_shared_behaviour_text(trained) -> None:
    data, examples, _, _ = trained
    [segments] = example_segments(examples.head(1), data, STYLE, history=2)
    assert segments[-1].startswith("Will ") and segments[-1].endswith("?")
    assert len(segments) == 1 + min(2, len(examples.iloc[0]["history_item_ids"])) + 1
    assert segment_types(len(segments)) == [0] + [1] * (len(segments) - 2) + [2]


def test_save_load_round_trip_scores_identically(trained, tmp_path) -> None:
    data, examples, scorer, _ = trained
    segments = example_segments(examples.head(12), data, STYLE, CONFIG.history)
    before = predict_token_ctr(scorer, segments, CONFIG.max_length)
    path = save_token_ranker(scorer, CONFIG, tmp_path / "token_ranker")
    loaded, config = load_token_ranker(path)
    assert config == CONFIG
    np.testing.assert_allclose(predict_token_ctr(loaded, segments, CONFIG.max_length), before, atol=1e-6)
    assert not list(tmp_path.glob("token_ranker.tmp-*"))


def test_candidate_states_round_trip(trained, tmp_path) -> None:
    data, _, scorer, _ = trained
    states = CandidateStates.build(scorer, data.item_texts()[:5], STYLE, CONFIG.max_length, batch_size=2)
    states.save(tmp_path / "c.pt")
    again = CandidateStates.load(tmp_path / "c.pt")
    for who in ("he", "she", "they"):
        for a, b in zip(states.get(who, [0, 4]), again.get(who, [0, 4]), strict=True):
            assert torch.equal(a, b)
    # A pronoun changes the question text, so the cached states differ.
    assert not torch.equal(states.get("he", [0])[0], states.get("she", [0])[0])


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory: pytest.TempPathFactory):
    data, _, scorer, _ = trained
    root = tmp_path_factory.mktemp("bundle")
    _, encoder, cache, _, specs, retriever, ranker = tiny_models("frozen")
    save_bundle(
        root / "model",
        data=data,
        cache=cache,
        encoder=encoder,
        retriever=retriever,
        retriever_spec=specs[0],
        ranker=ranker,
        ranker_spec=specs[1],
        style=STYLE,
        token_ranker_dir=save_token_ranker(scorer, CONFIG, root / "token_ranker"),
    )
    return root / "model"


def test_bundle_serves_the_token_ranker_with_cached_candidates(trained, bundle) -> None:
    data, _, scorer, _ = trained
    rec = Recommender(bundle, device="cpu")
    assert rec.ranker_kind == "token" and rec.manifest["token_ranker"]["top_k"] == 1
    history = [HistoryEvent("i3", 5.0, 1_000_000), HistoryEvent("i4", 2.0, 1_086_400)]
    profile = Profile(age=30, gender="F", occupation="writer")
    candidates = ["i5", "i9", "i17"]
    served = rec.rank(history, candidates, profile, now_ts=1_200_000)
    # Reference: the training-time forward pass over the full segment texts, nothing cached.
    texts = data.item_texts()
    events = [Event(item=texts[3], ts=1_000_000, rating=5.0), Event(item=texts[4], ts=1_086_400, rating=2.0)]
    examples = [
        behaviour_segments(
            profile, events, texts[int(c[1:])], 1_200_000, max_events=CONFIG.history, style=STYLE
        )
        for c in candidates
    ]
    reference = predict_token_ctr(scorer, examples, CONFIG.max_length)
    # float16 cached candidate states: equal up to half-precision rounding.
    np.testing.assert_allclose(served, reference, atol=2e-3)
    top = rec.recommend(history, k=3)
    assert len(top) == 3 and all(0.0 <= s.score <= 1.0 for s in top)
