"""Time the README's main command end to end and record what it produced.

Runs ``make run`` (the whole graph on MovieLens-100K with the ``default`` profile, ending in a built
Bento), then reads the run's evaluation (``$M6REC_ARTIFACTS/evaluation.json``), which models serve and
the Bento that was built.

Usage: python bench/main_command.py [--target run]
Writes bench/results/main_command.json (``wall_seconds``, ``within_20_minutes``, ``evaluation_table``,
``serving``, ``retrieval``/``ctr`` test metrics, ``bento``, ``bentoml_home_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import cpu_model  # noqa: E402

from m6rec.evaluation.offline import EvaluationReport  # noqa: E402


def seconds(duration: str) -> float:
    """Dagster's step durations ("533ms", "5.6s", "4m52s", "1h4m") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (the BentoML store: the Bento and its model)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="run", help="the make target to time")
    args = parser.parse_args()
    artifacts = Path(os.environ.get("M6REC_ARTIFACTS", REPO / "data" / "artifacts"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    start = time.perf_counter()
    proc = subprocess.run(["make", args.target], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    (REPO / "data" / "main_command.log").write_text(log)
    if proc.returncode != 0:
        sys.exit(f"make {args.target} failed (exit {proc.returncode}); log in data/main_command.log")
    evaluation = json.loads((artifacts / "evaluation.json").read_text())
    report = EvaluationReport.from_dict(evaluation)
    bento = artifacts / "bento.json"
    steps = re.findall(r'STEP_SUCCESS - Finished execution of step "([^"]+)" in ([\w.]+)\.$', log, re.M)
    out = {
        "command": f"make {args.target}",
        "started_at": started,
        "wall_seconds": round(wall, 1),
        "within_20_minutes": wall <= 20 * 60,
        "profile": os.environ.get("M6REC_PROFILE", "default"),
        "torch_threads": os.environ.get("M6REC_TORCH_THREADS", "Makefile default"),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "step_seconds": {name: round(seconds(duration), 1) for name, duration in steps},
        "serving": report.serving,
        "retrieval": report.retrieval,
        "ctr": report.ctr,
        "valid": report.valid,
        "evaluation_table": report.markdown(),
        "bento": json.loads(bento.read_text()) if bento.exists() else None,
    }
    if out["bento"]:
        out["bentoml_home_mb"] = round(folder_bytes(Path(out["bento"]["bentoml_home"])) / 2**20, 1)
    path = REPO / "bench" / "results" / "main_command.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(out["evaluation_table"])
    print(f"make {args.target}: {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
