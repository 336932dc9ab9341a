"""ANN library choice: FAISS HNSW, FAISS IVF-Flat and hnswlib on the same vectors, at 10⁵ and 10⁶ items.

Each index is tuned the way ``m6rec.serving.item_index`` tunes its graph: the search effort (efSearch,
nprobe, ef) is raised until recall@10 against the exact scan reaches 0.97 on 1,000 seeded probe
queries (means of 1–5 items, as user vectors are); the reported recall is then measured on 1,000
*other* queries, with one-query latency percentiles on one thread (what one request pays).

Vectors: 640 dimensions, the width of the served graph (the retriever's 256 + the sentence
embedding's 384), drawn around 2,000 seeded centres and unit-normalised per part. Synthetic: encoding
10⁶ real item texts takes ~2 hours on this 2-core CPU (7 ms a text through MiniLM), so this measures
the libraries, not m6rec's item geometry; the served bundle records its own recall on its own items
(``manifest.json["item_index"]["graph"]``).

``--load-modes``: instead, how the served IVF-Flat index is read back from its file — into memory, or
memory-mapped (shared by a machine's serving workers) through FAISS's ``IO_FLAG_MMAP`` or
``IO_FLAG_MMAP_IFC`` — and what one search costs each way (the row's ``faiss_ivf_flat_load_modes``).

Usage: python bench/ann.py [--sizes 100000 1000000] [--libraries NAME ...] [--load-modes]
                           [--out bench/results/ann.json]
Rows already in the file are kept unless measured again (each row names the command that wrote it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from bench_common import cpu_model

from m6rec.serving.item_index import exact_top_k, probe_queries, recall_at_k

REPO = Path(__file__).resolve().parents[1]
PARTS = (256, 384)
TARGET = 0.97
EFFORTS = (16, 32, 64, 128, 256, 512)


def catalogue(n: int, seed: int = 0) -> np.ndarray:
    """Unit-per-part vectors around 2,000 centres (clusters of similar items: genres, series, eras)."""
    rng = np.random.default_rng(seed)
    dim = sum(PARTS)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        out[lo:hi] = centres[rng.integers(0, 2000, hi - lo)] + 0.8 * rng.normal(size=(hi - lo, dim))
    start = 0
    for width in PARTS:
        block = out[:, start : start + width]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        start += width
    return out


def faiss_hnsw(vectors: np.ndarray) -> tuple[Callable, Callable]:
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100
    index.add(vectors)

    def set_effort(e: int) -> None:
        index.hnsw.efSearch = e

    return set_effort, lambda q, k: index.search(q, k)[1]


def ivf_flat_index(vectors: np.ndarray) -> faiss.IndexIVFFlat:
    nlist = int(4 * np.sqrt(len(vectors)))
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[
        np.random.default_rng(0).choice(len(vectors), min(len(vectors), 50 * nlist), replace=False)
    ]
    index.train(sample)
    index.add(vectors)
    return index


def faiss_ivf(vectors: np.ndarray) -> tuple[Callable, Callable]:
    index = ivf_flat_index(vectors)

    def set_effort(e: int) -> None:
        index.nprobe = e

    return set_effort, lambda q, k: index.search(q, k)[1]


def hnswlib_hnsw(vectors: np.ndarray) -> tuple[Callable, Callable]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=32, ef_construction=100, random_seed=0)
    index.add_items(vectors, np.arange(len(vectors)), num_threads=os.cpu_count() or 1)
    index.set_num_threads(1)

    def set_effort(e: int) -> None:
        index.set_ef(max(e, 10))

    return set_effort, lambda q, k: index.knn_query(q, k=k)[0]


LIBRARIES = {
    "faiss HNSW (M=32)": faiss_hnsw,
    "faiss IVF-Flat": faiss_ivf,
    "hnswlib HNSW (M=32)": hnswlib_hnsw,
}
# the rows whose library the project does not install (only compared here): `pip install hnswlib`
OPTIONAL_MODULES = {"hnswlib HNSW (M=32)": "hnswlib"}


def tuned_effort(set_effort: Callable, search: Callable, vectors: np.ndarray, tune: np.ndarray) -> int:
    """The smallest of :data:`EFFORTS` whose recall@10 on the ``tune`` queries reaches :data:`TARGET`
    (the largest when none does); the index is left at it."""
    truth = exact_top_k(vectors, tune, 10)
    for effort in EFFORTS:
        set_effort(effort)
        if recall_at_k(search(tune, 10), truth) >= TARGET:
            break
    return effort


def one_query_latencies(search: Callable, queries: np.ndarray) -> dict:
    """p50/p99 ms of single-query searches (k 60: what recommend asks for: max(k, rerank) + a 10-item
    history), on one thread."""
    latencies = []
    for q in queries:
        t = time.perf_counter()
        search(q[None], 60)
        latencies.append((time.perf_counter() - t) * 1000)
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


# How a saved index is read back: into memory, or mapped from the file so that a machine's serving
# workers share one copy (the old flag reads the IVF lists through FAISS's on-disk lists, the newer one
# as plain arrays over the mapping)
LOAD_MODES = {"memory": 0, "IO_FLAG_MMAP": faiss.IO_FLAG_MMAP, "IO_FLAG_MMAP_IFC": faiss.IO_FLAG_MMAP_IFC}


def load_modes(vectors: np.ndarray, tune: np.ndarray, test: np.ndarray, folder: Path) -> dict:
    """One IVF-Flat index (effort by :func:`tuned_effort`, as in :func:`measure`), saved, then read back
    each way and searched one query at a time, the file's pages already in memory (the service reads
    every page once before it is ready: ``ItemIndex.touch``). Rounds interleave the modes: the host's
    speed drifts."""
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = ivf_flat_index(vectors)
    faiss.omp_set_num_threads(1)
    effort = tuned_effort(
        lambda e: setattr(index, "nprobe", e), lambda q, k: index.search(q, k)[1], vectors, tune
    )
    path = folder / "ivf_flat.faiss"
    faiss.write_index(index, str(path))
    loaded = {}
    for mode, flag in LOAD_MODES.items():
        copy = faiss.read_index(str(path), flag)
        copy.search(test[:1], 1, params=faiss.SearchParametersIVF(nprobe=copy.nlist))  # every page once
        loaded[mode] = copy
    params = faiss.SearchParametersIVF(nprobe=effort)
    rounds: dict[str, list[dict]] = {mode: [] for mode in LOAD_MODES}
    for r in range(3):
        for mode, copy in loaded.items():
            queries = test[r * 100 : (r + 1) * 100]
            rounds[mode].append(
                one_query_latencies(lambda q, k, c=copy: c.search(q, k, params=params), queries)
            )
    path.unlink()
    return {
        "effort": effort,
        **{
            mode: {key: round(float(np.median([t[key] for t in trials])), 2) for key in ("p50_ms", "p99_ms")}
            for mode, trials in rounds.items()
        },
    }


def measure(name: str, vectors: np.ndarray, tune: np.ndarray, test: np.ndarray) -> dict:
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # building uses every core
    start = time.perf_counter()
    set_effort, search = LIBRARIES[name](vectors)
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)  # a request searches on one thread
    effort = tuned_effort(set_effort, search, vectors, tune)
    truth_test = exact_top_k(vectors, test, 10)
    return {
        "build_seconds": round(build, 1),
        "effort": effort,
        "recall_at_10": round(recall_at_k(search(test, 10), truth_test), 4),
        **one_query_latencies(search, test[:300]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ann.json"))
    parser.add_argument(
        "--load-modes",
        action="store_true",
        help="only compare how a saved IVF-Flat index is read back (memory, IO_FLAG_MMAP, IO_FLAG_MMAP_IFC)",
    )
    parser.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp"), help="where the index file goes")
    args = parser.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"runs": []}
    report.update(cpu=cpu_model(), cpus=os.cpu_count(), target_recall=TARGET)
    for n in args.sizes:
        vectors = catalogue(n)
        tune = probe_queries(vectors, 1000, seed=1, parts=PARTS)
        test = probe_queries(vectors, 1000, seed=2, parts=PARTS)
        row = next((r for r in report["runs"] if r["items"] == n), None)
        if row is None:
            row = {"items": n, "dim": int(vectors.shape[1]), "libraries": {}}
            report["runs"] = sorted([*report["runs"], row], key=lambda r: r["items"])
        if args.load_modes:
            command = f"python bench/ann.py --sizes {n} --load-modes"
            row["faiss_ivf_flat_load_modes"] = {
                "command": command,
                **load_modes(vectors, tune, test, Path(args.work)),
            }
            print(n, row["faiss_ivf_flat_load_modes"], flush=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            continue
        for name in args.libraries:
            module = OPTIONAL_MODULES.get(name)
            if module and importlib.util.find_spec(module) is None:
                print(f"{n} {name}: skipped, {module} is not installed (pip install {module})", flush=True)
                continue  # the row of an earlier run, if any, stays
            command = f"python bench/ann.py --sizes {n} --libraries '{name}'"
            row["libraries"][name] = {"command": command, **measure(name, vectors, tune, test)}
            print(n, name, row["libraries"][name], flush=True)
            out.write_text(json.dumps(report, indent=2) + "\n")  # after each: a long run keeps its rows
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
