"""A seeded generator of realistic behaviour logs in the generic format (``interactions``, ``items`` and
``users`` Parquet files that :func:`m6rec.data.sources.read_generic` reads), sized by flag.

Why: MovieLens-100K has 10⁵ events; the stages must be measured at 10⁶–10⁷ events and 10⁵–10⁶ items,
and no package on the registries ships a real log of that size. What the logs have, and why:

- **power-law item popularity** (Zipf weights over a shuffled catalogue): head items dominate, as in
  every real log, so Pop is a real baseline and the tail is long;
- **tastes**: each user has a Dirichlet mix over genres and picks a genre, then an item of that genre by
  popularity; ratings follow how well the item's genres match the taste;
- **drift**: the mix moves from one Dirichlet draw to another over the user's history (a logistic
  step around its middle), so the recent past predicts the next event better than the whole history —
  a sequential model has something to learn that a bag of items does not;
- **sessions over months**: gaps of minutes inside a session, days between sessions; repeat-free
  histories (a user meets an item once); heavy-tailed activity (log-normal, at least ``min_events``).

Everything is vectorised over events (genre choice by inverse CDF, items by a per-genre popularity CDF),
in chunks, so 10⁷ events take seconds to minutes, not hours.

Usage: ``python -m m6rec.data.generator OUT --events 1000000 --users 100000 --items 20000 --seed 0``;
``--drop-fraction 0.01 --drop-days 1`` keeps the newest 1% of the events out of ``OUT`` and writes them
as daily drops, ``OUT/drops/<YYYY-MM-DD>/interactions.parquet`` (the incremental path of the pipeline).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
OCCUPATIONS = (
    "student", "engineer", "educator", "programmer", "writer", "artist", "administrator", "librarian",
    "scientist", "healthcare", "retired", "executive", "technician", "marketing", "other",
)  # fmt: skip
ADJECTIVES = ("Silent", "Red", "Last", "Hidden", "Golden", "Broken", "Distant", "Wild", "Lost", "Bright")
NOUNS = ("River", "Empire", "Night", "Garden", "Signal", "Harbor", "Mirror", "Frontier", "Echo", "Crown")
LANGUAGES = ("en", "fr", "de", "es", "ja", "ko", "hi", "it")
START_TS = 1_600_000_000  # 2020-09-13 UTC
SECONDS_PER_DAY = 86_400
CHUNK = 1_000_000  # events per vectorised chunk: bounds the events x genres temporaries


@dataclass(frozen=True)
class LogSpec:
    """Sizes and shape of one generated log. ``events`` is a target: repeat-free histories and the
    per-user minimum move the exact count a little (the result says how many)."""

    events: int = 100_000
    users: int = 1_000
    items: int = 2_000
    seed: int = 0
    months: int = 12  # the span the timestamps cover
    min_events: int = 5  # per user (leave-one-out needs at least 3)
    zipf: float = 1.0  # item popularity exponent
    session_prob: float = 0.2  # chance that an event starts a new session
    drift: bool = True  # tastes move from one mix to another over each history

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 2 or self.events < self.users * self.min_events:
            raise ValueError(
                f"events ({self.events}) must be at least users ({self.users}) x min_events "
                f"({self.min_events}), with at least 2 items (got {self.items})"
            )
        if self.min_events * 2 > self.items:
            raise ValueError(f"items ({self.items}) must be at least twice min_events ({self.min_events})")


@dataclass
class GeneratedLog:
    interactions: pd.DataFrame  # user_id, item_id, timestamp, rating
    items: pd.DataFrame  # item_id, title, release_year, genres ("A|B"), language, runtime
    users: pd.DataFrame  # user_id, age, gender, occupation, zip

    def write(self, folder: str | Path) -> Path:
        """The three Parquet files of the generic format, in ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.interactions.to_parquet(out / "interactions.parquet", index=False)
        self.items.to_parquet(out / "items.parquet", index=False)
        self.users.to_parquet(out / "users.parquet", index=False)
        return out

    def split_drops(self, fraction: float, days: int) -> tuple[GeneratedLog, dict[str, pd.DataFrame]]:
        """The log without its newest ``fraction`` of events, and those events as ``days`` daily drops
        of equal size, each keyed by its arrival date (the day after its newest event): what a log
        that grows every day looks like to the pipeline. Items and users all stay in the base."""
        if not 0 < fraction < 1 or days < 1:
            raise ValueError(f"drop fraction must be in (0, 1) and days >= 1 (got {fraction}, {days})")
        ordered = self.interactions.sort_values("timestamp", kind="stable")
        n_new = max(int(round(len(ordered) * fraction)), days)
        base, new = ordered.iloc[:-n_new], ordered.iloc[-n_new:]
        drops = {}
        for chunk in np.array_split(np.arange(len(new)), days):
            part = new.iloc[chunk]
            arrival = pd.Timestamp(int(part["timestamp"].max()), unit="s").normalize() + pd.Timedelta(days=1)
            key = arrival.strftime("%Y-%m-%d")
            drops[key] = pd.concat([drops[key], part]) if key in drops else part
        return GeneratedLog(base.sort_index(), self.items, self.users), drops


def write_drops(drops: dict[str, pd.DataFrame], folder: str | Path) -> list[Path]:
    """Each drop as ``folder/<day>/interactions.parquet`` (the drop format the ingest reads)."""
    paths = []
    for day, frame in sorted(drops.items()):
        out = Path(folder) / day
        out.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out / "interactions.parquet", index=False)
        paths.append(out)
    return paths


def _items(spec: LogSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The catalogue, each item's genre bitmask (items x genres) and popularity weight."""
    n, g = spec.items, len(GENRES)
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.5, 0.35, 0.15])
    mask = np.zeros((n, g), dtype=bool)
    order = np.argsort(rng.random((n, g)), axis=1)  # a random genre order per item
    for k in range(3):
        rows = np.nonzero(n_genres > k)[0]
        mask[rows, order[rows, k]] = True
    popularity = 1.0 / np.arange(1, n + 1) ** spec.zipf
    popularity = popularity[rng.permutation(n)]  # popularity unrelated to the item index
    words = [f"{a} {b}" for a in ADJECTIVES for b in NOUNS]
    titles = [f"{words[i % len(words)]} {i // len(words) + 1}" for i in range(n)]
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": titles,
            "release_year": rng.integers(1950, 2026, size=n),
            "genres": ["|".join(GENRES[j] for j in np.nonzero(row)[0]) for row in mask],
            "language": rng.choice(LANGUAGES, size=n, p=[0.6] + [0.4 / 7] * 7),
            "runtime": rng.integers(70, 181, size=n),
        }
    )
    return items, mask, popularity


def _users(spec: LogSpec, rng: np.random.Generator) -> pd.DataFrame:
    n = spec.users
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n)],
            "age": rng.integers(15, 71, size=n),
            "gender": rng.choice(["M", "F"], size=n),
            "occupation": rng.choice(OCCUPATIONS, size=n),
            "zip": [f"{z:05d}" for z in rng.integers(0, 100_000, size=n)],
        }
    )


def _activity(spec: LogSpec, rng: np.random.Generator) -> np.ndarray:
    """Events per user: log-normal shares of what is left after everyone's minimum, capped so a
    repeat-free history always fits the catalogue."""
    extra = spec.events - spec.users * spec.min_events
    shares = rng.lognormal(0.0, 1.2, size=spec.users)
    counts = spec.min_events + np.floor(extra * shares / shares.sum()).astype(np.int64)
    return np.minimum(counts, spec.items // 2)


def _sample_genres(cum: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One genre per event by inverse CDF of its row of ``cum`` (rows x genres cumulative mixes)."""
    u = rng.random(len(rows))[:, None]
    return np.minimum((cum[rows] < u).sum(axis=1), cum.shape[1] - 1)


def _switch(progress: np.ndarray) -> np.ndarray:
    """The weight of the later taste along a history (0 → 1): a logistic step around its middle, so the
    first and last thirds differ clearly and the change is gradual, not a jump."""
    return 1.0 / (1.0 + np.exp(-8.0 * (progress - 0.5)))


def generate_log(spec: LogSpec) -> GeneratedLog:
    """The whole log for ``spec`` (deterministic in ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    items, mask, popularity = _items(spec, rng)
    users = _users(spec, rng)
    g = len(GENRES)
    taste0 = rng.dirichlet(np.full(g, 0.3), size=spec.users).astype(np.float32)
    taste1 = rng.dirichlet(np.full(g, 0.3), size=spec.users).astype(np.float32) if spec.drift else taste0
    cum0, cum1 = np.cumsum(taste0, axis=1), np.cumsum(taste1, axis=1)
    # Items of each genre with their popularity CDF: an item is drawn within the chosen genre.
    members = [np.nonzero(mask[:, j])[0] for j in range(g)]
    cdfs = [np.cumsum(popularity[m]) / popularity[m].sum() for m in members]

    counts = _activity(spec, rng)
    # Oversample 2x + a few: duplicates of a (user, item) pair are dropped, then each user keeps
    # their first `count` distinct items, in drawing order.
    drawn = np.ceil(counts * 2.0).astype(np.int64) + 5
    user_of = np.repeat(np.arange(spec.users), drawn)
    position = np.arange(len(user_of)) - np.repeat(np.cumsum(drawn) - drawn, drawn)
    progress = position / np.maximum(np.repeat(drawn, drawn) - 1, 1)  # 0 at the first event, 1 at the last
    item_of = np.empty(len(user_of), dtype=np.int64)
    for lo in range(0, len(user_of), CHUNK):
        sl = slice(lo, lo + CHUNK)
        late = rng.random(len(user_of[sl])) < _switch(progress[sl])  # which of the two tastes picks
        genre = np.where(late, _sample_genres(cum1, user_of[sl], rng), _sample_genres(cum0, user_of[sl], rng))
        picks = np.empty(len(genre), dtype=np.int64)
        for j in range(g):
            at = np.nonzero(genre == j)[0]
            if len(at):
                idx = np.searchsorted(cdfs[j], rng.random(len(at)), side="right")
                picks[at] = members[j][np.minimum(idx, len(members[j]) - 1)]
        item_of[sl] = picks
    frame = pd.DataFrame({"user": user_of, "item": item_of, "progress": progress})
    frame = frame.drop_duplicates(["user", "item"], keep="first")
    frame = frame[frame.groupby("user").cumcount() < counts[frame["user"].to_numpy()]]

    # Timestamps: each user starts somewhere in the span; gaps of minutes inside a session, days between.
    n = len(frame)
    user = frame["user"].to_numpy()
    new_session = rng.random(n) < spec.session_prob
    gaps = np.where(new_session, rng.exponential(3 * SECONDS_PER_DAY, n), rng.exponential(300, n)) + 1
    first = np.r_[True, user[1:] != user[:-1]]
    gaps[first] = 0
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[first], np.diff(np.r_[np.nonzero(first)[0], n]))
    span = spec.months * 30 * SECONDS_PER_DAY
    starts = rng.uniform(0, span * 0.5, size=spec.users)
    ts = START_TS + np.minimum(starts[user] + offsets, span).astype(np.int64)

    # Ratings: how well the item's genres match the taste at that moment, plus noise.
    item = frame["item"].to_numpy()
    p = _switch(frame["progress"].to_numpy())[:, None]
    taste = (1 - p) * taste0[user] + p * taste1[user]
    fit = (taste * mask[item]).sum(axis=1) / mask[item].sum(axis=1)
    z = (fit - fit.mean()) / (fit.std() + 1e-9)
    rating = np.clip(np.rint(3.4 + 0.9 * z + rng.normal(0, 0.8, n)), 1, 5)

    interactions = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[user],
            "item_id": items["item_id"].to_numpy()[item],
            "timestamp": ts,
            "rating": rating.astype(np.int64),
        }
    )
    return GeneratedLog(interactions, items, users)  # the whole catalogue: some items are never met


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for interactions/items/users .parquet")
    flags = ("events", "users", "items", "seed", "months")
    for name in flags:
        parser.add_argument(f"--{name}", type=int, default=getattr(LogSpec, name))
    parser.add_argument("--drop-fraction", type=float, default=0.0, help="newest events kept out as drops")
    parser.add_argument("--drop-days", type=int, default=1, help="how many daily drops they make")
    args = parser.parse_args(argv)
    spec = LogSpec(**{name: getattr(args, name) for name in flags})
    log = generate_log(spec)
    drops: dict[str, pd.DataFrame] = {}
    if args.drop_fraction:
        log, drops = log.split_drops(args.drop_fraction, args.drop_days)
    out = log.write(args.out)
    print(f"{len(log.interactions)} events, {len(log.users)} users, {len(log.items)} items -> {out}")
    for path in write_drops(drops, Path(args.out) / "drops"):
        print(f"drop {path.name}: {len(drops[path.name])} events -> {path}")


if __name__ == "__main__":
    main()
