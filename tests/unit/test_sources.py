"""Reading every source format, and a clear error for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from m6rec.data.sources import ML100K_GENRES, detect_format, read_source
from m6rec.data.tabular import DataFormatError
from tests.synthetic import INTERACTIONS, ITEMS


def test_recbole_ml100k(ml100k_dir: Path) -> None:
    ds = read_source(ml100k_dir)
    assert ds.source_format == "recbole"
    assert ds.row_counts() == {"ratings": 100_000, "items": 1682, "users": 943}
    items = ds.items.set_index("item_id")
    assert items.loc["1", "title"] == "Toy Story"
    assert items.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    # RecBole's copy stores 'V' as this title's year; the reader recovers 1995 from the title.
    assert items.loc["1412", "release_year"] == 1995
    assert pd.isna(items.loc["267", "release_year"])  # the undated title stays undated
    assert ds.ratings["event_seq"].tolist() == list(range(100_000))
    first = ds.ratings.iloc[0]
    assert (first.user_id, first.item_id, first.rating, first.ts) == ("196", "242", 3.0, 881250949)


def _write_original(folder: Path, ml100k_dir: Path, n_ratings: int = 500) -> None:
    """The GroupLens layout (u.data / u.item / u.user, Latin-1) built from the RecBole copy."""
    rec = read_source(ml100k_dir)
    folder.mkdir()
    ratings = rec.ratings.head(n_ratings)
    ratings[["user_id", "item_id", "rating", "ts"]].astype({"rating": int}).to_csv(
        folder / "u.data", sep="\t", header=False, index=False
    )
    genre_names = ML100K_GENRES
    lines = []
    for item in rec.items.itertuples():
        title = "Café Society" if item.item_id == "2" else item.title
        year = "" if pd.isna(item.release_year) else f" ({item.release_year})"
        flags = ["1" if g in item.genres else "0" for g in genre_names]
        lines.append("|".join([item.item_id, title + year, "01-Jan-1995", "", "http://x", *flags]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    users = rec.users[["user_id", "age", "gender", "occupation", "zip"]]
    users.to_csv(folder / "u.user", sep="|", header=False, index=False)


def test_original_ml100k_files_match_the_recbole_copy(tmp_path: Path, ml100k_dir: Path) -> None:
    folder = tmp_path / "ml-100k"
    _write_original(folder, ml100k_dir)
    assert detect_format(folder) == "ml-100k"
    ds = read_source(folder)
    rec = read_source(ml100k_dir)
    assert ds.row_counts() == {"ratings": 500, "items": 1682, "users": 943}
    pd.testing.assert_frame_equal(ds.ratings, rec.ratings.head(500))
    items = ds.items.set_index("item_id")
    assert items.loc["2", "title"] == "Café Society"  # decoded from Latin-1
    assert items.loc["1", "title"] == "Toy Story" and items.loc["1", "release_year"] == 1995
    assert items.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]


def test_generic_csv(write_generic) -> None:
    ds = read_source(write_generic())
    assert ds.source_format == "generic"
    assert ds.row_counts() == {"ratings": 10, "items": 5, "users": 4}
    items = ds.items.set_index("item_id")
    assert items.loc["i2", "genres"] == ["Action", "Crime", "Thriller"]
    assert json.loads(items.loc["i1", "attributes"]) == {"director": "Ridley Scott"}
    assert json.loads(items.loc["i4", "attributes"]) == {}


def test_generic_parquet_iso_timestamps_implicit_feedback_no_users(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "item_id": [1, 2, 1],
            "timestamp": ["2024-01-01T00:00:00Z", "2024-01-02 12:00:00", "2024-01-03T00:00:00+01:00"],
        }
    ).to_parquet(folder / "interactions.parquet")
    pd.DataFrame({"item_id": [1, 2], "title": ["One", "Two"], "genres": [["x", "y"], []]}).to_parquet(
        folder / "items.parquet"
    )
    ds = read_source(folder)
    assert ds.ratings["ts"].tolist() == [1704067200, 1704196800, 1704236400]
    assert ds.ratings["rating"].isna().all()
    assert ds.ratings["item_id"].tolist() == ["1", "2", "1"]
    assert ds.items["genres"].tolist() == [["x", "y"], []]
    assert ds.users.empty


def test_several_interaction_files_are_concatenated_in_name_order(write_generic) -> None:
    folder = write_generic()
    # "interactions_2" sorts after "interactions." ('_' > '.').
    (folder / "interactions_2.csv").write_text("user_id,item_id,timestamp,rating\nu9,i5,3000,4\n")
    users = (folder / "users.csv").read_text() + "u9,40,F,doctor,1\n"
    (folder / "users.csv").write_text(users)
    ds = read_source(folder)
    assert ds.ratings.iloc[-1][["user_id", "item_id", "event_seq"]].tolist() == ["u9", "i5", 10]


BAD_CASES = {
    "bad row": (
        "interactions",
        INTERACTIONS.replace("u1,i2,1010,2", "u1,i2,1010,2,extra"),
        3,
        None,
        "expected 4 fields",
    ),
    "missing column": (
        "interactions",
        INTERACTIONS.replace("timestamp", "time"),
        None,
        "timestamp",
        "missing required column",
    ),
    "wrong type": (
        "interactions",
        INTERACTIONS.replace("u1,i3,1020,4", "u1,i3,1020,four"),
        4,
        "rating",
        "not a number",
    ),
    "bad timestamp": (
        "interactions",
        INTERACTIONS.replace("u2,i2,1000,4", "u2,i2,yesterday,4"),
        6,
        "timestamp",
        "not a Unix timestamp",
    ),
    "missing id": (
        "interactions",
        INTERACTIONS.replace("u3,i4,1500,4", ",i4,1500,4"),
        9,
        "user_id",
        "missing value",
    ),
    "duplicate key": ("items", ITEMS + "i2,Heat again,1995,Action,\n", 7, "item_id", "duplicate item_id"),
    "unknown item": ("interactions", INTERACTIONS + "u4,i99,1800,4\n", 12, "item_id", "not found"),
    "empty file": ("items", "", None, None, "file is empty"),
    "header only": ("interactions", "user_id,item_id,timestamp,rating\n", None, None, "no data rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_line_column_value(case: str, write_generic) -> None:
    kind, text, line, column, reason = BAD_CASES[case]
    folder = write_generic(**{kind: text})
    with pytest.raises(DataFormatError) as err:
        read_source(folder)
    message = str(err.value)
    assert f"{kind}.csv" in err.value.path and reason in message
    assert err.value.line == line
    assert err.value.column == column
    if line is not None:
        assert f"line {line}" in message


def test_wrong_encoding_is_reported_with_line(write_generic) -> None:
    folder = write_generic()
    (folder / "items.csv").write_bytes(ITEMS.replace("Alien", "Ali\xe9n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"items\.csv, line 2: not valid utf-8") as err:
        read_source(folder)
    assert err.value.value == "e9"


def test_unknown_user_when_a_users_file_is_given(write_generic) -> None:
    folder = write_generic(interactions=INTERACTIONS + "nobody,i1,1800,4\n")
    with pytest.raises(DataFormatError, match="user_id not found") as err:
        read_source(folder)
    assert (err.value.line, err.value.value) == (12, "nobody")


def test_duplicate_key_across_files(write_generic) -> None:
    folder = write_generic()
    (folder / "items-extra.csv").write_text("item_id,title\ni3,Toy Story again\n")
    with pytest.raises(DataFormatError, match="already defined in"):
        read_source(folder)


def test_folder_without_logs(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no behaviour logs found"):
        read_source(tmp_path)
    with pytest.raises(DataFormatError, match="does not exist"):
        read_source(tmp_path / "missing")
