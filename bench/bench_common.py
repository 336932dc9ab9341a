"""Helpers the benchmark scripts share."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name: hosts differ between sessions (AMD EPYC, Intel Xeon), and numbers are
    only comparable on one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def string_ids(frame, columns: tuple[str, ...] = ("user_id", "item_id")):
    """``frame`` with its id columns as str (marts keep MovieLens ids as they were read; requests and
    the bundle's index use strings)."""
    return frame.assign(**{c: frame[c].astype(str) for c in columns if c in frame.columns})


def add_champion_args(parser, repo: Path) -> None:
    """The flags of the benchmarks that run the served model in-process on a sample of test users."""
    parser.add_argument("--users", type=int, default=300, help="test users sampled (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", default=str(repo / "data" / "artifacts" / "champion"))
    parser.add_argument("--warehouse", default=str(repo / "data" / "warehouse.duckdb"))


def open_champion(args):
    """``(engine, data, events, test, users)``: the serving engine on ``--bundle`` (torch on every core
    unless ``M6REC_TORCH_THREADS`` says otherwise), the marts of ``--warehouse``, its events and test
    split with str ids, and ``--users`` test users drawn with ``--seed``."""
    import os

    import numpy as np
    import torch

    from m6rec.data.marts import load_rec_data
    from m6rec.serving.engine import Engine

    torch.set_num_threads(int(os.environ.get("M6REC_TORCH_THREADS", os.cpu_count() or 1)))
    engine = Engine(args.bundle)
    data = load_rec_data(args.warehouse)
    events, test = string_ids(data.events), string_ids(data.holdout("test"))
    rng = np.random.default_rng(args.seed)
    users = sorted(rng.choice(test["user_id"].unique(), size=args.users, replace=False))
    return engine, data, events, test, users


def served_recall_at_10(rec, queries, chunk: int | None = None) -> float:
    """Mean share of each query's served top 10 (the recommender's ANN candidates, scored exactly)
    that the exact scan over every item also returns; ``chunk`` queries at a time (the exact scan
    holds ``[chunk, n_items]`` scores; default: all at once). The recommender keeps its index."""
    import numpy as np

    index, step = rec.ann, chunk or max(len(queries), 1)
    served, exact = [], []
    try:
        for start in range(0, len(queries), step):
            part = queries[start : start + step]
            rec.ann = index
            served += rec.recommend_batch(part)
            rec.ann = None
            exact += rec.recommend_batch(part)
    finally:
        rec.ann = index
    hits = [len({s.item_id for s in a} & {s.item_id for s in b}) for a, b in zip(served, exact, strict=True)]
    return float(np.mean(hits) / 10)
