#!/usr/bin/env bash
# The GPU suite (bench/gpu_suite.py) in one short script, for a lent GPU machine that has PyTorch,
# transformers, peft, accelerate, pandas and scikit-learn but no network and no m6rec venv.
#
#   bench/gpu_suite.sh pack         here, after `make data`: writes .gpu/ (git-ignored): the marts as
#                                   Parquet, MiniLM in fp16, SmolLM2's GGUF in two parts, the gguf wheel
#   bench/gpu_suite.sh run          there: puts the parts together, runs the suite under a 9-minute
#                                   limit, writes $OUT/gpu_suite.json (and bench/results/gpu_suite.json)
#   bench/gpu_suite.sh smoke        anywhere: the same code path on tiny random models (CPU is fine)
#
# A device call carries at most 64 MiB, so the weights travel in three calls to one warm machine
# (paths carried once stay there): carry [.gpu/data, .gpu/minilm, .gpu/wheels] with `true`, then
# [.gpu/smollm2.part-aa] with `true`, then [.gpu/smollm2.part-ab] with `bash bench/gpu_suite.sh run`.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

case "$mode" in
pack)
  PY=.venv/bin/python
  rm -rf .gpu && mkdir -p .gpu/wheels
  $PY - <<'EOF'
import duckdb, os
from m6rec.data.marts import load_rec_data, save_rec_data
from m6rec.models.backbones import load_encoder, smollm2_gguf_path
import torch
db = os.environ.get("M6REC_DUCKDB_PATH", "data/warehouse.duckdb")
folder = save_rec_data(load_rec_data(db), ".gpu/data")
with duckdb.connect(db, read_only=True) as conn:
    conn.execute("select * from marts.ctr_examples").df().to_parquet(folder / "ctr_examples.parquet")
encoder = load_encoder("minilm", dtype=torch.float16)
encoder.model.save_pretrained(".gpu/minilm")
encoder.tokenizer.save_pretrained(".gpu/minilm")
print(smollm2_gguf_path())
EOF
  split -b 48m "$($PY -c 'from m6rec.models.backbones import smollm2_gguf_path; print(smollm2_gguf_path())')" \
    .gpu/smollm2.part-
  $PY -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/wheels "gguf==$($PY -c \
    'import importlib.metadata as m; print(m.version("gguf"))')"
  du -sh .gpu/*
  ;;
run)
  OUT=${OUT:-bench/results}
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  mkdir -p /tmp/smollm2 && cat .gpu/smollm2.part-* >/tmp/smollm2/$GGUF
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  timeout 540 python3 bench/gpu_suite.py --data .gpu/data --encoder .gpu/minilm \
    --lm /tmp/smollm2/$GGUF --cache /tmp/m6rec-cache --out "$OUT/gpu_suite.json"
  [ "$OUT" = bench/results ] || cp "$OUT/gpu_suite.json" bench/results/gpu_suite.json
  ;;
smoke)
  PY=${PY:-.venv/bin/python}
  dir=$(mktemp -d)
  $PY - "$dir" <<'EOF'
import sys
from tests.synthetic import ctr_frame, synthetic_rec_data
from m6rec.data.marts import save_rec_data
data = synthetic_rec_data()
save_rec_data(data, sys.argv[1])
ctr_frame(data).to_parquet(f"{sys.argv[1]}/ctr_examples.parquet")
EOF
  $PY bench/gpu_suite.py --data "$dir" --encoder tiny --lm tiny --budget-s 5 --shots 16 \
    --eval-examples 32 --out "${OUT:-$dir}/gpu_suite.json"
  ;;
*)
  echo "usage: bench/gpu_suite.sh pack|run|smoke" >&2
  exit 2
  ;;
esac
