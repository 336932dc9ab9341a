"""The seeded log generator: what it writes reads back through the generic format, and the logs have
the shape its docstring promises (heavy-tailed popularity, repeat-free histories over months, drift)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m6rec.data.generator import LogSpec, generate_log
from m6rec.data.sources import read_source

SPEC = LogSpec(events=20_000, users=300, items=1_000, seed=3)


def _drift(log) -> float:
    """Mean total-variation distance between the first-half and second-half genre histograms (every genre
    of every item met) of the users with long histories (short ones are mostly sampling noise)."""
    genres = log.items.set_index("item_id")["genres"].str.split("|")
    frame = log.interactions.sort_values(["user_id", "timestamp"], kind="stable").copy()
    size = frame.groupby("user_id")["item_id"].transform("size")
    frame["late"] = frame.groupby("user_id").cumcount() >= size / 2
    frame = frame[size >= 100].assign(genre=lambda f: f["item_id"].map(genres)).explode("genre")
    hist = frame.groupby(["user_id", "late"])["genre"].value_counts(normalize=True).unstack(fill_value=0.0)
    early, late = hist.xs(False, level="late"), hist.xs(True, level="late")
    return float((early - late).abs().sum(axis=1).mean() / 2)


def test_written_logs_read_back_through_the_generic_format(tmp_path: Path) -> None:
    log = generate_log(SPEC)
    raw = read_source(log.write(tmp_path / "logs"))
    assert len(raw.ratings) == len(log.interactions) and len(raw.items) == SPEC.items
    assert len(raw.users) == SPEC.users and set(raw.ratings["rating"].unique()) <= {1, 2, 3, 4, 5}


def test_seeded_and_shaped_like_a_real_log() -> None:
    log = generate_log(SPEC)
    pd.testing.assert_frame_equal(log.interactions, generate_log(SPEC).interactions)
    assert not log.interactions.equals(generate_log(LogSpec(**{**SPEC.__dict__, "seed": 4})).interactions)
    inter = log.interactions
    assert 0.8 * SPEC.events <= len(inter) <= SPEC.events  # a target: heavy users run out of distinct items
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert inter.groupby("user_id").size().min() >= SPEC.min_events
    counts = inter["item_id"].value_counts()
    assert counts.iloc[: SPEC.items // 10].sum() / len(inter) > 0.3  # the top 10 % of items: a head
    days = (inter["timestamp"].max() - inter["timestamp"].min()) / 86_400
    assert 6 * 30 < days <= SPEC.months * 30
    gaps = inter.sort_values(["user_id", "timestamp"]).groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps < 3600).mean() > 0.5 and (gaps > 86_400).mean() > 0.05  # sessions, then days apart


def test_tastes_drift_over_each_history() -> None:
    drifting = _drift(generate_log(SPEC))
    steady = _drift(generate_log(LogSpec(**{**SPEC.__dict__, "drift": False})))
    assert drifting > steady + 0.05, (drifting, steady)  # measured 0.30 vs 0.19


def test_impossible_sizes_are_refused_with_the_values() -> None:
    with pytest.raises(ValueError, match=r"events \(10\) must be at least users \(5\) x min_events \(5\)"):
        LogSpec(events=10, users=5, items=100)
    with pytest.raises(ValueError, match=r"items \(6\) must be at least twice min_events"):
        LogSpec(events=100, users=5, items=6)
    assert np.isfinite(SPEC.zipf)
