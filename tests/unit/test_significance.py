"""Which model serves: the paired bootstrap tests on the valid split, and the rule that a model tuning no
LM weight must lead the best fine-tuned LM by more than noise to serve in its place."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from m6rec.evaluation.offline import GATE_METRICS, EvaluationReport
from m6rec.evaluation.significance import ALPHA, _weighted_aucs, auc_lead_p, mean_lead_p


@pytest.fixture
def ctr_case():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 800)
    signal = labels + rng.normal(size=800)
    return labels, np.round(signal, 1), rng  # rounded: many tied scores


def test_weighted_auc_is_sklearns_under_any_weights(ctr_case) -> None:
    labels, scores, rng = ctr_case
    weights = np.vstack([np.ones(len(labels)), rng.poisson(1.0, len(labels))]).astype(float)
    got = _weighted_aucs(labels, scores, weights)
    assert got[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got[1] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights[1]), abs=1e-12)


def test_auc_lead_is_significant_only_when_real(ctr_case) -> None:
    labels, scores, rng = ctr_case
    noisy = scores + rng.normal(scale=3.0, size=len(scores))  # a much worse model on the same examples
    assert auc_lead_p(labels, scores, noisy) < 0.01
    assert auc_lead_p(labels, noisy, scores) > 0.99
    assert auc_lead_p(labels, scores, scores.copy()) == 1.0  # a tie is no lead
    # two equally good models: the one that happens to lead does so within noise
    a, b = (scores + rng.normal(scale=0.3, size=len(scores)) for _ in range(2))
    leader, other = (a, b) if roc_auc_score(labels, a) > roc_auc_score(labels, b) else (b, a)
    assert auc_lead_p(labels, leader, other) >= ALPHA
    # seeded, and a sample of the examples past max_examples
    assert auc_lead_p(labels, leader, other, seed=3) == auc_lead_p(labels, leader, other, seed=3)
    assert 0.0 <= auc_lead_p(labels, leader, other, max_examples=300) <= 1.0


def test_mean_lead_over_paired_users() -> None:
    gains = np.random.default_rng(1).random(500)
    assert mean_lead_p(gains + 0.01, gains) == 0.0  # every user better: always ahead
    assert mean_lead_p(gains, gains) == 1.0
    with pytest.raises(ValueError, match="paired"):
        mean_lead_p(gains, gains[:-1])
    with pytest.raises(ValueError, match="both classes"):
        auc_lead_p(np.ones(5), gains[:5], gains[:5])


def _report(valid: dict[str, dict[str, float]]) -> EvaluationReport:
    return EvaluationReport(valid=valid)


CTR = {"m6rec LM scorer": 0.8163, "m6rec segment ranker": 0.8174}


@pytest.mark.parametrize(
    ("p", "serves"), [(0.31, "m6rec LM scorer"), (0.01, "m6rec segment ranker")], ids=["noise", "real"]
)
def test_a_frozen_model_serves_only_on_a_real_lead(p: float, serves: str) -> None:
    asked = []

    def lead_p(task: str, leader: str, other: str) -> float:
        asked.append((task, leader, other))
        return p

    report = _report({"ctr": dict(CTR)})
    report.pick_winners({"m6rec LM scorer"}, lead_p)
    assert asked == [("ctr", "m6rec segment ranker", "m6rec LM scorer")]
    assert report.serving["ctr"] == serves
    assert report.validation[GATE_METRICS["ctr"]] == CTR[serves]  # the serving model's metric is gated
    assert f"p = {p:.3f}" in report.selection["ctr"]
    assert ("within noise" in report.selection["ctr"]) == (serves == "m6rec LM scorer")


def test_the_best_serves_when_it_is_the_lm_or_there_is_none() -> None:
    def never(*_):
        raise AssertionError("no test needed")

    lm_leads = _report({"ctr": {"m6rec LM scorer": 0.82, "m6rec segment ranker": 0.81}})
    lm_leads.pick_winners({"m6rec LM scorer"}, never)
    assert lm_leads.serving == {"ctr": "m6rec LM scorer"} and lm_leads.selection["ctr"] == "best on valid"
    no_lm = _report({"retrieval": {"a": 0.1, "b": 0.2}, "ctr": {}})
    no_lm.pick_winners(set(), never)
    assert no_lm.serving == {"retrieval": "b"} and no_lm.validation == {GATE_METRICS["retrieval"]: 0.2}
