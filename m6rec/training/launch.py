"""Train the tuned-LM retriever outside Dagster, on one process or many.

The pipeline trains in-process; this entry point runs the very same training functions so that
``accelerate launch`` can spread one model over N processes (DDP: NCCL on GPUs, gloo on CPUs)::

    # one process (CPU or one GPU)
    python -m m6rec.training.launch --warehouse data/warehouse.duckdb --out runs/lm_retriever
    # 8 GPUs on one machine
    accelerate launch --multi_gpu --num_processes 8 -m m6rec.training.launch \\
        --warehouse data/warehouse.duckdb --profile full --out runs/lm_retriever
    # 2 CPU processes on gloo (what tests/unit/test_distributed.py runs; --cpu would start one)
    accelerate launch --multi_gpu --num_processes 2 -m m6rec.training.launch --marts DIR --out DIR

``--batch-size`` is per process: N processes with batch B step like one process with batch B and
``--grad-accum N``. The main process writes ``<out>/model.pt`` (the best weights), ``result.json``
(steps, seconds, best validation metric, processes) and the trainer's checkpoints and metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from m6rec.data.marts import RecData, load_rec_data, read_rec_data
from m6rec.models.backbones import load_encoder, tiny_encoder
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_retrieval import train_lm_retriever
from m6rec.text.textify import SEGMENT_STYLE
from m6rec.training.profiles import get_profile
from m6rec.training.trainer import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--warehouse", help="the pipeline's DuckDB file (its published marts)")
    source.add_argument("--marts", help="a folder written by m6rec.data.marts.save_rec_data")
    parser.add_argument("--profile", default="default", help="smoke | default | full")
    parser.add_argument("--encoder", help="HF folder or hub id instead of the profile's ('tiny' for tests)")
    parser.add_argument("--steps", type=int, help="instead of the profile's step limit")
    parser.add_argument("--batch-size", type=int, help="per process, instead of the profile's")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--eval-every", type=int, help="instead of the profile's")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget instead of the profile's")
    parser.add_argument(
        "--dropout",
        type=float,
        help="every dropout (the model's and the pretrained layers') instead of theirs",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="new weights (pretrained ones: lm_lr)")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--lr-decay", choices=["none", "linear"], help="instead of the profile's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = {"encoder": args.encoder} if args.encoder else {}
    profile = get_profile(args.profile, **overrides)
    data: RecData = load_rec_data(args.warehouse) if args.warehouse else read_rec_data(args.marts)
    torch.manual_seed(args.seed)  # the tiny encoder's weights: the same on every process
    encoder = tiny_encoder(seed=args.seed) if profile.encoder == "tiny" else load_encoder(profile.encoder)
    # Every process builds the cache itself: no process waits on another's file.
    cache = build_lower_cache(encoder, data, SEGMENT_STYLE, profile.lm_split(encoder.num_layers))
    config = profile.lm_retriever
    if args.dropout is not None:
        config = dataclasses.replace(config, dropout=args.dropout)
        for module in encoder.model.modules():  # the tuned top layers are copies of these
            if isinstance(module, torch.nn.Dropout):
                module.p = args.dropout
    batch_size = args.batch_size or profile.lm_batch_size
    out = Path(args.out)
    train_config = TrainConfig(
        output_dir=str(out / "run"),
        max_steps=args.steps or profile.retriever_steps,
        lr=args.lr,
        grad_accum=args.grad_accum,
        eval_every=args.eval_every or profile.lm_eval_every,
        metric="ndcg@10",
        patience=profile.patience,
        max_seconds=args.budget_s if args.budget_s is not None else profile.budget("lm_retriever"),
        warmup_steps=args.warmup_steps,
        lr_decay=args.lr_decay or profile.lm_lr_decay,
        seed=args.seed,
        resume=False,
        progress=False,
    )
    model, result = train_lm_retriever(
        data, cache, encoder.model, config, train_config, batch_size=batch_size, log=print
    )
    from accelerate import PartialState  # the state the trainer's Accelerator set up

    state = PartialState()
    summary = {
        "model": "lm_retriever",
        "processes": state.num_processes,
        "batch_size_per_process": batch_size,
        "grad_accum": args.grad_accum,
        **{k: v for k, v in dataclasses.asdict(result).items() if k != "history"},
    }
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "model.pt")
        (out / "result.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


if __name__ == "__main__":
    main()
