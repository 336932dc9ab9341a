"""Offline metrics: full-ranking accuracy, CTR quality and beyond-accuracy measures of top-K lists.

Ranking follows RecBole's full-sort evaluation: every catalogue item is a candidate, items already
in the user's history are excluded (the target never is), and ties are broken by item index as a
stable sort would, so a constant scorer cannot look good by luck.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import normalize

Scores = np.ndarray | torch.Tensor
"""A [n_users, n_items] score matrix; higher is better."""
Exclusion = Sequence[np.ndarray] | np.ndarray | sp.spmatrix | sp.sparray | torch.Tensor | None
"""Items to exclude per row: a list of item-index arrays, a [n, n_items] bool mask (numpy, scipy
sparse, or torch dense/sparse), or None."""


def _exclusion_csr(exclude: Exclusion, n_rows: int, n_items: int) -> sp.csr_array | None:
    """Normalise every accepted exclusion form to one CSR pattern, so chunks slice cheaply."""
    if exclude is None:
        return None
    if isinstance(exclude, torch.Tensor):
        if exclude.layout == torch.sparse_coo:
            coo = exclude.coalesce()
            rows, cols = coo.indices().cpu().numpy()
            mask = sp.csr_array((coo.values().cpu().numpy().astype(bool), (rows, cols)), shape=coo.shape)
        elif exclude.layout == torch.sparse_csr:
            mask = sp.csr_array(
                (
                    exclude.values().cpu().numpy().astype(bool),
                    exclude.col_indices().cpu().numpy(),
                    exclude.crow_indices().cpu().numpy(),
                ),
                shape=exclude.shape,
            )
        else:
            mask = sp.csr_array(exclude.cpu().numpy().astype(bool))
    elif sp.issparse(exclude):
        mask = sp.csr_array(exclude).astype(bool)
    elif isinstance(exclude, np.ndarray) and exclude.ndim == 2 and exclude.dtype == bool:
        mask = sp.csr_array(exclude)
    else:
        if len(exclude) != n_rows:
            raise ValueError(f"exclude has {len(exclude)} rows, scores have {n_rows}")
        lists = [np.asarray(row, dtype=np.int64).ravel() for row in exclude]
        indptr = np.r_[0, np.cumsum([len(row) for row in lists])]
        indices = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(f"exclude holds item indices outside [0, {n_items})")
        mask = sp.csr_array((np.ones(len(indices), dtype=bool), indices, indptr), shape=(n_rows, n_items))
    if mask.shape != (n_rows, n_items):
        raise ValueError(f"exclude mask has shape {mask.shape}, scores have {(n_rows, n_items)}")
    mask.eliminate_zeros()
    return mask


def _masked_chunk(
    scores: torch.Tensor, mask: sp.csr_array | None, start: int, stop: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows [start, stop) as a float copy with excluded items at -inf (except ``keep[row]``)."""
    chunk = scores[start:stop]
    chunk = chunk.clone() if chunk.is_floating_point() else chunk.double()
    if torch.isnan(chunk).any():
        raise ValueError("scores contain NaN; ranks would be undefined")
    if mask is not None:
        sub = mask[start:stop]
        rows = np.repeat(np.arange(stop - start), np.diff(sub.indptr))
        rows_t = torch.as_tensor(rows, device=chunk.device)
        cols_t = torch.as_tensor(sub.indices.astype(np.int64), device=chunk.device)
        if keep is not None:
            drop = cols_t != keep[rows_t]
            rows_t, cols_t = rows_t[drop], cols_t[drop]
        chunk[rows_t, cols_t] = float("-inf")
    return chunk


def rank_of_targets(
    scores: Scores, targets: np.ndarray | torch.Tensor, exclude: Exclusion = None, chunk_size: int = 1024
) -> np.ndarray:
    """1-based rank of each row's target among all items, history excluded, ties by item index.

    rank = #items scored strictly higher + #items scored equal with a smaller index + 1. Works on
    the scores' device (CPU or CUDA) in row chunks so memory stays bounded.
    """
    scores_t = torch.as_tensor(scores).detach()
    if scores_t.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_users, n_items], got shape {tuple(scores_t.shape)}")
    n_rows, n_items = scores_t.shape
    targets_t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
    targets_t = targets_t.to(device=scores_t.device, dtype=torch.int64).ravel()
    if len(targets_t) != n_rows:
        raise ValueError(f"{len(targets_t)} targets for {n_rows} score rows")
    if n_rows and (targets_t.min() < 0 or targets_t.max() >= n_items):
        raise ValueError(f"targets outside [0, {n_items})")
    mask = _exclusion_csr(exclude, n_rows, n_items)
    item_idx = torch.arange(n_items, device=scores_t.device)
    ranks = []
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        tgt = targets_t[start:stop]
        chunk = _masked_chunk(scores_t, mask, start, stop, keep=tgt)
        target_score = chunk.gather(1, tgt[:, None])
        higher = (chunk > target_score).sum(1)
        tied_before = ((chunk == target_score) & (item_idx[None, :] < tgt[:, None])).sum(1)
        ranks.append((higher + tied_before + 1).cpu())
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def ranks_in_chunks(
    score_rows: Callable[[int, int], Scores],
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    chunk: int = 1024,
) -> np.ndarray:
    """:func:`rank_of_targets` for rows scored ``chunk`` at a time by ``score_rows(start, stop)``:
    memory stays at ``chunk × n_items`` scores however many users are ranked."""
    ranks = [
        rank_of_targets(
            score_rows(i, min(i + chunk, len(targets))), targets[i : i + chunk], exclude[i : i + chunk]
        )
        for i in range(0, len(targets), chunk)
    ]
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def _top_by_threshold(chunk: torch.Tensor, k: int) -> torch.Tensor | None:
    """The rows' top ``k`` (score descending, ties by item index) without sorting the catalogue: every
    item scoring at least a row's k-th score is among the ``m`` largest (``m`` = the most such items in
    any row), and only those are put in order. None when some k-th score is -inf, where excluded items
    and genuine -inf scores must be told apart (the full sort does that)."""
    if k == 0:
        return torch.zeros((len(chunk), 0), dtype=torch.int64)
    kth = torch.topk(chunk, k, dim=1).values[:, -1:]
    if bool(torch.isneginf(kth).any()):
        return None
    m = int((chunk >= kth).sum(dim=1).max())
    values, indices = torch.topk(chunk, m, dim=1)
    indices, by_index = indices.sort(dim=1)  # ties by item index ...
    values = values.gather(1, by_index)
    by_score = values.sort(dim=1, descending=True, stable=True).indices  # ... kept by the stable sort
    return indices.gather(1, by_score)[:, :k]


def topk(scores: Scores, k: int, exclude: Exclusion = None, chunk_size: int = 1024) -> np.ndarray:
    """Top-``k`` item indices per row, best first, history excluded, ties by item index.

    Same order as :func:`rank_of_targets`. Rows with fewer than ``k`` candidates are padded with -1.
    """
    scores_t = torch.as_tensor(scores).detach()
    n_rows, n_items = scores_t.shape
    k_eff = min(k, n_items)
    mask = _exclusion_csr(exclude, n_rows, n_items)
    out = []
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        chunk = _masked_chunk(scores_t, mask, start, stop)
        fast = _top_by_threshold(chunk, k_eff)
        if fast is not None:
            out.append(fast.cpu())
            continue
        order = torch.sort(chunk, dim=1, descending=True, stable=True).indices
        top = order
        if mask is not None:
            flags = torch.as_tensor(mask[start:stop].toarray(), device=chunk.device).gather(1, order)
            # A stable sort on the flag keeps the score order among candidates and moves excluded
            # items (which may tie with genuine -inf scores) behind them, where they become -1.
            perm = torch.sort(flags.to(torch.int8), dim=1, stable=True).indices
            top = torch.where(flags.gather(1, perm), -1, order.gather(1, perm))
        out.append(top[:, :k_eff].cpu())
    result = torch.cat(out).numpy() if out else np.zeros((0, k_eff), dtype=np.int64)
    if k_eff < k:
        result = np.pad(result, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return result


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Recall/Hit/NDCG/MRR@K from 1-based target ranks (one target per user, as in leave-one-out).

    With a single target Recall@K equals Hit@K; both are reported so tables line up with RecBole.
    MRR@10 is always included.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to summarise")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based")
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"hit@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    if "mrr@10" not in out:
        out["mrr@10"] = float(np.where(ranks <= 10, 1.0 / ranks, 0.0).mean())
    return out


def ndcg_gains(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k of one held-out target from its 1-based rank (0 past ``k``): their mean is
    :func:`ranking_metrics`' ``ndcg@k``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def ndcg_ci95(ranks: np.ndarray, k: int = 10) -> float:
    """Half-width of the normal 95% confidence interval of mean NDCG@k over the evaluated users: what a
    sampled evaluation can tell apart."""
    gains = ndcg_gains(ranks, k)
    return float(1.96 * gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("nan")


def sample_users(user_ids: Sequence[str], max_users: int | None, seed: int = 0) -> set[str] | None:
    """A seeded sample of ``max_users`` of ``user_ids`` (every model of a run is evaluated on the same
    one), or None (all of them) when there are no more than that."""
    unique = np.unique(np.asarray(user_ids, dtype=str))
    if max_users is None or len(unique) <= max_users:
        return None
    return set(np.random.default_rng(seed).choice(unique, size=max_users, replace=False).tolist())


def _group_auc(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> float:
    """Size-weighted mean AUC over groups holding both classes (the Mann-Whitney form of AUC,
    vectorised over groups; average ranks give ties half credit, exactly as roc_auc_score)."""
    frame = pd.DataFrame({"g": groups, "y": labels, "p": probs})
    stats = frame.groupby("g", sort=False)["y"].agg(n="size", pos="sum")
    stats = stats[(stats["pos"] > 0) & (stats["pos"] < stats["n"])]
    if stats.empty:
        return float("nan")
    frame = frame[frame["g"].isin(stats.index)]
    rank = frame.groupby("g", sort=False)["p"].rank(method="average")
    pos_rank_sum = rank[frame["y"] == 1].groupby(frame["g"]).sum().reindex(stats.index)
    n_pos, n_neg = stats["pos"], stats["n"] - stats["pos"]
    auc = (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float((auc * stats["n"]).sum() / stats["n"].sum())


def ctr_metrics(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None = None, eps: float = 1e-7
) -> dict[str, float]:
    """AUC, GAUC (per-group AUC weighted by group size; NaN without groups) and clipped log loss.

    GAUC skips groups with a single class, where AUC is undefined. AUC is NaN if only one class
    is present overall.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels for {len(probs)} probabilities")
    both_classes = len(np.unique(labels)) == 2
    out = {
        "auc": float(roc_auc_score(labels, probs)) if both_classes else float("nan"),
        "gauc": float("nan"),
        "logloss": float(log_loss(labels, np.clip(probs, eps, 1 - eps), labels=[0, 1])),
    }
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if len(groups) != len(labels):
            raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
        out["gauc"] = _group_auc(labels, probs, groups)
    return out


def _valid(lst: np.ndarray | Sequence[int]) -> np.ndarray:
    """A top-K list without its -1 padding."""
    arr = np.asarray(lst, dtype=np.int64).ravel()
    return arr[arr >= 0]


def catalogue_coverage(topk_lists: Sequence[Sequence[int]] | np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommended list."""
    lists = [_valid(lst) for lst in topk_lists]
    if not lists:
        return 0.0
    return float(len(np.unique(np.concatenate(lists))) / n_items)


def intra_list_diversity(
    topk_lists: Sequence[Sequence[int]] | np.ndarray, item_features: np.ndarray | sp.spmatrix | sp.sparray
) -> float:
    """1 - mean pairwise cosine similarity of the items within each list, averaged over lists.

    Lists with fewer than two items have no pairs and are skipped; an all-zero feature row counts as
    dissimilar to everything.
    """
    features = normalize(sp.csr_array(item_features) if sp.issparse(item_features) else item_features)
    values = []
    for lst in topk_lists:
        items = _valid(lst)
        n = len(items)
        if n < 2:
            continue
        block = features[items]
        sims = block @ block.T
        sims = sims.toarray() if sp.issparse(sims) else np.asarray(sims)
        values.append(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))
    return float(np.mean(values)) if values else float("nan")


def novelty(
    topk_lists: Sequence[Sequence[int]] | np.ndarray, item_popularity_counts: np.ndarray, n_users: int
) -> float:
    """Mean self-information -log2(count / n_users) of recommended items (per list, then over lists).

    Counts are clipped at 1 so that never-seen items get a finite, maximal novelty.
    """
    info = -np.log2(np.maximum(np.asarray(item_popularity_counts, dtype=np.float64), 1.0) / n_users)
    values = [info[items].mean() for items in map(_valid, topk_lists) if len(items)]
    return float(np.mean(values)) if values else float("nan")
