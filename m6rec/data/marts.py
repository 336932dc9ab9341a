"""The marts as the models see them: dense item/user indices, per-user event sequences and the
textify inputs (items, profiles, events) built from the same rows for training and serving."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m6rec.text.textify import Event, ItemText, Profile

SPLIT_ORDER = ("train", "valid", "test")
# The models' dense user index, numbered as the marts are read: numeric ids in numeric order, then the
# rest. marts.user_profiles does not store it (a daily drop's new user would renumber every row).
USER_ORDER = "try_cast(user_id as bigint) nulls last, user_id"
CONTRACT_FILE = "contract.json"


@dataclass(frozen=True)
class DataContract:
    """The values the marts were built with that a trained model depends on, so serving must use the same
    ones: the bundle's manifest records this (``contract``) and the service reads it from there only.

    ``like_threshold``: an event is a like when ``rating > like_threshold`` (or it has no rating), the
    marts' ``is_like``; ``ctr_history_length``: the events a CTR example's history holds (the ranker reads
    that many at most). Both are dbt vars; ``dbt_vars`` holds every var the build used, and
    ``marts_fingerprint`` / ``marts_run_id`` say which published marts (``marts.build_info``) these are.
    Marts without a build record (synthetic test data, hand-made warehouses) get the dbt project's
    defaults and ``source="defaults"``, which the manifest then shows."""

    like_threshold: float = 3.0
    ctr_history_length: int = 10
    dbt_vars: dict[str, Any] = field(default_factory=dict)
    marts_fingerprint: str | None = None
    marts_run_id: str | None = None
    source: str = "defaults"

    @classmethod
    def from_build_info(cls, info: dict[str, Any] | None) -> DataContract:
        """From ``marts.build_info`` (:func:`m6rec.data.warehouse.read_build_info`); defaults when None."""
        if not info:
            return cls()
        dbt_vars = dict(info.get("dbt_vars") or {})
        defaults = cls()
        return cls(
            like_threshold=float(dbt_vars.get("like_threshold", defaults.like_threshold)),
            ctr_history_length=int(dbt_vars.get("ctr_history_length", defaults.ctr_history_length)),
            dbt_vars=dbt_vars,
            marts_fingerprint=info.get("fingerprint"),
            marts_run_id=info.get("run_id"),
            source="marts.build_info",
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str) -> DataContract:
        """The manifest's ``contract``; a bundle without one cannot be served (``where`` names it)."""
        if not isinstance(manifest.get("contract"), dict):
            raise ValueError(f"{where}: the manifest has no 'contract'; rebuild the bundle with this m6rec")
        return cls(**manifest["contract"])

    def is_like(self, rating: float | None) -> bool:
        """The marts' ``is_like`` rule: unrated events count as likes."""
        return rating is None or rating > self.like_threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecData:
    """Everything a model needs from the warehouse, in memory (ML-100K is ~5 MB here)."""

    items: pd.DataFrame  # marts.item_catalogue, row i has item_idx i
    users: pd.DataFrame  # marts.user_profiles + user_idx (USER_ORDER), row u has user_idx u
    events: pd.DataFrame  # marts.splits + item_idx/user_idx, sorted by user_idx, position
    contract: DataContract = field(default_factory=DataContract)  # what the marts were built with

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def item_index(self) -> dict[str, int]:
        return dict(zip(self.items["item_id"], self.items["item_idx"], strict=True))

    def item_texts(self) -> list[ItemText]:
        """Catalogue rows as textify inputs; mart percentile 1 = most popular -> textify 99. The
        ``watched_next_ids`` column (absent in older catalogues) becomes the followers' titles."""
        titles = dict(zip(self.items["item_id"], self.items["title"], strict=True))
        out = []
        for row in self.items.itertuples(index=False):
            followers = getattr(row, "watched_next_ids", None)
            attributes = json.loads(row.attributes) if isinstance(row.attributes, str) else {}
            out.append(
                ItemText(
                    title=row.title,
                    release_year=None if pd.isna(row.release_year) else int(row.release_year),
                    genres=tuple(row.genres) if row.genres is not None else (),
                    popularity_percentile=100 - float(row.popularity_percentile),
                    attributes=attributes,
                    watched_next=tuple(titles[i] for i in followers if i in titles)
                    if followers is not None
                    else (),
                )
            )
        return out

    def profiles(self) -> list[Profile]:
        return [
            Profile(
                age=None if pd.isna(r.age) else int(r.age),
                gender=None if pd.isna(r.gender) else r.gender,
                occupation=None if pd.isna(r.occupation) else r.occupation,
            )
            for r in self.users.itertuples(index=False)
        ]

    def sequences(self, splits: tuple[str, ...] = ("train",)) -> list[pd.DataFrame]:
        """Per user (by user_idx), the events of the given splits in time order."""
        chosen = self.events[self.events["split"].isin(splits)]
        groups = dict(tuple(chosen.groupby("user_idx", sort=True)))
        empty = chosen.iloc[:0]
        return [groups.get(u, empty) for u in range(self.n_users)]

    def holdout(self, split: str) -> pd.DataFrame:
        """The one valid/test (or all cold) events per user, with the history that precedes each:
        for ``valid`` the train events, for ``test`` train + valid (the RecBole protocol)."""
        return self.events[self.events["split"] == split]

    def history_splits(self, split: str) -> tuple[str, ...]:
        return {"valid": ("train",), "test": ("train", "valid"), "cold": ("train", "valid", "test")}[split]


def events_of(frame: pd.DataFrame, item_texts: list[ItemText]) -> list[Event]:
    """textify events for a slice of ``RecData.events``."""
    return [
        Event(item=item_texts[i], ts=int(t), rating=None if pd.isna(r) else float(r))
        for i, t, r in zip(frame["item_idx"], frame["ts"], frame["rating"], strict=True)
    ]


PARQUET_FILES = ("items", "users", "events")


def save_rec_data(data: RecData, folder: str | Path) -> Path:
    """The marts in memory as Parquet files, for a machine without the warehouse (the GPU suite)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PARQUET_FILES:
        getattr(data, name).to_parquet(folder / f"{name}.parquet", index=False)
    (folder / CONTRACT_FILE).write_text(json.dumps(data.contract.to_dict(), indent=2))
    return folder


def read_rec_data(folder: str | Path) -> RecData:
    """What :func:`save_rec_data` wrote."""
    frames = {name: pd.read_parquet(Path(folder) / f"{name}.parquet") for name in PARQUET_FILES}
    contract = json.loads((Path(folder) / CONTRACT_FILE).read_text())
    return RecData(**frames, contract=DataContract(**contract))


def load_rec_data(database: str | Path) -> RecData:
    """Read the marts (read-only; waits for a writer to finish)."""
    from m6rec.data.warehouse import connect, read_build_info  # duckdb: only where there is a warehouse

    with connect(database, read_only=True) as conn:
        contract = DataContract.from_build_info(read_build_info(conn))
        items = conn.execute("select * from marts.item_catalogue order by item_idx").df()
        numbered = f"""
            select user_id, row_number() over (order by {USER_ORDER}) - 1 as user_idx, * exclude (user_id)
            from marts.user_profiles"""
        users = conn.execute(f"{numbered} order by user_idx").df()
        events = conn.execute(f"""
            with users as ({numbered})
            select s.user_id, u.user_idx, s.item_id, i.item_idx, s.rating, s.ts, s.position, s.split,
                   s.is_like
            from marts.splits s
            join users u using (user_id)
            join marts.item_catalogue i using (item_id)
            order by u.user_idx, s.position""").df()
    for frame, col in ((items, "item_idx"), (users, "user_idx")):
        if not np.array_equal(frame[col].to_numpy(), np.arange(len(frame))):
            raise ValueError(f"{col} is not dense 0..n-1; rebuild the marts")
    return RecData(items=items, users=users, events=events.reset_index(drop=True), contract=contract)
