"""Zero-shot evaluation: cold items ranked among cold items by each retriever's text item tower, beside
the content baseline (TF-IDF over item text) and random ranking."""

from __future__ import annotations

import numpy as np
import torch

from m6rec.evaluation.zero_shot import (
    CONTENT_ROW,
    RANDOM_ROW,
    content_scores,
    zero_shot_markdown,
    zero_shot_report,
)
from m6rec.models.backbones import tiny_causal_lm, tiny_encoder
from m6rec.models.retrieval import RetrieverConfig, Window, new_retriever
from m6rec.models.segments import build_segment_cache, rating_ids
from tests.synthetic import synthetic_rec_data


def _cold_data(cold_items=(5, 6, 7, 8)):
    data = synthetic_rec_data()
    data.items["is_cold"] = data.items["item_idx"].isin(cold_items)
    cold_events = data.events["item_idx"].isin(cold_items)
    data.events.loc[cold_events, "split"] = "cold"
    return data, int(cold_events.sum())


def test_report_rows_for_every_model_the_content_baseline_and_random() -> None:
    data, n_cold_events = _cold_data()
    cache = build_segment_cache(tiny_encoder(seed=0), data)
    torch.manual_seed(0)
    model = new_retriever(RetrieverConfig(dim=32, heads=2, max_len=8), data, cache).eval()
    report = zero_shot_report({"tiny": model}, data, ks=(1, 2))
    assert report["n_cold_items"] == 4 and report["n_cold_events"] == n_cold_events
    assert set(report["rows"]) == {"tiny", CONTENT_ROW, RANDOM_ROW}
    assert report["rows"][RANDOM_ROW] == {"hr@1": 0.25, "hr@2": 0.5}
    for row in report["rows"].values():
        assert 0.0 <= row["hr@1"] <= row["hr@2"] <= 1.0
    lm = tiny_causal_lm(seed=0)
    sampled = zero_shot_report({"tiny": model}, data, ks=(1, 2), lm=lm, lm_events=5)
    assert sampled["rows"] == report["rows"] and sampled["sample"]["n_events"] == 5
    likelihood = f"{lm.name} likelihood (zero-shot)"
    assert set(sampled["sample"]["rows"]) == {"tiny", CONTENT_ROW, RANDOM_ROW, likelihood}
    assert 0.0 <= sampled["sample"]["rows"][likelihood]["hr@2"] <= 1.0
    table = zero_shot_markdown(sampled)
    assert "| seeded sample of 5 cold events | hr@1 | hr@2 |" in table
    assert f"| {likelihood} | " in table and table.count(f"| {CONTENT_ROW} | ") == 2
    data.events["split"] = data.events["split"].replace("cold", "train")
    assert zero_shot_report({"tiny": model}, data) == {}  # zero_shot off: nothing to rank


def test_content_baseline_follows_the_liked_history() -> None:
    data = synthetic_rec_data()  # genres cycle Action, Comedy, Drama, Horror by item index
    liked_action = Window(0, np.array([0, 4, 1]), rating_ids(np.array([5.0, 5.0, 1.0])), np.zeros(3, int))
    scores = content_scores(data, [liked_action])[0]
    action, comedy = scores[8], scores[9]  # neither in the history; 8 is Action, 9 Comedy
    assert action > comedy
    empty = content_scores(data, [Window(0, np.array([], dtype=int), np.array([], int), np.array([], int))])
    assert not empty.any()
