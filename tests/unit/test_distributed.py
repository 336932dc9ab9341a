"""The trainer under ``accelerate launch`` with two CPU processes (DDP over gloo) trains the LM retriever
like one process does: two processes with batch B step exactly like one process with batch B and two
gradient-accumulation steps (the same batches, the same averaged gradient, the same learning-rate
schedule), so their weights must agree to float tolerance. Dropout is off: each process draws its own
masks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m6rec.data.marts import save_rec_data
from tests.synthetic import synthetic_rec_data

COMMON = ["--profile", "smoke", "--encoder", "tiny", "--steps", "6", "--eval-every", "3", "--dropout", "0"]
COMMON += ["--batch-size", "4", "--budget-s", "600", "--warmup-steps", "2", "--lr-decay", "linear"]


def _launch(args: list[str], out: Path, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    prefix = [sys.executable, "-m", "m6rec.training.launch"]
    if processes > 1:
        # --multi_gpu is accelerate's torchrun launcher; without CUDA the trainer's processes form one
        # gloo group (--cpu would start a single process: accelerate spreads CPU jobs only via mpirun).
        prefix = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        prefix += ["--num_processes", str(processes)]
        prefix += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
        prefix += ["m6rec.training.launch"]
    done = subprocess.run(
        [*prefix, *args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def marts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_rec_data(synthetic_rec_data(n_users=48, length=14), tmp_path_factory.mktemp("marts"))


def test_two_cpu_processes_train_like_one_with_gradient_accumulation(marts: Path, tmp_path: Path) -> None:
    one = _launch(["--marts", str(marts), *COMMON, "--grad-accum", "2"], tmp_path / "one", processes=1)
    two = _launch(["--marts", str(marts), *COMMON], tmp_path / "two", processes=2)
    assert (one["processes"], two["processes"]) == (1, 2) and one["steps"] == two["steps"] == 6
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    moved = [k for k in a if a[k].is_floating_point() and "lora" not in k]
    assert moved
    for key in moved:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)
    assert two["best_metric"] == pytest.approx(one["best_metric"], abs=1e-6)
    # the main process alone wrote the metrics: one line per evaluation
    lines = (tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]
