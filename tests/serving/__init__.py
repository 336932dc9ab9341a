"""The BentoML service for real (all ``slow``): ``bentoml serve`` and ``bentoml build`` over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.servers import free_port, server_process

REQUEST_TIMEOUT_S = 300.0  # a hang guard, not a speed check: pytest-timeout bounds each test anyway


@contextlib.contextmanager
def bentoml_serve(target: str, *, cwd: Path, log: Path, extra_env: dict[str, str]) -> Iterator[httpx.Client]:
    """``bentoml serve target`` on a free localhost port; yields a client once ``/readyz`` answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
        "M6REC_TORCH_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra_env,
    }
    cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT_S, trust_env=False)
    try:
        with server_process(
            cmd,
            cwd=cwd,
            env=env,
            log=log,
            ready=lambda: client.get("/readyz", timeout=5.0).status_code == 200,
            name="bentoml serve",
        ):
            yield client
    finally:
        client.close()


def post(client: httpx.Client, route: str, body) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(route, content=content, headers={"Content-Type": "application/json"})
