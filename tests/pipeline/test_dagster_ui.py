"""What the UI does, through the GraphQL API of a real `dg dev`: the graph loads with its checks, and a
launched run (the Materialize button) succeeds."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import REPO_ROOT, SHARED_CACHE
from tests.servers import free_port, server_process

pytestmark = pytest.mark.slow
RUN_WAIT_S = 600


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("ui")
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "M6REC_HOME": str(home / "data"),
        "M6REC_DUCKDB_PATH": str(home / "data" / "warehouse.duckdb"),
        "M6REC_CACHE": str(SHARED_CACHE),
        "M6REC_INCOMING": str(home / "incoming"),
        "M6REC_PROFILE": "smoke",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        log=home / "dg_dev.log",
        ready=lambda: bool(_graphql(port, REPOSITORIES)["repositoriesOrError"]["nodes"]),
        name="dg dev",
    ):
        yield port, _graphql(port, REPOSITORIES)["repositoriesOrError"]["nodes"][0]


def test_graph_and_checks_load(dagster_dev) -> None:
    port, _ = dagster_dev
    nodes = _graphql(port, "{ assetNodes { assetKey { path } groupName hasAssetChecks } }")["assetNodes"]
    keys = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    for key in (
        "raw/ratings",
        "raw_audit/ratings",
        "marts/splits",
        "marts_audit/splits",
        "segment_cache",
        "lm_retriever",
        "lm_ranker",
        "frozen_retriever",
        "segment_ranker",
        "offline_evaluation",
        "promoted_model",
    ):
        assert key in keys, sorted(keys)
    # Write-audit-publish: the blocking suites check the audit copies, before anything is published.
    assert keys["raw_audit/ratings"]["hasAssetChecks"] and keys["marts_audit/splits"]["hasAssetChecks"]


def test_launched_run_succeeds(dagster_dev) -> None:
    port, repo = dagster_dev
    selector = {
        "repositoryLocationName": repo["location"]["name"],
        "repositoryName": repo["name"],
        "jobName": "data_pipeline",
    }
    launched = _graphql(
        port,
        """
        mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
          __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {"params": {"selector": selector, "runConfigData": {}}},
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline, status = time.monotonic() + RUN_WAIT_S, None  # generous: a hang guard, not a speed check
    while time.monotonic() < deadline:
        status = _graphql(
            port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(3)
    assert status == "SUCCESS", status
