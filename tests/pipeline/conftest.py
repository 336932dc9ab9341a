"""Fixtures of the pipeline tier."""

from __future__ import annotations

import dagster as dg
import pytest

from tests import SHARED_CACHE


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory):
    """The whole graph in-process once per test module, ``smoke`` profile (tiny random backbones), on
    MovieLens-100K in a fresh data folder: ``(home, result)``."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("M6REC_HOME", str(home))
        mp.setenv("M6REC_DUCKDB_PATH", str(home / "warehouse.duckdb"))
        mp.setenv("M6REC_CACHE", str(SHARED_CACHE))
        mp.setenv("M6REC_PROFILE", "smoke")
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        from orchestration.definitions import defs

        job = defs().resolve_job_def("m6rec_pipeline")
        result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        yield home, result
