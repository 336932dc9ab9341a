"""The project's dbt CLI resource skips what dagster-dbt does before each invocation that this project
gets nothing from (``dbt --version`` in a subprocess, a dbt Core adapter handle)."""

from __future__ import annotations

import inspect
from functools import cached_property
from importlib.metadata import version

from dagster_dbt import DbtCliResource
from dagster_dbt.core import resource as dagster_dbt_resource
from packaging.version import Version

from orchestration import settings
from orchestration.defs.resources import DbtCli


def test_dbt_version_comes_from_the_installed_package_without_a_subprocess(monkeypatch) -> None:
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"spawned {args}")

    monkeypatch.setattr(dagster_dbt_resource, "check_output", no_subprocess)
    dbt = DbtCli(project_dir=str(settings.DBT_PROJECT_DIR), dbt_executable=settings.dbt_executable())
    assert dbt._cli_version == Version(version("dbt-core"))
    assert dbt._initialize_dbt_core_adapter(["build"]) is None


def test_the_overridden_members_still_exist_in_dagster_dbt() -> None:
    """If dagster-dbt renamed them, the overrides above would silently stop saving anything."""
    assert isinstance(inspect.getattr_static(DbtCliResource, "_cli_version"), cached_property)
    assert callable(inspect.getattr_static(DbtCliResource, "_initialize_dbt_core_adapter"))
    source = inspect.getsource(DbtCliResource.cli)
    assert "self._cli_version" in source and "self._initialize_dbt_core_adapter(" in source
