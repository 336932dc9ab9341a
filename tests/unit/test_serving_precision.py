"""The served CTR scorer in bfloat16: the scorer's arithmetic, the bundle's check, and the rule that picks
what the service runs in (tiny random encoder, synthetic data)."""

from __future__ import annotations

import pytest
import torch

from m6rec.models.backbones import tiny_encoder
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_ranking import LMRanker, LMRankerConfig, new_lm_ranker
from m6rec.models.ranking import RankerConfig, ctr_tensors, new_ranker, predict_ctr
from m6rec.serving import precision
from m6rec.serving.precision import MAX_AUC_CHANGE, bf16_check, pick_scoring_dtype
from m6rec.text.textify import TextStyle
from tests.synthetic import ctr_frame, synthetic_rec_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    encoder = tiny_encoder(seed=0)
    data = synthetic_rec_data()
    return encoder, data, build_lower_cache(encoder, data, TextStyle(with_popularity=True), split=2)


def scorer(setup) -> LMRanker:
    """A fresh tiny LM scorer (the tests change its arithmetic)."""
    encoder, data, cache = setup
    torch.manual_seed(0)
    return new_lm_ranker(LMRankerConfig(history=5), data, cache, encoder.model).eval()


def candidate_batch(data, n: int = 8) -> dict[str, torch.Tensor]:
    """One request's context with ``n`` catalogue items as candidates (what serving scores)."""
    one = ctr_tensors(ctr_frame(data).iloc[[7]], data)
    batch = {k: v.expand(n, *v.shape[1:]).clone() for k, v in one.items() if k != "cand_mean"}
    batch["cand_items"] = torch.arange(n)
    return batch


def test_bf16_scorer_stays_close_to_float32_on_both_paths(setup) -> None:
    _, data, _ = setup
    model = scorer(setup)
    model.cache_item_vectors()
    batch = candidate_batch(data)
    with torch.no_grad():
        full = model(batch)
        model.set_scoring_dtype(torch.bfloat16)
        assert model.top.dtype == torch.bfloat16
        assert all(t.dtype == torch.bfloat16 for t in model._candidate_projections[1:])  # re-cached in it
        served, forward = model.rank_candidates(batch), model(batch)
    assert served.dtype == forward.dtype == torch.float32  # the head reads float32
    torch.testing.assert_close(served, full, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(forward, full, atol=3e-2, rtol=3e-2)
    assert not torch.equal(served, full)  # it really ran in bfloat16
    # the embeddings, the head and the catalogue tables stay float32: only the top layers change
    assert model.head.weight.dtype == model.item_states.dtype == model.pos_emb.weight.dtype == torch.float32


def test_check_scores_valid_both_ways_and_leaves_the_scorer_as_it_was(setup) -> None:
    _, data, _ = setup
    model = scorer(setup)
    valid = ctr_tensors(ctr_frame(data), data)
    before = predict_ctr(model, valid)
    check = bf16_check(model, valid)
    assert model.top.dtype == torch.float32
    assert (predict_ctr(model, valid) == before).all()
    assert check["dtype"] == "bf16" and check["split"] == "valid" and check["examples"] == len(before)
    assert check["auc_change"] == pytest.approx(check["bf16_auc"] - check["fp32_auc"], abs=2e-6)
    assert 0 < check["max_abs_probability_change"] < 0.05
    assert check["accepted"] == (abs(check["auc_change"]) <= MAX_AUC_CHANGE)


def test_check_samples_large_validation_sets(setup, monkeypatch) -> None:
    _, data, _ = setup
    monkeypatch.setattr(precision, "MAX_CHECK_EXAMPLES", 10)
    check = bf16_check(scorer(setup), ctr_tensors(ctr_frame(data), data))
    assert check["examples"] == 10


ACCEPTED = {"accepted": True, "auc_change": 0.0001, "fp32_auc": 0.8, "bf16_auc": 0.8001}


@pytest.mark.parametrize(
    ("setting", "check", "native", "dtype", "reason"),
    [
        ("auto", ACCEPTED, True, torch.bfloat16, "auto: valid AUC 0.8001 in bfloat16 vs 0.8"),
        ("auto", ACCEPTED, False, torch.float32, "no native bfloat16"),
        ("auto", None, True, torch.float32, "no bfloat16 check"),
        ("auto", {**ACCEPTED, "accepted": False, "auc_change": -0.004}, True, torch.float32, "by -0.004"),
        ("fp32", ACCEPTED, True, torch.float32, "M6REC_PRECISION=fp32"),
        ("bf16", None, False, torch.bfloat16, "forced"),
    ],
)
def test_the_rule_that_picks_the_served_arithmetic(
    setup, monkeypatch, setting, check, native, dtype, reason
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    picked, why = pick_scoring_dtype(setting, scorer(setup), check, CPU)
    assert picked == dtype and reason in why


def test_the_segment_ranker_has_a_bf16_path_too_and_other_models_stay_float32(setup) -> None:
    _, data, cache = setup
    torch.manual_seed(0)
    segment = new_ranker(RankerConfig(dim=32, heads=2), data, cache.sentences()).eval()
    valid = ctr_tensors(ctr_frame(data), data)
    check = bf16_check(segment, valid)
    assert (
        0 < check["max_abs_probability_change"] < 0.05
        and segment.encoder.layers[0].linear1.weight.dtype == torch.float32
    )
    assert pick_scoring_dtype("bf16", segment, None, CPU)[0] == torch.bfloat16
    assert pick_scoring_dtype("bf16", torch.nn.Linear(2, 1), ACCEPTED, CPU) == (
        torch.float32,
        "the serving CTR model (Linear) runs in float32 only",
    )
    with pytest.raises(ValueError, match="M6REC_PRECISION='half': use one of auto, fp32, bf16"):
        pick_scoring_dtype("half", scorer(setup), ACCEPTED, CPU)
