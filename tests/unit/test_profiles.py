"""Training profiles: every profile tunes the language model itself, and the ``full`` (GPU) profile's
code path — every encoder layer tuned over segment states, plus token-level fine-tuning — runs on a CPU
at tiny scale."""

from __future__ import annotations

from dataclasses import replace

import pytest

from m6rec.models.backbones import tiny_encoder
from m6rec.models.late_interaction import train_token_ranker
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_ranking import train_lm_ranker
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.text.textify import TextStyle
from m6rec.training.profiles import PROFILES, get_profile
from m6rec.training.trainer import TrainConfig
from tests.synthetic import ctr_frame, synthetic_rec_data


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_tunes_pretrained_lm_layers(name) -> None:
    profile = get_profile(name)
    assert profile.lm_retriever.tuning != "frozen" and profile.lm_retriever.pretrained
    assert profile.lm_ranker.tuning != "frozen" and profile.lm_ranker.pretrained
    assert 0 <= profile.lm_split(6) < 6
    with pytest.raises(ValueError, match="lm_top_layers"):
        replace(profile, lm_top_layers=7).lm_split(6)


def test_budgets_fall_back_to_the_profile_budget() -> None:
    default = get_profile("default")
    assert default.budget("lm_retriever") == default.budgets["lm_retriever"]
    assert default.budget("something_else") == default.budget_s
    assert get_profile("full").budget("lm_retriever") is None  # trained to convergence


def test_full_profile_code_path_on_a_tiny_encoder(tmp_path) -> None:
    full = get_profile("full")
    encoder = tiny_encoder(seed=0)
    data = synthetic_rec_data()
    split = full.lm_split(encoder.num_layers)
    assert split == 0  # every layer is tuned
    cache = build_lower_cache(encoder, data, TextStyle(with_popularity=True, with_watched_next=True), split)

    def config(name: str, metric: str) -> TrainConfig:
        return TrainConfig(str(tmp_path / name), max_steps=3, eval_every=3, metric=metric, progress=False)

    retriever, result = train_lm_retriever(
        data, cache, encoder.model, full.lm_retriever, config("r", "ndcg@10"), batch_size=8
    )
    counts = retriever.parameter_counts()
    every_layer = sum(p.numel() for p in encoder.model.encoder.layer.parameters())
    assert result.steps == 3 and counts["lm_trainable_parameters"] == every_layer
    examples = ctr_frame(data)
    ranker, result = train_lm_ranker(
        data, cache, encoder.model, examples, full.lm_ranker, config("k", "auc"), batch_size=16
    )
    assert result.steps == 3 and ranker.parameter_counts()["lm_trainable_parameters"] == every_layer
    token = replace(full.token_ranker, max_length=16, batch_size=4, max_train_examples=40)
    scorer, result = train_token_ranker(
        data, encoder, examples, token, config("t", "auc"), TextStyle(with_popularity=True)
    )
    assert result.steps == 3
