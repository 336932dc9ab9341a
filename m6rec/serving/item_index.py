"""Top-k items by inner product: an exact scan for small catalogues, a FAISS index past ``exact_below``
items.

A request that scans the whole catalogue costs ``n_items × dim`` multiply-adds plus a sort of
``n_items`` scores: ~7 ms at 10⁵ items and far past the 50 ms budget at 10⁶ on one CPU thread.

A request's retrieval score is a sum of inner products in several spaces (the user tower's vector with
the item tower's, a free-text query's sentence embedding with the items'). The index holds each item
as the concatenation of its vectors in every space (its ``parts``), so one search with the
concatenated query (zeros for a part the request lacks) maximises exactly that sum.

It is built once, when the bundle is written, and its search effort (IVF ``nprobe`` or HNSW
``efSearch``) is raised there until recall@10 against the exact scan reaches ``target_recall`` on a
seeded sample of user-like queries; the measured recall travels in the manifest. The kind (IVF-Flat
by default, HNSW by config) and the library (FAISS, not hnswlib) were chosen by ``bench/ann.py``
(``bench/results/ann.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"


TRAIN_POINTS_PER_CELL = 64  # IVF k-means sample per cell (FAISS warns below 39)
KINDS = {"ivf_flat": "nprobe", "hnsw": "efSearch"}  # index kind -> its search-effort parameter


@dataclass(frozen=True)
class IndexConfig:
    """How an item index is built. Below ``exact_below`` items serving scans every item (exact, and
    cheaper than an index at that size)."""

    exact_below: int = 50_000
    kind: str = "ivf_flat"  # or "hnsw"
    nlist: int | None = None  # IVF cells; None: 4·√n_items (FAISS's guideline)
    m: int = 32  # HNSW neighbours per node: recall rises and build slows with it
    ef_construction: int = 100
    efforts: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)  # tried in order until target_recall holds
    target_recall: float = 0.97
    recall_queries: int = 1000
    seed: int = 0


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """``[n_queries, k]`` item indices of the ``k`` best inner products, by brute force (BLAS)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (the exact top k) that ``found`` also holds."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def probe_queries(
    vectors: np.ndarray,
    n: int,
    seed: int,
    parts: Sequence[int] | None = None,
    users: np.ndarray | None = None,
) -> np.ndarray:
    """Queries that look like users rather than items: the mean of 1–5 random catalogue vectors (a user
    vector sits among the items they liked), so the index is tuned away from the easy case of a query
    equal to an indexed point; each part normalised on its own. ``users``: real user-tower vectors
    (``[n_users, parts[0]]``), taken in turn as the first part instead: served histories are not
    item means (``bench/serving_scale.py``: an effort tuned on item means met its target at build
    and served requests below 0.95 at 10⁵ items). With several ``parts``, a third of the queries keep
    every part and the rest only one (zeros elsewhere), as requests with only a history or only a
    free-text query do."""
    rng = np.random.default_rng(seed)
    parts = list(parts or [vectors.shape[1]])
    sizes = rng.integers(1, 6, size=n)
    out = np.stack([vectors[rng.choice(len(vectors), size=s, replace=False)].mean(0) for s in sizes])
    if users is not None and len(users):
        if users.shape[1] != parts[0]:
            raise ValueError(f"user vectors are {users.shape[1]} wide; the index's first part is {parts[0]}")
        out[:, : parts[0]] = users[np.arange(n) % len(users)]
    bounds = np.cumsum([0, *parts])
    keep = rng.integers(-1, len(parts), size=n) if len(parts) > 1 else np.full(n, -1)
    for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        block = out[:, lo:hi]
        block /= np.linalg.norm(block, axis=1, keepdims=True).clip(min=1e-12)
        block[(keep >= 0) & (keep != j)] = 0.0
    return out.astype(np.float32)


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _new_index(vectors: np.ndarray, config: IndexConfig) -> tuple[faiss.Index, dict]:
    """The empty-then-filled FAISS index of ``config.kind`` and its build settings."""
    n, dim = vectors.shape
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.add(vectors)
        return index, {"m": config.m, "ef_construction": config.ef_construction}
    if config.kind != "ivf_flat":
        raise ValueError(f"unknown index kind {config.kind!r}; choose one of {sorted(KINDS)}")
    # k-means wants ≥ 39 points a cell; tiny catalogues get fewer cells
    nlist = max(1, min(config.nlist or int(4 * np.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(config.seed)
    # k-means on 64 points a cell: at 10⁶ items, 256 a cell was the whole catalogue and 25 k-means
    # passes of 4,000 centroids over it (~10¹⁴ flops, over 20 minutes on this CPU)
    index.train(vectors[rng.choice(n, size=min(n, TRAIN_POINTS_PER_CELL * nlist), replace=False)])
    index.add(vectors)
    return index, {"nlist": nlist}


class ItemIndex:
    """A FAISS index over ``[n_items, dim]`` item vectors (inner product), with the search effort and
    the recall@10 measured when it was built."""

    def __init__(self, index: faiss.Index, info: dict) -> None:
        self.index, self.info = index, info
        self._set_effort(int(info["effort"]))

    def _set_effort(self, value: int) -> None:
        faiss.ParameterSpace().set_index_parameter(self.index, KINDS[self.info["kind"]], value)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        config: IndexConfig = IndexConfig(),
        parts: Sequence[int] | None = None,
        users: np.ndarray | None = None,
    ) -> ItemIndex:
        """Build the index, then pick the smallest search effort whose recall@10 reaches the target
        for every kind of probe query (the largest tried when none does: the measured value says so).
        ``parts``: the widths of the spaces concatenated in ``vectors`` (default: one space);
        ``users``: user vectors the probe queries' first part comes from (:func:`probe_queries`)."""
        vectors = _as_float32(vectors)
        parts = list(parts or [vectors.shape[1]])
        if sum(parts) != vectors.shape[1]:
            raise ValueError(f"parts {parts} do not add up to the vectors' width {vectors.shape[1]}")
        start = time.perf_counter()
        index, settings = _new_index(vectors, config)
        build_seconds = time.perf_counter() - start
        queries = probe_queries(vectors, min(config.recall_queries, len(vectors)), config.seed, parts, users)
        truth = exact_top_k(vectors, queries, 10)
        info = {
            "kind": config.kind,
            "library": f"faiss {faiss.__version__}",
            "n_items": int(len(vectors)),
            "dim": int(vectors.shape[1]),
            "parts": parts,
            **settings,
            "effort_parameter": KINDS[config.kind],
        }
        # every kind of query (which parts it has: a history, a free-text query, both) must reach the
        # target on its own: the easy kinds' recall would otherwise hide a hard kind's
        bounds = np.cumsum([0, *parts])
        has = np.stack([np.abs(queries[:, lo:hi]).sum(1) > 0 for lo, hi in pairwise(bounds)], axis=1)
        kinds = {
            "parts " + "+".join(map(str, np.flatnonzero(row))): (has == row).all(1)
            for row in np.unique(has, axis=0)
        }
        item_index = cls(index, {**info, "effort": config.efforts[0]})
        for effort in config.efforts:
            item_index._set_effort(effort)
            found = item_index.search(queries, 10)[1]
            by_kind = {name: recall_at_k(found[rows], truth[rows]) for name, rows in kinds.items()}
            if min(by_kind.values()) >= config.target_recall:
                break
        item_index.info = {
            **info,
            "effort": effort,
            "recall_at_10": round(min(by_kind.values()), 4),  # the worst kind of query's
            "recall_at_10_by_query_parts": {name: round(r, 4) for name, r in by_kind.items()},
            "recall_queries": int(len(queries)),
            "probe_users": 0 if users is None else int(len(users)),
            "target_recall": config.target_recall,
            "build_seconds": round(build_seconds, 1),
        }
        return item_index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, item indices)``, each ``[n_queries, k]``; rows are padded with index -1 when the
        index returns fewer than ``k`` items."""
        k = min(k, self.n_items)
        scores, ids = self.index.search(_as_float32(queries), k)
        return scores, ids

    def touch(self) -> None:
        """Read every vector of an IVF index once (one search over every cell), so a memory-mapped
        index is in memory before the first request rather than faulted in by the first requests."""
        if self.info.get("kind") != "ivf_flat":
            return
        ivf = faiss.extract_index_ivf(self.index)
        effort = ivf.nprobe
        ivf.nprobe = ivf.nlist
        try:
            self.index.search(np.zeros((1, self.index.d), dtype=np.float32), 1)
        finally:
            ivf.nprobe = effort

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        (folder / INFO_FILE).write_text(json.dumps(self.info, indent=2))

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = False) -> ItemIndex:
        """``mmap``: the index's vectors stay in the file's pages (serving: the worker processes of a
        machine share one copy; 2.6 GB at 10⁶ items of 640 floats). ``IO_FLAG_MMAP_IFC`` reads the
        inverted lists in place, as plain arrays over the mapping; the older ``IO_FLAG_MMAP`` reads
        them through FAISS's on-disk lists, where one search took ~1.9× as long (10⁶ items of 640 floats,
        nprobe 16, one thread: p50 3.21 vs 1.71 ms, 1.52 ms read into memory; ``bench/ann.py
        --load-modes``)."""
        folder = Path(folder)
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        return cls(index, json.loads((folder / INFO_FILE).read_text()))


def build_if_large(
    spaces: Sequence[np.ndarray], config: IndexConfig = IndexConfig(), users: np.ndarray | None = None
) -> ItemIndex | None:
    """The index over the concatenated ``spaces`` (each ``[n_items, width]``) for a catalogue of at
    least ``config.exact_below`` items, its effort tuned on ``users``' vectors in the first space when
    given; ``None`` (scan every item) below it."""
    if len(spaces[0]) < config.exact_below:
        return None
    return ItemIndex.build(np.concatenate(spaces, axis=1), config, [s.shape[1] for s in spaces], users)


def index_settings(config: IndexConfig) -> dict:
    """The build settings as plain JSON (for manifests and asset metadata)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
