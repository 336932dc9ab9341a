"""Zero-shot evaluation: held-out cold items (never in training, so no ID row), ranked from their text alone.

The cold items are the ``cold_items`` mart; under the dbt var ``zero_shot: true`` their interactions
never reach train/valid/test (split ``cold``). Each cold interaction's item is ranked among all cold
items from the user's earlier warm history — by each retriever's text item tower and, on a sample, by
M6-Rec's LM-likelihood form (:func:`likelihood_scores`). The reference points are random ranking and
the content baseline a practitioner would reach for (:func:`content_scores`: TF-IDF over each item's
text, the user's liked history as the query); models that need an item's ID or training interactions (Pop,
ItemKNN, SASRec) cannot rank these items at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from m6rec.data.marts import RecData, events_of
from m6rec.evaluation.metrics import rank_of_targets
from m6rec.models.backbones import CausalLM
from m6rec.models.generation import rank_candidates
from m6rec.models.retrieval import Window, query_windows, score_windows
from m6rec.models.segments import rating_ids
from m6rec.text.textify import TextStyle, item_text

CONTENT_ROW = "content TF-IDF KNN (baseline)"
RANDOM_ROW = "random"
LIKE_RATING = 4  # a history item rated at least this much describes the user in the content baseline


def cold_windows(data: RecData, max_len: int = 50) -> tuple[np.ndarray, list[Window], np.ndarray]:
    """The cold items' indices, each cold event's warm history window and its target's position among
    the cold items."""
    cold = np.flatnonzero(data.items["is_cold"].to_numpy())
    windows, targets, _ = query_windows(data, "cold", max_len)
    position = {item: i for i, item in enumerate(cold)}
    return cold, windows, np.asarray([position[t] for t in targets], dtype=np.int64)


def content_scores(data: RecData, windows: Sequence[Window]) -> np.ndarray:
    """``[len(windows), n_items]`` TF-IDF cosine of each user's liked history (every history item when
    none is liked) with every item's text (title words, year, genres and attributes). No training."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    texts = [item_text(t) for t in data.item_texts()]
    matrix = normalize(TfidfVectorizer(sublinear_tf=True).fit_transform(texts)).tocsr()
    liked_id = rating_ids(np.asarray([LIKE_RATING], dtype=float))[0]
    unrated = rating_ids(np.asarray([np.nan]))[0]
    out = np.zeros((len(windows), matrix.shape[0]), dtype=np.float32)
    for i, w in enumerate(windows):
        if not len(w.items):
            continue
        liked = w.items[(w.ratings >= liked_id) & (w.ratings != unrated)]
        query = np.asarray(matrix[liked if len(liked) else w.items].mean(axis=0))
        out[i] = (matrix @ normalize(query).ravel()).astype(np.float32)
    return out


def likelihood_scores(
    lm: CausalLM, data: RecData, cold: np.ndarray, events: pd.DataFrame, style: TextStyle
) -> np.ndarray:
    """M6-Rec's zero-shot form: for each cold event (``data.holdout("cold")`` rows), every cold item
    scored by the causal LM's length-normalised log-likelihood of "He will like <item>." after the
    user's behaviour text (the last 10 earlier events); ``[len(events), len(cold)]``."""
    texts, profiles = data.item_texts(), data.profiles()
    history = data.sequences(data.history_splits("cold"))
    candidates = [texts[i] for i in cold]
    out = np.zeros((len(events), len(cold)), dtype=np.float32)
    for i, row in enumerate(events.itertuples(index=False)):
        frame = history[row.user_idx]
        before = events_of(frame[frame["position"] < row.position].tail(10), texts)
        _, out[i] = rank_candidates(lm, profiles[row.user_idx], before, candidates, int(row.ts), style=style)
    return out


def zero_shot_report(
    retrievers: Mapping[str, nn.Module],
    data: RecData,
    ks: tuple[int, ...] = (10, 20, 50),
    *,
    lm: CausalLM | None = None,
    lm_events: int = 0,
    style: TextStyle | None = None,
    seed: int = 0,
) -> dict:
    """HR@K of each retriever (its item tower from text) beside the content baseline and random
    ranking: ``{"n_cold_items", "n_cold_events", "rows": {row: {"hr@K": ...}}}``; empty without cold
    events (``zero_shot`` off). With a causal ``lm``, M6-Rec's likelihood form ranks a seeded sample of
    ``lm_events`` cold events too (:func:`likelihood_scores`: costly, one LM pass per cold item), and
    ``"sample"`` holds every row's HR@K on that same sample."""
    if not (data.events["split"] == "cold").any() or not data.items["is_cold"].any():
        return {}
    cold, windows, targets = cold_windows(data)
    scores = {
        row: score_windows(model, cold_windows(data, model.config.max_len)[1])[:, cold]
        for row, model in retrievers.items()
    }
    scores[CONTENT_ROW] = content_scores(data, windows)[:, cold]

    def hit_rates(matrices: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        for row, matrix in matrices.items():
            ranks = rank_of_targets(matrix, targets[rows], None)
            out[row] = {f"hr@{k}": float(np.mean(ranks <= k)) for k in ks}
        out[RANDOM_ROW] = {f"hr@{k}": min(1.0, k / len(cold)) for k in ks}
        return out

    report = {
        "n_cold_items": int(len(cold)),
        "n_cold_events": int(len(targets)),
        "rows": hit_rates(scores, np.arange(len(targets))),
    }
    if lm is not None and lm_events > 0:
        picked = np.sort(
            np.random.default_rng(seed).choice(len(targets), min(lm_events, len(targets)), False)
        )
        events = data.holdout("cold").iloc[picked]
        sample = {row: matrix[picked] for row, matrix in scores.items()}
        sample[f"{lm.name} likelihood (zero-shot)"] = likelihood_scores(
            lm, data, cold, events, style or TextStyle(with_popularity=True)
        )
        report["sample"] = {"n_events": int(len(picked)), "seed": seed, "rows": hit_rates(sample, picked)}
    return report


def zero_shot_markdown(report: Mapping) -> str:
    """The zero-shot report as Markdown tables (all cold events, then the likelihood sample), one row
    per model, one HR@K column per K: the ``offline_evaluation`` asset's ``zero_shot`` metadata."""

    def table(rows: Mapping[str, Mapping[str, float]], title: str) -> list[str]:
        columns = list(next(iter(rows.values())))
        lines = [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row, m in rows.items():
            lines.append(f"| {row} | " + " | ".join(f"{m[c]:.4f}" for c in columns) + " |")
        return lines

    lines = table(
        report["rows"], f"zero-shot, {report['n_cold_events']} events on {report['n_cold_items']} cold items"
    )
    if "sample" in report:
        sample = report["sample"]
        lines += ["", *table(sample["rows"], f"seeded sample of {sample['n_events']} cold events")]
    return "\n".join(lines)
