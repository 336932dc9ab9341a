"""Serving at catalogue scale: recommend p99 at concurrency 8 and the ANN's recall@10 with 10⁵–10⁶
items, without the 1–2 hour whole graph a log of that size needs on this CPU.

A trained bundle (default: the champion ``make run`` promoted) is widened to ``--items`` items and
written by the pipeline's own :func:`m6rec.serving.bundle.save_bundle` — so the ANN index is built,
tuned and recorded exactly as in a run — then imported and built into a Bento in a separate
``$BENTOML_HOME`` and served by ``bentoml serve`` with its own defaults (``make serve``'s).

The widened items: item ``i`` is a variant of trained item ``i mod n`` (its catalogue row with the
title suffixed, its popularity and mean rating), whose cached text states (lower-layer state and
sentence embedding) are the original's plus seeded Gaussian noise at ``--noise`` of their norm, the
norm kept; its ID row (models with item IDs) is the original's. Every tensor of the served models has
the shape it would have after training on that catalogue, and the retriever's item vectors — what the
index holds — come from the tuned item tower over those states: the served arithmetic and memory are
the real ones; what is synthetic is the items' texts, so recall is measured on this geometry, not on a
real 10⁶-item catalogue's. Encoding 10⁶ real item texts takes ~2 h here (7 ms a text through MiniLM).

Measured per size: ``recall_at_10`` of the served retrieval (``rerank 0``: the ANN index's candidates
scored exactly) against the exact scan over every item, on ``--recall-queries`` seeded requests;
``POST /recommend`` (rerank 50, the served default) p50/p99 and throughput at concurrency 8: the
median of ``--repeats`` runs of ``--requests`` requests (a p99 of 200 requests is their second
slowest, and one stall of this shared host moves it by hundreds of ms), after as many first requests
whose p99 is kept as ``cold_p99_ms``
(``bench/serving_load.py``'s client and payloads); the service's memory (the largest of three
readings — when ready, after the first and after the measured requests — of the proportional set size
of all its processes: the memory-mapped tables its workers share count once) and its time to
``/readyz``.

Usage: python bench/serving_scale.py [--items 100000 1000000] [--source data/artifacts/champion]
                                    [--work /tmp/m6rec-serving-scale] [--requests 200] [--repeats 3]
Writes bench/results/serving_scale.json (or --out); sizes already there are kept unless run again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def widened_items(items, n_items: int):
    """The catalogue grown to ``n_items`` rows: row ``i`` copies row ``i mod n`` with a new id, a
    suffixed title and index ``i`` (variants of real items: their popularity, ratings and genres)."""
    import numpy as np

    n = len(items)
    source = np.arange(n_items) % n
    copy = np.arange(n_items) // n
    out = items.iloc[source].reset_index(drop=True).copy()
    suffix = np.where(copy > 0, [f" #{c}" for c in copy], "")
    out["item_id"] = np.where(copy > 0, out["item_id"].astype(str) + "~" + copy.astype(str), out["item_id"])
    out["title"] = out["title"].astype(str) + suffix
    out["item_idx"] = np.arange(n_items)
    return out, source


def noisy_rows(table, source, noise: float, seed: int):
    """``table[source]`` with seeded Gaussian noise at ``noise`` of each row's norm, the norm kept;
    the first ``len(table)`` rows (the original items) are exact copies."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    src = torch.as_tensor(source)
    out = table[src].clone()
    moved = torch.arange(len(src)) >= len(table)  # rows past the original catalogue are the variants
    for lo in range(0, len(out), 100_000):  # chunks: the noise never costs a second copy of 10⁶ rows
        rows = slice(lo, lo + 100_000)
        block = out[rows]
        norm = block.norm(dim=1, keepdim=True)
        jitter = torch.randn(block.shape, generator=gen) * (noise * norm / block.shape[1] ** 0.5)
        new = block + jitter
        new = new * (norm / new.norm(dim=1, keepdim=True).clamp(min=1e-12))
        out[rows] = torch.where(moved[rows, None], new, block)
    return out


def request_user_vectors(retriever, item_ids: list[str], n: int, seed: int):
    """The retriever's unit user vectors for ``n`` seeded ``bench/serving_load.py`` request histories
    (the index's effort is tuned on them, as the pipeline tunes it on its validation users'; the
    recall below is measured on other requests)."""
    import numpy as np
    from serving_load import payloads

    from m6rec.models.retrieval import Window
    from m6rec.models.segments import rating_ids
    from m6rec.serving.bundle import unit_user_vectors

    index = {item: i for i, item in enumerate(item_ids)}
    windows = []
    for body in payloads(item_ids, "recommend", n, seed=seed):
        history = body["history"][-retriever.config.max_len :]
        items = np.asarray([index[e["item_id"]] for e in history], dtype=np.int64)
        ratings = rating_ids(np.asarray([e["rating"] for e in history], dtype=float))
        windows.append(Window(0, items, ratings, np.zeros(len(items), dtype=np.int64)))
    return unit_user_vectors(retriever, windows)


def widen_bundle(source: Path, n_items: int, out: Path, noise: float, seed: int = 0) -> dict:
    """Write a bundle of ``n_items`` items at ``out`` from the bundle at ``source`` (see the module
    docstring); returns its manifest."""
    import dataclasses

    import pandas as pd
    import torch

    from m6rec.data.marts import DataContract, RecData
    from m6rec.models.backbones import load_encoder
    from m6rec.models.lm_layers import LowerLayerCache
    from m6rec.models.registry import build_model
    from m6rec.models.segments import SegmentCache
    from m6rec.serving.bundle import save_bundle
    from m6rec.text.textify import TextStyle

    manifest = json.loads((source / "manifest.json").read_text())
    if manifest.get("token_ranker"):
        raise SystemExit(f"{source}: a token-level ranker bundle (full profile); widen a default one")
    trained_items = pd.read_parquet(source / "items.parquet")
    items, rows = widened_items(trained_items, n_items)
    segments = SegmentCache.load(source / "segments.pt")
    wide_segments = dataclasses.replace(
        segments, item_states=noisy_rows(segments.item_states, rows, noise, seed)
    )
    lm_cache, wide_lm = None, None
    if (source / "lm_segments.pt").exists():
        lm_cache = LowerLayerCache.load(source / "lm_segments.pt")
        wide_lm = dataclasses.replace(
            lm_cache,
            item_states=noisy_rows(lm_cache.item_states, rows, noise, seed + 1),
            item_sentences=noisy_rows(lm_cache.item_sentences, rows, noise, seed + 2),
        )
    encoder = load_encoder(source / "encoder")
    encoder = dataclasses.replace(encoder, name=manifest["encoder"])
    contract = DataContract.from_manifest(manifest, str(source / "manifest.json"))
    data = RecData(items=items, users=pd.DataFrame({"user_id": []}), events=pd.DataFrame(), contract=contract)
    models = {}
    for task in ("retriever", "ranker"):
        trained = torch.load(source / f"{task}.pt", map_location="cpu", weights_only=True)
        model = build_model(manifest[task], data, wide_segments, wide_lm, encoder.model)
        wide_state = model.state_dict()  # every weight the file must hold (older files hold more)
        for key, wide in wide_state.items():
            value = trained[key]
            if wide.shape == value.shape:
                wide_state[key] = value
            elif value.shape[0] == len(trained_items) and wide.shape[0] == n_items:
                # per-item rows (ID embeddings, popularity buckets, ...): the original item's
                wide_state[key] = value[torch.as_tensor(rows)]
            else:
                raise SystemExit(f"{task}.pt: {key} has shape {tuple(value.shape)}; cannot widen it")
        model.load_state_dict(wide_state)
        models[task] = model.eval()
    item_ids = items["item_id"].astype(str).tolist()
    probes = request_user_vectors(models["retriever"], item_ids, 1000, seed=seed + 11)
    explainer = source / "explainer" if manifest.get("explainer") else None
    save_bundle(
        out,
        data=data,
        cache=wide_segments,
        encoder=encoder,
        retriever=models["retriever"],
        retriever_spec=manifest["retriever"],
        ranker=models["ranker"],
        ranker_spec=manifest["ranker"],
        style=TextStyle(**manifest["style"]),
        segment_style=TextStyle(**manifest["segment_style"]),
        lm_cache=wide_lm,
        metrics={"widened_from": str(source), "widened_noise": noise},
        explainer_dir=explainer,
        explainer_check=manifest.get("explainer_check"),
        probe_users=probes,
    )
    return json.loads((out / "manifest.json").read_text())


def served_recall(bundle: Path, queries: int, seed: int) -> float | None:
    """Recall@10 of the served retrieval (ANN candidates, scored exactly) against the exact scan over
    every item, on seeded ``bench/serving_load.py`` requests (retrieval only); None without an index."""
    from bench_common import served_recall_at_10
    from serving_load import payloads

    from m6rec.serving.recommender import HistoryEvent, Recommender, RecommendQuery

    rec = Recommender(bundle, device="cpu")
    if rec.ann is None:
        return None
    items = rec.items["item_id"].astype(str).tolist()
    asked = [
        RecommendQuery([HistoryEvent(**e) for e in body["history"]], k=10, rerank=0)
        for body in payloads(items, "recommend", queries, seed=seed, rerank=0)
    ]
    return round(served_recall_at_10(rec, asked, chunk=25), 4)


def service_memory_gb() -> float:
    """The memory of this process's children (the service: ``bentoml serve`` and its workers) as the
    sum of their proportional set sizes: a page the workers share (the memory-mapped tables and
    index) counts once, not once per worker as in a sum of RSS. Read between the timed runs, never
    during one: reading a process's smaps holds its memory-map lock, which stalls its requests."""
    import psutil

    total = 0
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return round(total / 1e9, 2)


def measure(n_items: int, args: argparse.Namespace) -> dict:
    """Widen, package and serve one catalogue size; the row for serving_scale.json."""
    import httpx
    import numpy as np
    import pandas as pd
    from serving_load import payloads, run, serve_bento

    work = Path(args.work) / str(n_items)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bundle, home = work / "bundle", work / "bentoml"
    start = time.perf_counter()
    manifest = widen_bundle(Path(args.source), n_items, bundle, args.noise)
    bundle_seconds = time.perf_counter() - start
    recall = served_recall(bundle, args.recall_queries, seed=3)
    env = {**os.environ, "BENTOML_HOME": str(home)}
    package = (
        "from m6rec.serving.packaging import build_bento, import_bundle;"
        f"print(build_bento({str(REPO)!r}, import_bundle({str(bundle)!r})))"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", package], env=env, check=True, cwd=REPO)
    bento_seconds = time.perf_counter() - start
    items = pd.read_parquet(bundle / "items.parquet")["item_id"].astype(str).tolist()
    shutil.rmtree(bundle)  # the store holds it now (twice: model store and Bento)
    os.sync()  # the GBs just written reach the disk before the timed requests, not during them
    start = time.perf_counter()
    with serve_bento(home) as base:
        ready = time.perf_counter() - start
        served_precision = httpx.post(f"{base}/model_info", json={}, timeout=60).json()["precision"]
        memory = [service_memory_gb()]
        cold = run(f"{base}/recommend", payloads(items, "recommend", args.requests, seed=1), 8)
        memory.append(service_memory_gb())
        trials = [
            run(f"{base}/recommend", payloads(items, "recommend", args.requests, seed=10 + t), 8)
            for t in range(args.repeats)
        ]
        memory.append(service_memory_gb())
    load = {key: float(np.median([t[key] for t in trials])) for key in ("p50_ms", "p99_ms", "throughput_rps")}
    ann = manifest["item_index"]["ann"]
    shutil.rmtree(work)
    return {
        "items": n_items,
        "command": f"python bench/serving_scale.py --items {n_items} --requests {args.requests} "
        f"--repeats {args.repeats}",
        "widened_from": str(args.source),
        "noise": args.noise,
        "bundle_seconds": round(bundle_seconds, 1),
        "bento_seconds": round(bento_seconds, 1),
        "ready_seconds": round(ready, 1),
        "service_memory_gb": max(memory),
        # the scorer's arithmetic; ``auto`` reads the source bundle's bfloat16 check (same scorer weights)
        "served_precision": served_precision,
        "ann": {
            "retrieval": "exact scan" if ann is None else f"ANN ({ann['kind']})",
            "recall_at_10": recall if recall is not None else 1.0,
            "index_recall_at_10_at_build": None if ann is None else ann["recall_at_10"],
            "index_build_seconds": None if ann is None else ann["build_seconds"],
            "p50_ms": load["p50_ms"],
            "p99_ms": load["p99_ms"],
            "p99_ms_trials": [t["p99_ms"] for t in trials],
            "cold_p99_ms": cold["p99_ms"],
            "throughput_rps": load["throughput_rps"],
            "concurrency": 8,
            "requests": args.requests,
            "errors": cold["errors"] + sum(t["errors"] for t in trials),
        },
    }


def main() -> None:
    from bench_common import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--source", default=str(REPO / "data" / "artifacts" / "champion"))
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "m6rec-serving-scale"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of --requests (median kept)")
    parser.add_argument("--recall-queries", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.5, help="noise on a variant's text states (x norm)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serving_scale.json"))
    args = parser.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"runs": []}
    report.update(cpu=cpu_model(), cpus=os.cpu_count(), target={"recall_at_10": 0.95, "p99_ms": 50.0})
    for n in args.items:
        row = measure(n, args)
        print(json.dumps(row), flush=True)
        report["runs"] = sorted(
            [r for r in report["runs"] if r["items"] != n] + [row], key=lambda r: r["items"]
        )
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
