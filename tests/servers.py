"""A server process for a test (``bentoml serve``, ``dg dev``): started in its own process group, polled
until it answers, stopped afterwards.

Start-up waits are generous on purpose: on a busy 2-core CI machine importing torch, transformers and
Dagster can take minutes. A server that exits, or is still not ready after ``START_WAIT_S``, fails the
test with the tail of its log; pytest-timeout bounds every test as a whole. Nothing here measures speed
(that is ``bench/``'s job)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

START_WAIT_S = 600.0
POLL_S = 1.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextlib.contextmanager
def server_process(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    ready: Callable[[], bool],
    name: str,
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (output to ``log``) and yield it once ``ready()`` returns true; ``ready`` may raise
    while the server is still starting. The process group is terminated, then killed, afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{log_tail(log)}")
            with contextlib.suppress(Exception):
                if ready():
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{name} was not ready after {START_WAIT_S:.0f} s:\n{log_tail(log)}")
            time.sleep(POLL_S)
        yield proc
    finally:
        # the whole group: dg dev and bentoml serve run their workers as child processes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
