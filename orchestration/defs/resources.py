"""Resources shared by every stage: the DuckDB warehouse and the dbt CLI."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
import pandas as pd
from dagster_dbt import DbtCliResource

from m6rec.data.warehouse import connect
from m6rec.models.backbones import load_causal_lm, load_encoder, tiny_causal_lm, tiny_encoder
from m6rec.training.profiles import get_profile
from orchestration import settings


class WarehouseResource(dg.ConfigurableResource):
    """The embedded DuckDB file. DuckDB has one writer per file: a connection that meets another
    process's lock waits up to ``lock_wait_s`` and then fails with a message saying so; inside
    Dagster every step that opens it also sits in the ``duckdb`` concurrency pool."""

    database: str
    lock_wait_s: float = 120.0

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.database, read_only=read_only, wait_s=self.lock_wait_s) as conn:
            yield conn

    def read(self, sql: str) -> pd.DataFrame:
        with self.connect(read_only=True) as conn:
            return conn.execute(sql).df()


class QualityThresholds(dg.ConfigurableResource):
    """Ranges the suites accept; change them for logs on another rating scale."""

    rating_min: float = 1.0
    rating_max: float = 5.0
    earliest_ts: int = 0  # 1970-01-01
    max_history_length: int = 50
    min_train_fraction: float = 0.5


class ModelSettings(dg.ConfigurableResource):
    """Which training profile runs (smoke / default / full) and optional overrides; a GPU is used
    automatically when present."""

    profile: str = "default"
    encoder: str | None = None  # any HF checkpoint folder or hub id instead of the profile's encoder
    budget_s: float | None = None  # per-model wall-clock budget instead of the profile's
    seed: int = 0
    # CPU threads for torch. One is the safe default: with any other process busy (the Dagster daemon,
    # a second run), two threads on two cores ran ~10x slower than one here.
    torch_threads: int = 1
    # The causal LM bundled for explanations: "auto" (tiny for smoke, SmolLM2 otherwise), "none", or
    # any HF checkpoint folder / hub id / GGUF.
    explainer: str = "auto"

    def apply_threads(self) -> None:
        import torch

        torch.set_num_threads(self.torch_threads)

    def resolved(self):
        overrides = {"budget_s": self.budget_s} if self.budget_s is not None else {}
        if self.encoder:
            overrides["encoder"] = self.encoder
        return get_profile(self.profile, **overrides)

    def load_explainer(self):
        """The explainer LM, or None when switched off."""
        if self.explainer == "none":
            return None
        name = self.explainer
        if name == "auto":
            name = "tiny" if self.resolved().encoder == "tiny" else "smollm2"
        if name == "tiny":
            return tiny_causal_lm(seed=self.seed, cache_dir=settings.cache_dir())
        return load_causal_lm(name, settings.cache_dir())

    def load_encoder(self):
        name = self.resolved().encoder
        return tiny_encoder(seed=self.seed) if name == "tiny" else load_encoder(name, settings.cache_dir())


@dg.definitions
def resources() -> dg.Definitions:
    # In-process execution: one process per run, so DuckDB's single writer is never contended
    # inside a run (multiprocess would also re-import torch and dbt for every step).
    return dg.Definitions(
        executor=dg.in_process_executor,
        resources={
            "warehouse": WarehouseResource(database=str(settings.warehouse_path())),
            "dbt": DbtCliResource(
                project_dir=str(settings.DBT_PROJECT_DIR), dbt_executable=settings.dbt_executable()
            ),
            "quality": QualityThresholds(),
            "model_settings": ModelSettings(
                profile=os.environ.get("M6REC_PROFILE", "default"),
                torch_threads=int(os.environ.get("M6REC_TORCH_THREADS", "1")),
            ),
        },
    )
