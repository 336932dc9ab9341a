"""What the stages hand each other: a trained model or an evaluation made from other marts than the
published ones is refused, naming it, so one bundle never mixes two generations of data."""

from __future__ import annotations

from dataclasses import replace

import pytest

from m6rec.data.marts import DataContract
from orchestration.stages import StaleModelError, check_same_marts
from tests.synthetic import synthetic_rec_data


def _data(fingerprint: str | None):
    return replace(synthetic_rec_data(), contract=DataContract(marts_fingerprint=fingerprint))


def test_same_marts_pass_and_unrecorded_ones_are_not_compared() -> None:
    check_same_marts("lm_retriever", "abc", _data("abc"))
    check_same_marts("lm_retriever", None, _data("abc"))  # a model saved before fingerprints existed
    check_same_marts("lm_retriever", "abc", _data(None))  # marts without a build record (tests)


def test_a_model_from_replaced_marts_is_refused_by_name() -> None:
    with pytest.raises(StaleModelError, match="lm_retriever was made from marts abc, but the published"):
        check_same_marts("lm_retriever", "abc", _data("def"))
