"""Behaviour-log readers: MovieLens-100K (RecBole atomic files or the original ``u.*`` files)
and the generic CSV/Parquet format users bring their own logs in.

Each reader returns a :class:`RawDataset` in the raw data contract (DESIGN.md §3) or raises
:class:`~m6rec.data.tabular.DataFormatError` naming the file, line, column and value.

Generic format (a folder):
  ``interactions*.csv|tsv|parquet``  user_id, item_id, timestamp (Unix seconds or ISO-8601)[, rating]
  ``items*.csv|tsv|parquet``         item_id, title[, release_year][, genres ("A|B" or a list)]
                                     [, any other columns, kept as JSON ``attributes``]
  ``users*.csv|tsv|parquet``         optional: user_id[, age, gender, occupation, zip][, any other columns]
Several files of one kind (e.g. daily drops) are read in name order and concatenated.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from m6rec.data.tabular import (
    LINE,
    DataFormatError,
    Table,
    check_unique,
    number_column,
    read_delimited,
    read_table,
    require_columns,
    text_column,
    timestamp_column,
)

RATING_COLUMNS = ["user_id", "item_id", "rating", "ts", "event_seq"]
ITEM_COLUMNS = ["item_id", "title", "release_year", "genres", "attributes"]
USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip", "attributes"]
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


@dataclass
class RawDataset:
    """The three raw tables plus where they came from."""

    ratings: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    source_format: str
    files: list[Path] = field(default_factory=list)

    def row_counts(self) -> dict[str, int]:
        return {"ratings": len(self.ratings), "items": len(self.items), "users": len(self.users)}


def detect_format(folder: Path) -> str:
    """``recbole`` (``*.inter``), ``ml-100k`` (``u.data``) or ``generic`` (``interactions*``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "source folder does not exist")
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    if "u.data" in names:
        return "ml-100k"
    if any(n.startswith("interactions") and n.endswith(TABLE_SUFFIXES) for n in names):
        return "generic"
    raise DataFormatError(
        folder,
        "no behaviour logs found: expected interactions*.csv|tsv|parquet (generic format), "
        "*.inter (RecBole) or u.data (original MovieLens-100K)",
    )


def read_source(folder: Path, source_format: str = "auto") -> RawDataset:
    """Read and validate a whole source folder in the given (or detected) format."""
    folder = Path(folder)
    fmt = detect_format(folder) if source_format == "auto" else source_format
    readers = {"recbole": read_recbole, "ml-100k": read_ml100k, "generic": read_generic}
    if fmt not in readers:
        raise ValueError(f"unknown source format {fmt!r}; choose one of {sorted(readers)} or 'auto'")
    return readers[fmt](folder)


# --- shared validation -------------------------------------------------------------------------


def _ratings(table: Table, *, user: str, item: str, ts: str, rating: str | None) -> pd.DataFrame:
    require_columns(table, [user, item, ts])
    frame = pd.DataFrame(
        {
            "user_id": text_column(table, user, required=True),
            "item_id": text_column(table, item, required=True),
            "rating": (
                number_column(table, rating, required=False, integer=False)
                if rating and rating in table.frame.columns
                else pd.array([pd.NA] * len(table.frame), dtype="Float64")
            ),
            "ts": timestamp_column(table, ts),
        }
    )
    frame[LINE] = table.frame[LINE].to_numpy()
    frame["_file"] = str(table.path)
    return frame


def _check_known(ratings: pd.DataFrame, known: pd.Series, column: str, against: Iterable[Path]) -> None:
    unknown = ~ratings[column].isin(set(known))
    if unknown.any():
        row = ratings[unknown].iloc[0]
        names = ", ".join(str(p) for p in against)
        raise DataFormatError(
            row["_file"],
            f"{column} not found in {names}",
            line=int(row[LINE]),
            column=column,
            value=row[column],
        )


def _finish(
    ratings: list[pd.DataFrame],
    items: list[Table],
    item_frames: list[pd.DataFrame],
    users: list[Table],
    user_frames: list[pd.DataFrame],
    fmt: str,
) -> RawDataset:
    """Concatenate per-file frames, check keys across files and foreign keys, fix dtypes."""
    item_df = pd.concat(item_frames, ignore_index=True)
    _check_unique_across(items, item_frames, "item_id")
    user_df = (
        pd.concat(user_frames, ignore_index=True)
        if user_frames
        else pd.DataFrame({c: pd.Series(dtype=object) for c in USER_COLUMNS})
    )
    if user_frames:
        _check_unique_across(users, user_frames, "user_id")
    rating_df = pd.concat(ratings, ignore_index=True)
    _check_known(rating_df, item_df["item_id"], "item_id", [t.path for t in items])
    if user_frames:
        _check_known(rating_df, user_df["user_id"], "user_id", [t.path for t in users])
    rating_df["event_seq"] = range(len(rating_df))
    item_df["release_year"] = item_df["release_year"].astype("Int64")
    user_df["age"] = user_df["age"].astype("Int64")
    files = [Path(f) for f in rating_df["_file"].unique()] + [t.path for t in items + users]
    return RawDataset(
        ratings=rating_df[RATING_COLUMNS].astype({"rating": "Float64", "ts": "Int64"}),
        items=item_df[ITEM_COLUMNS],
        users=user_df[USER_COLUMNS],
        source_format=fmt,
        files=files,
    )


def _check_unique_across(tables: list[Table], frames: list[pd.DataFrame], column: str) -> None:
    for table, frame in zip(tables, frames, strict=True):
        check_unique(table, frame[column], column)
    seen: dict[str, Path] = {}
    for table, frame in zip(tables, frames, strict=True):
        for i, key in enumerate(frame[column]):
            if key in seen:
                raise table.error(
                    f"duplicate {column}, already defined in {seen[key]}", row=i, column=column, value=key
                )
        seen.update(dict.fromkeys(frame[column], table.path))


def _attributes(table: Table, known: set[str]) -> pd.Series:
    """Columns outside the contract, kept as a JSON object per row (blanks dropped)."""
    extra = [c for c in table.frame.columns if c not in known and c != LINE]
    if not extra:
        return pd.Series(["{}"] * len(table.frame), dtype=object)
    values = {c: text_column(table, c, required=False) for c in extra}
    return pd.Series(
        [
            json.dumps(
                {c: values[c].iloc[i] for c in extra if values[c].iloc[i] is not None}, ensure_ascii=False
            )
            for i in range(len(table.frame))
        ],
        dtype=object,
    )


def _user_frame(
    table: Table,
    *,
    age: str = "age",
    gender: str = "gender",
    occupation: str = "occupation",
    zip_code: str = "zip",
) -> pd.DataFrame:
    def optional(col: str) -> pd.Series:
        return (
            text_column(table, col, required=False)
            if col in table.frame.columns
            else pd.Series([None] * len(table.frame), dtype=object)
        )

    require_columns(table, ["user_id"])
    return pd.DataFrame(
        {
            "user_id": text_column(table, "user_id", required=True),
            "age": (
                number_column(table, age, required=False, integer=True)
                if age in table.frame.columns
                else pd.array([pd.NA] * len(table.frame), dtype="Int64")
            ),
            "gender": optional(gender),
            "occupation": optional(occupation),
            "zip": optional(zip_code),
            "attributes": _attributes(table, {"user_id", age, gender, occupation, zip_code}),
        }
    )


# --- RecBole atomic files (the default ML-100K copy) ---------------------------------------------


def _read_atomic(path: Path) -> Table:
    """RecBole atomic file: tab-separated, header ``name:type``, no quoting."""
    table = read_delimited(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    table.frame.columns = [c.split(":", 1)[0] if c != LINE else c for c in table.frame.columns]
    return table


def read_recbole(folder: Path) -> RawDataset:
    folder = Path(folder)
    inter_path = _only(folder, "*.inter")
    inter = _read_atomic(inter_path)
    item_table = _read_atomic(_only(folder, "*.item"))
    require_columns(item_table, ["item_id", "movie_title", "release_year", "class"])
    _repair_recbole_years(item_table.frame)
    items = pd.DataFrame(
        {
            "item_id": text_column(item_table, "item_id", required=True),
            "title": text_column(item_table, "movie_title", required=True),
            "release_year": number_column(item_table, "release_year", required=False, integer=True),
            "genres": [
                [x for x in g.split() if x != "unknown"] if g else []
                for g in text_column(item_table, "class", required=False)
            ],
            "attributes": "{}",
        }
    )
    user_paths = sorted(folder.glob("*.user"))
    user_tables = [_read_atomic(p) for p in user_paths]
    user_frames = [_user_frame(t, zip_code="zip_code") for t in user_tables]
    ratings = _ratings(inter, user="user_id", item="item_id", ts="timestamp", rating="rating")
    return _finish([ratings], [item_table], [items], user_tables, user_frames, "recbole")


def _repair_recbole_years(frame: pd.DataFrame) -> None:
    """RecBole's ML-100K copy has two bad years: 'unkonwn' for the undated title, and 'V' for
    'Land Before Time III (1995) (V)', whose year stayed in the title. Recover what can be."""
    for i, year in enumerate(frame["release_year"]):
        if year.isdigit():
            continue
        match = _TITLE_YEAR.match(frame["movie_title"].iat[i])
        frame.iat[i, frame.columns.get_loc("release_year")] = match["year"] if match else ""
        if match:
            frame.iat[i, frame.columns.get_loc("movie_title")] = match["title"]


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise DataFormatError(folder, f"expected exactly one {pattern} file, found {len(found)}")
    return found[0]


# --- original MovieLens-100K files -----------------------------------------------------------------

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def read_ml100k(folder: Path) -> RawDataset:
    """``u.data`` (tab), ``u.item`` and ``u.user`` (pipe, Latin-1 as GroupLens ships them)."""
    folder = Path(folder)
    data = read_delimited(
        folder / "u.data",
        delimiter="\t",
        names=["user_id", "item_id", "rating", "ts"],
        quoting=csv.QUOTE_NONE,
    )
    genre_names = ML100K_GENRES
    if (folder / "u.genre").exists():
        genre_table = read_delimited(
            folder / "u.genre",
            delimiter="|",
            names=["genre", "idx"],
            encoding="latin-1",
            quoting=csv.QUOTE_NONE,
        )
        genre_names = list(genre_table.frame["genre"])
    item_table = read_delimited(
        folder / "u.item",
        delimiter="|",
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
        names=["item_id", "title", "release_date", "video_release_date", "imdb_url", *genre_names],
    )
    titles, years = [], []
    for i, raw in enumerate(text_column(item_table, "title", required=True)):
        match = _TITLE_YEAR.match(raw)
        titles.append(match["title"] if match else raw)
        release = item_table.frame["release_date"].iloc[i]
        year = match["year"] if match else (release[-4:] if release and release[-4:].isdigit() else None)
        years.append(int(year) if year else None)
    flags = item_table.frame[genre_names]
    bad = ~flags.isin(["0", "1"])
    if bad.to_numpy().any():
        row, col = (int(x[0]) for x in bad.to_numpy().nonzero())
        raise item_table.error(
            "genre flag must be 0 or 1", row=row, column=genre_names[col], value=flags.iat[row, col]
        )
    items = pd.DataFrame(
        {
            "item_id": text_column(item_table, "item_id", required=True),
            "title": titles,
            "release_year": pd.array(years, dtype="Int64"),
            "genres": [
                [g for g in genre_names if r[g] == "1" and g != "unknown"] for _, r in flags.iterrows()
            ],
            "attributes": "{}",
        }
    )
    user_table = read_delimited(
        folder / "u.user",
        delimiter="|",
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
        names=["user_id", "age", "gender", "occupation", "zip"],
    )
    ratings = _ratings(data, user="user_id", item="item_id", ts="ts", rating="rating")
    return _finish([ratings], [item_table], [items], [user_table], [_user_frame(user_table)], "ml-100k")


# --- generic CSV / Parquet -------------------------------------------------------------------------


def _files(folder: Path, stem: str) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(stem) and p.suffix.lower() in TABLE_SUFFIXES
    )


def _genres(table: Table) -> list[list[str]]:
    if "genres" not in table.frame.columns:
        return [[] for _ in range(len(table.frame))]
    out = []
    for value in table.frame["genres"]:
        if isinstance(value, list | tuple) or hasattr(value, "tolist"):
            out.append([str(g).strip() for g in list(value) if str(g).strip()])
        else:
            out.append([g.strip() for g in str(value or "").split("|") if g.strip()])
    return out


def read_generic(folder: Path) -> RawDataset:
    folder = Path(folder)
    inter_paths, item_paths = _files(folder, "interactions"), _files(folder, "items")
    if not inter_paths:
        raise DataFormatError(folder, "no interactions*.csv|tsv|parquet file")
    if not item_paths:
        raise DataFormatError(folder, "no items*.csv|tsv|parquet file (item_id,title[,...])")
    ratings = []
    for path in inter_paths:
        table = read_table(path)
        ratings.append(_ratings(table, user="user_id", item="item_id", ts="timestamp", rating="rating"))
    item_tables, item_frames = [], []
    for path in item_paths:
        table = read_table(path)
        require_columns(table, ["item_id", "title"])
        item_tables.append(table)
        item_frames.append(
            pd.DataFrame(
                {
                    "item_id": text_column(table, "item_id", required=True),
                    "title": text_column(table, "title", required=True),
                    "release_year": (
                        number_column(table, "release_year", required=False, integer=True)
                        if "release_year" in table.frame.columns
                        else pd.array([pd.NA] * len(table.frame), dtype="Int64")
                    ),
                    "genres": _genres(table),
                    "attributes": _attributes(table, {"item_id", "title", "release_year", "genres"}),
                }
            )
        )
    user_tables = [read_table(p) for p in _files(folder, "users")]
    user_frames = [_user_frame(t) for t in user_tables]
    return _finish(ratings, item_tables, item_frames, user_tables, user_frames, "generic")
