"""bench/gpu_suite.sh runs its whole code path on tiny random models (CPU), so the script a lent GPU
machine runs is exercised in CI: every model trains and reports throughput and quality."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_gpu_suite_smoke_writes_every_model(tmp_path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "M6REC_TORCH_THREADS": "1"}
    subprocess.run(["bash", "bench/gpu_suite.sh", "smoke"], cwd=REPO, env=env, check=True, timeout=900)
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    models = report["models"]
    assert len(models) == 5
    for row in models.values():
        assert row["steps"] > 0 and row["samples_per_second"] > 0 and row["model_tflops_per_second"] > 0
        assert row["mfu"] == "not measured (no GPU peak known)"  # CPU
    lm_rows = [m for name, m in models.items() if name.startswith("m6rec LM")]
    assert all(m["lm_trainable_parameters"] > 0 for m in lm_rows)
    explainer = next(m for name, m in models.items() if " explainer, LoRA on " in name)
    assert explainer["tuning"]["trainable_parameters"] > 0 and explainer["decoding"] == "grounded"
    assert explainer["checked_explanations"] > 0 and 0.0 <= explainer["valid_false_statement_rate"] <= 1.0
