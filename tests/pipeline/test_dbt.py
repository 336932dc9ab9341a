"""`dbt build` on the real MovieLens-100K, with the split re-derived independently from the raw file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from m6rec.data.sources import read_source
from tests.pipeline import ml100k_marts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw_file_splits(ml100k_dir: Path) -> pd.DataFrame:
    """Leave-one-out recomputed straight from ml-100k.inter: stable sort by time keeps file order in ties."""
    inter = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    inter.columns = ["user_id", "item_id", "rating", "ts"]
    inter["event_seq"] = np.arange(len(inter))
    inter = inter.sort_values(["user_id", "ts"], kind="stable")
    from_end = inter.groupby("user_id").cumcount(ascending=False)
    n = inter.groupby("user_id")["ts"].transform("size")
    inter["split"] = np.select(
        [(n >= 2) & (from_end == 0), (n >= 3) & (from_end == 1)], ["test", "valid"], "train"
    )
    return inter.set_index("event_seq")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, ml100k_dir: Path) -> Path:
    db = tmp_path_factory.mktemp("dbt") / "warehouse.duckdb"
    result = ml100k_marts(db, ml100k_dir)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "ERROR=0" in result.stdout and "PASS=" in result.stdout
    return db


def test_mart_row_counts(built: Path) -> None:
    with duckdb.connect(str(built), read_only=True) as conn:
        counts = {
            t: conn.execute(f"select count(*) from marts.{t}").fetchall()[0][0]
            for t in [
                "user_events",
                "splits",
                "ctr_examples",
                "item_catalogue",
                "user_profiles",
                "cold_items",
            ]
        }
    assert counts == {
        "user_events": 100_000,
        "splits": 100_000,
        "ctr_examples": 100_000 - 943,
        "item_catalogue": 1682,
        "user_profiles": 943,
        "cold_items": counts["cold_items"],
    }
    assert counts["cold_items"] > 0


def test_splits_match_recbole_leave_one_out(built: Path, raw_file_splits: pd.DataFrame) -> None:
    with duckdb.connect(str(built), read_only=True) as conn:
        marts = (
            conn.execute("select event_seq, split, position from marts.splits").df().set_index("event_seq")
        )
    joined = raw_file_splits.join(marts, rsuffix="_dbt")
    assert (joined["split"] == joined["split_dbt"]).all()
    assert joined["split"].value_counts().to_dict() == {"train": 98_114, "valid": 943, "test": 943}
    # 415 users share their last timestamp with another event: file order decided those ties.
    last_ts = raw_file_splits.groupby("user_id")["ts"].transform("max")
    tied_users = raw_file_splits[raw_file_splits["ts"] == last_ts].groupby("user_id").size().gt(1).sum()
    assert tied_users > 0


def test_ctr_history_is_the_previous_ten_events(built: Path, raw_file_splits: pd.DataFrame) -> None:
    ordered = raw_file_splits.reset_index()  # sorted by user, time, file order
    with duckdb.connect(str(built), read_only=True) as conn:
        examples = conn.execute(
            "select user_id, position, target_item_id, label, target_rating, history_item_ids "
            "from marts.ctr_examples where user_id in ('1', '166', '943')"
        ).df()
    for row in examples.itertuples():
        events = ordered[ordered["user_id"] == int(row.user_id)]
        expected = events["item_id"].astype(str).tolist()[max(0, row.position - 10) : row.position]
        assert list(row.history_item_ids) == expected
        assert events["item_id"].iloc[row.position] == int(row.target_item_id)
        assert row.label == int(row.target_rating > 3)


def test_zero_shot_holds_cold_items_out_of_training(tmp_path: Path, ml100k_dir: Path) -> None:
    db = tmp_path / "zs.duckdb"
    result = ml100k_marts(db, ml100k_dir, zero_shot=True, cold_item_fraction=0.1)
    assert result.returncode == 0, result.stdout[-3000:]
    with duckdb.connect(str(db), read_only=True) as conn:
        cold = {r[0] for r in conn.execute("select item_id from marts.cold_items").fetchall()}
        leaked = conn.execute(
            "select count(*) from marts.splits s join marts.cold_items c using (item_id) "
            "where s.split <> 'cold'"
        ).fetchall()[0][0]
        n_cold_events = conn.execute("select count(*) from marts.splits where split = 'cold'").fetchall()[0][
            0
        ]
        flagged = conn.execute("select count(*) from marts.item_catalogue where is_cold").fetchall()[0][0]
    assert leaked == 0 and n_cold_events > 0 and flagged == len(cold)
    # 10% of the items with >= 10 interactions, picked by a seeded hash (the same set every build).
    counts = read_source(ml100k_dir).ratings["item_id"].value_counts()
    assert len(cold) == round(0.1 * (counts >= 10).sum())
    assert cold <= set(counts[counts >= 10].index)
