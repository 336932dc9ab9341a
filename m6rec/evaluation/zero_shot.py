"""Zero-shot evaluation: held-out cold items (never in training, so no ID row), ranked from their text alone.

The cold items are the ``cold_items`` mart; under the dbt var ``zero_shot: true`` their interactions
never reach train/valid/test (split ``cold``). Each cold interaction's item is ranked among all cold
items from the user's earlier warm history. The reference points are random ranking and the content
baseline a practitioner would reach for (:func:`content_scores`: TF-IDF over each item's text, the
user's liked history as the query); models that need an item's ID or training interactions (Pop,
ItemKNN, SASRec) cannot rank these items at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import rank_of_targets
from m6rec.models.retrieval import Window, query_windows, score_windows
from m6rec.models.segments import rating_ids
from m6rec.text.textify import item_text

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


def zero_shot_report(
    retrievers: Mapping[str, nn.Module], data: RecData, ks: tuple[int, ...] = (10, 20, 50)
) -> dict:
    """HR@K of each retriever (its item tower from text) beside the content baseline and random
    ranking: ``{"n_cold_items", "n_cold_events", "rows": {row: {"hr@K": ...}}}``; empty without cold
    events (``zero_shot`` off)."""
    if not (data.events["split"] == "cold").any() or not data.items["is_cold"].any():
        return {}
    cold, windows, targets = cold_windows(data)
    scores = {
        row: score_windows(model, cold_windows(data, model.config.max_len)[1])[:, cold]
        for row, model in retrievers.items()
    }
    scores[CONTENT_ROW] = content_scores(data, windows)[:, cold]
    rows = {}
    for row, matrix in scores.items():
        ranks = rank_of_targets(matrix, targets, None)
        rows[row] = {f"hr@{k}": float(np.mean(ranks <= k)) for k in ks}
    rows[RANDOM_ROW] = {f"hr@{k}": min(1.0, k / len(cold)) for k in ks}
    return {"n_cold_items": int(len(cold)), "n_cold_events": int(len(targets)), "rows": rows}
