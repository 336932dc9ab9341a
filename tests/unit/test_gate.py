"""The champion/challenger gate: both bundles scored on the same current data, and the rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from m6rec.evaluation.gate import SameDataEvaluation, clears_floor, decide, evaluate_same_data
from m6rec.serving.recommender import Recommender
from tests.bundle_fixtures import build_tiny_bundle
from tests.synthetic import ctr_frame, synthetic_rec_data

NDCG, AUC = "retrieval_valid_ndcg@10", "ctr_valid_auc"
FLOOR = {"retrieval": {"Pop": 0.05, "ItemKNN (tuned on valid)": 0.07}, "ctr": {"item mean": 0.70}}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recommender]:
    root = tmp_path_factory.mktemp("gate")
    a = build_tiny_bundle(root / "a", seed=0)
    b = build_tiny_bundle(root / "b", seed=1)
    # The same kind of bundle trained on another catalogue: none of the current item ids.
    other = Path(shutil.copytree(a, root / "other"))
    items = pd.read_parquet(other / "items.parquet")
    items["item_id"] = "other-" + items["item_id"].astype(str)
    items.to_parquet(other / "items.parquet")
    return {"a": Recommender(a, "cpu"), "b": Recommender(b, "cpu"), "other": Recommender(other, "cpu")}


def _against_champion(challenger_valid: dict[str, float], same_data: SameDataEvaluation):
    """The gate's decision when a champion exists and loads."""
    return decide(
        challenger_valid=challenger_valid,
        valid_baselines=FLOOR,
        same_data=same_data,
        champion_error=None,
        has_champion=True,
    )


def test_same_bundle_scores_the_same_and_is_promoted(bundles: dict[str, Recommender]) -> None:
    data = synthetic_rec_data()
    result = evaluate_same_data(bundles["a"], bundles["a"], data, ctr_frame(data))
    assert result.events == (data.events["split"] == "valid").sum() and result.coverage == 1.0
    assert result.ctr_examples > 0 and set(result.challenger) == {NDCG, AUC}
    assert result.challenger == result.champion
    decision = _against_champion({NDCG: 0.1}, result)
    assert decision.promote and decision.rule == "same data"


def test_two_bundles_are_compared_on_the_same_events(bundles: dict[str, Recommender]) -> None:
    data = synthetic_rec_data()
    result = evaluate_same_data(bundles["b"], bundles["a"], data, ctr_frame(data))
    assert result.challenger != result.champion  # different weights, same events
    swapped = evaluate_same_data(bundles["a"], bundles["b"], data, ctr_frame(data))
    assert swapped.challenger == result.champion and swapped.champion == result.challenger
    worse = result if result.challenger[NDCG] < result.champion[NDCG] else swapped
    decision = _against_champion({NDCG: 1.0}, worse)
    assert not decision.promote and "worse on the same" in decision.reason and NDCG in decision.reason


def test_champion_of_another_catalogue_cannot_serve(bundles: dict[str, Recommender]) -> None:
    data = synthetic_rec_data()
    result = evaluate_same_data(bundles["a"], bundles["other"], data, ctr_frame(data))
    assert result.coverage == 0.0 and result.catalogue_overlap == 0.0 and not result.champion
    good = {NDCG: 0.08, AUC: 0.75}
    decision = _against_champion(good, result)
    assert decision.promote and decision.rule == "champion cannot serve"
    assert "0% of the current valid events" in decision.reason
    below = _against_champion({NDCG: 0.06, AUC: 0.75}, result)
    assert not below.promote and below.rule == "challenger below floor"
    assert "0.0600 <= ItemKNN (tuned on valid) 0.0700" in below.reason


def test_floor_and_the_other_rules() -> None:
    assert clears_floor({NDCG: 0.08, AUC: 0.71}, FLOOR)[0]
    ok, lines = clears_floor({NDCG: 0.08, AUC: 0.69}, FLOOR)
    assert not ok and "ctr_valid_auc 0.6900 <= item mean 0.7000" in lines
    first = decide(
        challenger_valid={}, valid_baselines={}, same_data=None, champion_error=None, has_champion=False
    )
    assert first.promote and first.rule == "first model"
    broken = decide(
        challenger_valid={NDCG: 0.08},
        valid_baselines=FLOOR,
        same_data=None,
        champion_error="the champion bundle does not load: ValueError: format-2",
        has_champion=True,
    )
    assert broken.promote and "format-2" in broken.reason
    same = SameDataEvaluation(
        challenger={NDCG: 0.095, AUC: 0.80}, champion={NDCG: 0.10, AUC: 0.79}, events=900, coverage=0.95
    )
    kwargs = {"valid_baselines": FLOOR, "champion_error": None, "has_champion": True, "challenger_valid": {}}
    assert not decide(same_data=same, **kwargs).promote
    assert decide(same_data=same, tolerance=0.01, **kwargs).promote  # within tolerance
    # The decision is a function of recorded numbers: the same JSON gives the same answer.
    recorded = json.loads(json.dumps({**kwargs, "same_data": same.__dict__}))
    again = decide(**{**recorded, "same_data": SameDataEvaluation(**recorded["same_data"])})
    assert again == decide(same_data=same, **kwargs)


def test_a_challenger_whose_explanations_fail_the_check_is_not_promoted() -> None:
    same = SameDataEvaluation(challenger={NDCG: 0.11}, champion={NDCG: 0.10}, events=900, coverage=0.95)
    kwargs = {"valid_baselines": FLOOR, "champion_error": None, "has_champion": True, "challenger_valid": {}}
    caught = decide(same_data=same, explanations={"n": 40, "false_statement_rate": 0.075}, **kwargs)
    assert not caught.promote and caught.rule == "explanations fail the check"
    assert "7.5% of 40 checked valid explanations (> 5.0%)" in caught.reason
    first = {**kwargs, "has_champion": False}
    assert not decide(same_data=None, explanations={"n": 40, "false_statement_rate": 0.1}, **first).promote
    nothing_checked = {"n": 0, "false_statement_rate": float("nan")}
    assert not decide(same_data=same, explanations=nothing_checked, **kwargs).promote
    fine = decide(same_data=same, explanations={"n": 40, "false_statement_rate": 0.05}, **kwargs)
    assert fine.promote and fine.rule == "same data"
    assert decide(
        same_data=same,
        explanations={"n": 40, "false_statement_rate": 0.1},
        max_false_explanations=0.1,
        **kwargs,
    ).promote
    assert decide(same_data=same, explanations=None, **kwargs).promote  # no language-model explainer
