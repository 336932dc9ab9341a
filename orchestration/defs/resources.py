"""Resources shared by every stage: the DuckDB warehouse, the artefact store, the dbt CLI, the quality
thresholds and the model settings."""

import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from importlib.metadata import version as installed_version
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
from dagster_dbt import DbtCliResource
from packaging.version import Version

from m6rec.data.warehouse import connect
from m6rec.files import staged, write_atomic
from m6rec.models.backbones import load_causal_lm, load_encoder, pick_device, tiny_causal_lm, tiny_encoder
from m6rec.training.profiles import get_profile
from orchestration import settings


class DbtCli(DbtCliResource):
    """dagster-dbt's dbt CLI, less two things it does before every invocation that this project gets
    nothing from (seconds of every run, a large part of a small daily drop's dbt step):

    - ``dbt --version`` in a subprocess, to learn the version of the dbt-core installed beside this
      interpreter: read from the package metadata instead (a dbt elsewhere still gets asked);
    - a dbt Core adapter handle (loading the profile, the project and its macros), which dagster-dbt
      uses only to fetch row counts or column metadata: no asset here asks for either (publish records
      the row counts of the marts it publishes)."""

    @cached_property
    def _cli_version(self) -> Version:
        if Path(self.dbt_executable).parent == Path(sys.executable).parent:
            return Version(installed_version("dbt-core"))
        return super()._cli_version

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:
        return None


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


class ArtifactStore(dg.ConfigurableResource):
    """Where the pipeline keeps what it trains: model weights, the candidate and champion bundles, the
    record of the last Bento. A local folder today (``$M6REC_ARTIFACTS``); the interface — keys, atomic
    :meth:`write` / :meth:`replace`, :meth:`read_text` — is what an object store would implement later.

    Keys are relative POSIX paths (``"retriever/model.pt"``, ``"champion"``); every write goes through
    :mod:`m6rec.files`, so a killed run never leaves a half-written artefact."""

    root: str

    def path(self, key: str) -> Path:
        """The local path of ``key`` (its parent folder created), for code that reads or writes it
        itself: the m6rec savers, which write atomically through :mod:`m6rec.files` too."""
        parts = PurePosixPath(key).parts
        if not parts or PurePosixPath(key).is_absolute() or ".." in parts:
            raise ValueError(f"artefact key must be a relative path inside the store, got {key!r}")
        path = Path(self.root).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def read_text(self, key: str) -> str:
        return self.path(key).read_text(encoding="utf-8")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_text(key))

    def write(self, key: str, data: str | bytes) -> Path:
        """Write one artefact atomically (text as UTF-8)."""
        return write_atomic(self.path(key), data)

    @contextmanager
    def replace(self, key: str) -> Iterator[Path]:
        """Yield a temporary local path; write a file or a folder there. It replaces ``key`` in one
        step when the block succeeds and is discarded when it raises (:func:`m6rec.files.staged`)."""
        with staged(self.path(key)) as tmp:
            yield tmp

    def remove(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


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
    steps: int | None = None  # the retrievers' and CTR models' step limit instead of the profile's
    patience: int | None = None  # evaluations without improvement before an early stop (profile default)
    seed: int = 0
    # CPU threads for torch. One is the safe default: with any other process busy (the Dagster daemon,
    # a second run), two threads on two cores ran ~10x slower than one here.
    torch_threads: int = 1
    # The causal LM bundled for explanations: "auto" (tiny for smoke, SmolLM2 otherwise), "none", or
    # any HF checkpoint folder / hub id / GGUF.
    explainer: str = "auto"
    # Catalogues of this many items or more are served from an ANN graph built into the bundle
    # (m6rec.serving.item_index); smaller ones are scanned exactly.
    ann_exact_below: int = 50_000

    def apply_threads(self) -> None:
        import torch

        torch.set_num_threads(self.torch_threads)

    def resolved(self):
        overrides = {"budget_s": self.budget_s, "budgets": {}} if self.budget_s is not None else {}
        if self.steps is not None:
            overrides |= {"retriever_steps": self.steps, "ranker_steps": self.steps}
        if self.patience is not None:
            overrides["patience"] = self.patience
        if self.encoder:
            overrides["encoder"] = self.encoder
        return get_profile(self.profile, **overrides)

    def budget(self, model: str) -> float | None:
        """The wall-clock budget of one trained model (``budget_s``, when set, replaces every one)."""
        return self.resolved().budget(model)

    def load_explainer(self):
        """The explainer LM, or None when switched off."""
        if self.explainer == "none":
            return None
        name = self.explainer
        if name == "auto":
            name = "tiny" if self.resolved().encoder == "tiny" else "smollm2"
        if name == "tiny":
            return tiny_causal_lm(seed=self.seed, cache_dir=settings.cache_dir()).to(pick_device())
        return load_causal_lm(name, settings.cache_dir(), device=pick_device())

    def load_encoder(self):
        """The profile's encoder on the GPU when there is one (cache building and scoring run there)."""
        name = self.resolved().encoder
        if name == "tiny":
            return tiny_encoder(seed=self.seed).to(pick_device())
        return load_encoder(name, settings.cache_dir(), device=pick_device())


@dg.definitions
def resources() -> dg.Definitions:
    # In-process execution: one process per run, so DuckDB's single writer is never contended
    # inside a run (multiprocess would also re-import torch and dbt for every step).
    return dg.Definitions(
        executor=dg.in_process_executor,
        resources={
            "warehouse": WarehouseResource(database=str(settings.warehouse_path())),
            "artifacts": ArtifactStore(root=str(settings.artifacts_dir())),
            "dbt": DbtCli(
                project_dir=str(settings.DBT_PROJECT_DIR), dbt_executable=settings.dbt_executable()
            ),
            "quality": QualityThresholds(),
            "model_settings": ModelSettings(
                profile=os.environ.get("M6REC_PROFILE", "default"),
                torch_threads=int(os.environ.get("M6REC_TORCH_THREADS", "1")),
            ),
        },
    )
