"""Zero-shot evaluation: held-out cold items (never in training, so no ID row), ranked from their text alone.

The cold items are the ``cold_items`` mart; under the dbt var ``zero_shot: true`` their interactions
never reach train/valid/test (split ``cold``).
"""

from __future__ import annotations

import numpy as np

from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import rank_of_targets
from m6rec.models.retrieval import SequentialRetriever, query_windows, score_windows


def zero_shot_report(
    retriever: SequentialRetriever, data: RecData, ks: tuple[int, ...] = (10, 50)
) -> dict[str, float]:
    """Held-out cold items (never in training, no ID row): each cold interaction's item ranked among all
    cold items from the user's earlier warm history; random ranking gets HR@K = K / n_cold."""
    cold = np.flatnonzero(data.items["is_cold"].to_numpy())
    if not len(cold) or not (data.events["split"] == "cold").any():
        return {}
    windows, targets, _ = query_windows(data, "cold", retriever.config.max_len)
    scores = score_windows(retriever, windows)[:, cold]
    position = {item: i for i, item in enumerate(cold)}
    ranks = rank_of_targets(scores, np.asarray([position[t] for t in targets]), None)
    text_scores = _history_text_similarity(retriever, windows)[:, cold]
    text_ranks = rank_of_targets(text_scores, np.asarray([position[t] for t in targets]), None)
    out = {"n_cold_items": float(len(cold)), "n_cold_events": float(len(targets))}
    for k in ks:
        out[f"hr@{k}"] = float(np.mean(ranks <= k))
        out[f"hr@{k}_untrained_text_similarity"] = float(np.mean(text_ranks <= k))
        out[f"hr@{k}_random"] = min(1.0, k / len(cold))
    return out


def _history_text_similarity(retriever: SequentialRetriever, windows) -> np.ndarray:
    """A training-free baseline: cosine of the mean history text state with each item's text state."""
    states = retriever.item_states.cpu().numpy()
    out = np.zeros((len(windows), states.shape[0]), dtype=np.float32)
    for i, w in enumerate(windows):
        if len(w.items):
            query = states[w.items].mean(0)
            out[i] = states @ (query / (np.linalg.norm(query) + 1e-12))
    return out
