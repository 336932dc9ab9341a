"""Where the pipeline keeps its files. Environment variables override every default.

- ``M6REC_HOME``: data folder (default ``<repo>/data``): warehouse, caches, incoming drops.
- ``M6REC_DUCKDB_PATH``: the DuckDB warehouse file (default ``$M6REC_HOME/warehouse.duckdb``);
  dbt's ``transforms/profiles.yml`` reads the same variable.
- ``M6REC_INCOMING``: folder the sensor watches (default ``$M6REC_HOME/incoming``).
- ``M6REC_CACHE``: downloaded and converted inputs (default ``$M6REC_HOME/cache``).
- ``M6REC_DROPS``: daily drops, one folder per day ``<YYYY-MM-DD>/`` (default ``$M6REC_HOME/drops``).
- ``M6REC_DROPS_START``: the first day of the daily partitions (default ``2020-01-01``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "transforms"
DEFAULT_SOURCE = "movielens-100k"


def data_home() -> Path:
    return Path(os.environ.get("M6REC_HOME", REPO_ROOT / "data")).resolve()


def warehouse_path() -> Path:
    return Path(os.environ.get("M6REC_DUCKDB_PATH", data_home() / "warehouse.duckdb")).resolve()


def incoming_dir() -> Path:
    return Path(os.environ.get("M6REC_INCOMING", data_home() / "incoming")).resolve()


def drops_dir() -> Path:
    return Path(os.environ.get("M6REC_DROPS", data_home() / "drops")).resolve()


def drops_start() -> str:
    return os.environ.get("M6REC_DROPS_START", "2020-01-01")


def cache_dir() -> Path:
    return Path(os.environ.get("M6REC_CACHE", data_home() / "cache")).resolve()


def dbt_executable() -> str:
    """The ``dbt`` beside this interpreter (a venv not on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else shutil.which("dbt") or "dbt"


def artifacts_dir() -> Path:
    """Trained models, the candidate and champion bundles (``$M6REC_HOME/artifacts``)."""
    return Path(os.environ.get("M6REC_ARTIFACTS", data_home() / "artifacts")).resolve()


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME", data_home() / "bentoml")).resolve()
