"""Synthetic inputs: a small RecData with a learnable pattern (each user walks item i -> i+1 in a genre),
marts.ctr_examples-shaped rows from it, and a tiny behaviour-log folder in the generic format."""

from __future__ import annotations

import numpy as np
import pandas as pd

from m6rec.data.marts import RecData

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def synthetic_rec_data(n_users: int = 24, n_items: int = 40, length: int = 12, seed: int = 0) -> RecData:
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "item_idx": range(n_items),
            "title": [f"Movie number {i}" for i in range(n_items)],
            "release_year": [1980 + i % 30 for i in range(n_items)],
            "genres": [[GENRES[i % len(GENRES)]] for i in range(n_items)],
            "attributes": ["{}"] * n_items,
        }
    )
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        for p in range(length):
            item = (start + p) % n_items
            rows.append(
                {
                    "user_id": f"u{u}",
                    "user_idx": u,
                    "item_id": f"i{item}",
                    "item_idx": item,
                    "rating": float(1 + (item % 5)),
                    "ts": 1_000_000 + 86_400 * p + u,
                    "position": p,
                }
            )
    events = pd.DataFrame(rows)
    from_end = events.groupby("user_idx").cumcount(ascending=False)
    events["split"] = np.select([from_end == 0, from_end == 1], ["test", "valid"], "train")
    events["is_like"] = events["rating"] > 3
    train = events[events["split"] == "train"]
    counts = train.groupby("item_idx").size().reindex(range(n_items), fill_value=0)
    items["n_train_interactions"] = counts.to_numpy()
    items["mean_train_rating"] = train.groupby("item_idx")["rating"].mean().reindex(range(n_items)).to_numpy()
    items["is_cold"] = False
    # each item is followed by the next one in every walk (marts.item_catalogue's "often watched next")
    items["watched_next_ids"] = [[f"i{(i + 1) % n_items}"] for i in range(n_items)]
    items["popularity_rank"] = counts.rank(ascending=False, method="min").astype(int).to_numpy()
    items["popularity_percentile"] = np.ceil(100 * items["popularity_rank"] / n_items).astype(int)
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "user_idx": range(n_users),
            "age": [20 + u for u in range(n_users)],
            "gender": ["M" if u % 2 else "F" for u in range(n_users)],
            "occupation": ["engineer"] * n_users,
        }
    )
    return RecData(items=items, users=users, events=events)


def ctr_frame(data: RecData, history: int = 5) -> pd.DataFrame:
    """marts.ctr_examples-shaped rows from the synthetic events."""
    rows = []
    for _, frame in data.events.groupby("user_idx"):
        frame = frame.sort_values("position")
        for p in range(1, len(frame)):
            hist = frame.iloc[max(0, p - history) : p]
            target = frame.iloc[p]
            rows.append(
                {
                    "example_id": f"{target.user_id}:{p}",
                    "user_id": target.user_id,
                    "position": p,
                    "split": target.split,
                    "target_item_id": target.item_id,
                    "target_rating": target.rating,
                    "target_ts": int(target.ts),
                    "label": int(target.rating > 3),
                    "history_item_ids": list(hist["item_id"]),
                    "history_ratings": list(hist["rating"]),
                    "history_ts": list(hist["ts"].astype(int)),
                    "history_length": len(hist),
                }
            )
    return pd.DataFrame(rows)


# A tiny log folder in the generic format (conftest's write_generic fixture writes it).
INTERACTIONS = """user_id,item_id,timestamp,rating
u1,i1,1000,5
u1,i2,1010,2
u1,i3,1020,4
u1,i4,1030,1
u2,i2,1000,4
u2,i1,2000,5
u2,i3,2000,3
u3,i4,1500,4
u3,i2,1600,5
u4,i1,1700,3
"""
ITEMS = """item_id,title,release_year,genres,director
i1,Alien,1979,Horror|Sci-Fi,Ridley Scott
i2,Heat,1995,Action|Crime|Thriller,Michael Mann
i3,Toy Story,1995,Animation|Children's|Comedy,John Lasseter
i4,Fargo,1996,Crime|Drama|Thriller,
i5,Brand New Film,2026,Drama,
"""
USERS = """user_id,age,gender,occupation,zip
u1,24,M,technician,85711
u2,53,F,other,94043
u3,23,M,writer,32067
u4,33,F,artist,10001
"""
