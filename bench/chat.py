"""Conversational recommendation vs a single free-text query, on dialogues generated from test users.

For a seeded sample of test users (300 by default), one user turn is written from their past: the two
genres they liked most and the item they liked last, e.g. "I like Drama and War films. I really enjoyed
Schindler's List (1993). What should I watch next?". The target is their test item. The dialogue path
is `POST /chat` with that turn; the single-query path is `POST /recommend` with the same text as
`query` (no history). HR@10 of each, with the target's share of hits; both run in-process on the
champion bundle `make run` promoted, over the marts of the same warehouse. With `--http`, `/chat`
latency at concurrency 1 is measured over HTTP on the latest Bento (`bentoml serve`).

Usage: python bench/chat.py [--users 300] [--bundle DIR] [--warehouse FILE] [--http]
Writes bench/results/chat.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from bench_common import add_champion_args, cpu_model, open_champion, string_ids

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dialogue_turn(genres: list[str], seed_title: str) -> str:
    liked = " and ".join(genres) if genres else "good"
    return f"I like {liked} films. I really enjoyed {seed_title}. What should I watch next?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_champion_args(parser, REPO)
    parser.add_argument("--http", action="store_true", help="also /chat latency over HTTP (concurrency 1)")
    parser.add_argument("--requests", type=int, default=100, help="HTTP requests for the latency")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "chat.json"))
    args = parser.parse_args()

    from m6rec.serving.schemas import ChatRequest, RecommendRequest
    from m6rec.text.textify import clean_title

    engine, data, events, test, users = open_champion(args)
    items = string_ids(data.items).set_index("item_id")
    is_like = engine.rec.contract.is_like

    cases = []
    for user in users:
        target = test[test["user_id"] == user].iloc[0]
        past = events[(events["user_id"] == user) & (events["position"] < int(target["position"]))]
        liked = past[[is_like(None if r != r else r) for r in past["rating"]]].sort_values("position")
        liked = liked[liked["item_id"].isin(engine.rec.index)]
        if liked.empty:
            continue
        genres = Counter(g for i in liked["item_id"] for g in items.loc[i, "genres"])
        seed = items.loc[liked["item_id"].iloc[-1]]
        title, year = clean_title(str(seed["title"]), seed["release_year"])
        seed_text = f"{title} ({year})" if year is not None else title
        turn = dialogue_turn([g for g, _ in genres.most_common(2)], seed_text)
        cases.append((user, turn, str(target["item_id"])))

    hits = {"chat": [], "query": []}
    seconds = {"chat": [], "query": []}
    recognised = 0
    for _, turn, target in cases:
        start = time.perf_counter()
        answer = engine.chat(ChatRequest(turns=[{"role": "user", "text": turn}], k=10))
        seconds["chat"].append(time.perf_counter() - start)
        recognised += bool(answer.understood.liked)
        hits["chat"].append(target in [i.item_id for i in answer.items])
        start = time.perf_counter()
        plain = engine.recommend(RecommendRequest(query=turn, k=10))
        seconds["query"].append(time.perf_counter() - start)
        hits["query"].append(target in [i.item_id for i in plain.items])

    hr = {path: float(np.mean(h)) for path, h in hits.items()}
    report = {
        "command": " ".join(["python bench/chat.py", *sys.argv[1:]]),
        "users": len(cases),
        "seed": args.seed,
        "model": engine.model_tag,
        "cpu": cpu_model(),
        "example_turn": cases[0][1] if cases else None,
        "seed_title_recognised": round(recognised / max(len(cases), 1), 4),
        "hr_at_10": {path: round(v, 4) for path, v in hr.items()},
        "ratio_chat_over_query": round(hr["chat"] / hr["query"], 3) if hr["query"] else None,
        "target_ratio": 1.2,
        "in_process_ms_p50": {p: round(1000 * float(np.median(s)), 1) for p, s in seconds.items()},
        "http": None,
    }
    if args.http:
        import httpx
        from serving_load import serve_bento

        latencies = []
        home = Path(os.environ.get("BENTOML_HOME", REPO / "data" / "bentoml"))
        with serve_bento(home) as base, httpx.Client(timeout=120) as client:
            for _, turn, _ in (cases * 2)[: args.requests]:
                body = {"turns": [{"role": "user", "text": turn}], "k": 10}
                start = time.perf_counter()
                response = client.post(f"{base}/chat", json=body)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
        ms = 1000 * np.asarray(latencies)
        report["http"] = {
            "concurrency": 1,
            "requests": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
        }
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
