"""One training loop for every m6rec model, on Hugging Face ``accelerate``.

CUDA is picked automatically (bf16 autocast there; fp32 on CPU, where bf16 is slower), with
gradient accumulation, evaluation every N steps and early stopping on a validation metric, the best
weights kept, a checkpoint after every evaluation that a killed run resumes from, seeds, a tqdm
progress bar and metrics appended to ``metrics.jsonl`` for the pipeline to read.

The same loop runs unchanged under ``accelerate launch --num_processes N`` (DDP: NCCL on GPUs, gloo on
CPUs; see docs/scaling.md): each process draws its own batches, gradients are averaged across
processes, the main process alone evaluates and writes files, and every decision that could differ
between processes (the clock behind the time budget and the learning-rate schedule, the validation
metric) is taken on the main process and broadcast.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    broadcast_object_list,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from m6rec.files import replace_folder, staged

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
EvalFn = Callable[[torch.nn.Module], Mapping[str, float]]


@dataclass
class TrainConfig:
    """Loop settings; the model's own hyperparameters live with the model."""

    output_dir: str
    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # "linear": the learning rate falls linearly to 0 as training approaches max_steps or, when it comes
    # first, the time budget (a budgeted run then ends on small steps instead of a noisy last one)
    lr_decay: str = "none"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    eval_every: int = 100
    metric: str = "ndcg@10"
    mode: str = "max"  # or "min" (e.g. logloss)
    patience: int = 5  # evaluations without improvement before stopping
    max_seconds: float | None = None  # wall-clock budget: checked every step; the step that passes it is
    # evaluated (so the best weights are chosen among evaluated steps only) and training stops
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" = bf16 on CUDA, none on CPU
    resume: bool = True
    progress: bool = True


@dataclass
class TrainResult:
    best_metric: float
    best_step: int
    steps: int
    seconds: float
    stopped: str
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    step_seconds: float = 0.0  # forward, backward and optimiser only (no evaluation or checkpoints)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.step_seconds if self.step_seconds > 0 else math.nan


def _trainable(params: Iterable[Any]) -> list[Any]:
    """The parameters that require grad; parameter groups (dicts with their own ``lr``, ...) keep their
    settings, and a group left with nothing to train is dropped."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        return [g for g in groups if g["params"]]
    return [p for p in params if p.requires_grad]


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


class _LossModule(torch.nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: DDP averages gradients through hooks armed by its
    wrapper's ``forward``, so the loss must be computed through a module call, whatever method of the
    model computes it."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class Trainer:
    """Runs ``loss_fn(model, batch)`` over ``train_loader`` (cycled) until ``max_steps``, early stopping
    or the time budget; ``eval_fn(model)`` returns validation metrics including ``config.metric``."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        train_loader: DataLoader,
        eval_fn: EvalFn,
        config: TrainConfig,
        *,
        log: Callable[[str], None] | None = None,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]] | None = None,
    ) -> None:
        self.config, self.loss_fn, self.eval_fn, self.log = config, loss_fn, eval_fn, log or (lambda _: None)
        precision = config.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        # A seedable sampler reshuffles by (seed, epoch), so a resumed run sees the same batches.
        self.accelerator = Accelerator(
            # Without CUDA, processes started by `accelerate launch` / torchrun join one gloo group
            # (accelerate forms a CPU group only when told the job is on CPUs).
            cpu=not torch.cuda.is_available(),
            mixed_precision=precision,
            gradient_accumulation_steps=config.grad_accum,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            # Some models hold weights a given loss does not touch (e.g. heads used only in serving).
            # Buffers are constants (cached states, popularity buckets; no batch norm): DDP syncs them
            # once when it wraps the model, not again before every forward (catalogue-sized tables).
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
            ],
            # The schedule counts optimiser steps (accelerate's default steps it once per process).
            step_scheduler_with_optimizer=False,
        )
        if not self.accelerator.is_main_process:
            self.log = lambda _: None
        set_seed(config.seed)
        optimizer = torch.optim.AdamW(
            _trainable(model.parameters() if params is None else params),
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self._clock: tuple[float, float] | None = None  # (start, seconds before it): set by fit()
        if config.lr_decay not in ("none", "linear"):
            raise ValueError(f"lr_decay must be 'none' or 'linear', got {config.lr_decay!r}")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        if getattr(train_loader, "generator", None) is None:
            # Starting a DataLoader iterator draws a seed from its generator, or from the global RNG when it
            # has none; a resumed run starts one mid-epoch where the uninterrupted run did not, so with the
            # global RNG its dropout masks (and every other random draw) would shift from there on.
            train_loader.generator = torch.Generator().manual_seed(config.seed)
        self.trained_model = model  # the model itself (``self.model`` is its prepared loss wrapper)
        self.model, self.optimizer, self.train_loader, self.scheduler = self.accelerator.prepare(
            _LossModule(model, loss_fn), optimizer, train_loader, scheduler
        )
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_metric": None,
            "best_step": 0,
            "bad_evals": 0,
            "seconds": 0.0,
            "step_seconds": 0.0,
        }

    def _lr_factor(self, step: int) -> float:
        """Warm-up, then (``lr_decay="linear"``) a linear fall to 0 over the run's steps or its time
        budget, whichever is further along."""
        cfg = self.config
        factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.lr_decay == "linear":
            done = step / max(cfg.max_steps, 1)
            if cfg.max_seconds and self._clock is not None:
                done = max(done, self._elapsed() / cfg.max_seconds)
            factor *= max(0.0, 1.0 - done)
        return factor

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _from_main(self, value: Any) -> Any:
        """The main process's ``value`` on every process (itself when there is one process)."""
        if self.accelerator.num_processes == 1:
            return value
        return broadcast_object_list([value], from_process=0)[0]

    def _elapsed(self) -> float:
        """Seconds of training so far (including before a resume) by the main process's clock."""
        start, before = (
            self._clock if self._clock is not None else (time.perf_counter(), self.state["seconds"])
        )
        return self._from_main(before + time.perf_counter() - start)

    # --- checkpoints -------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        """Every process writes its part (its RNG state; the main one the weights and optimiser) into
        one folder, which the main process then swaps in whole: a kill leaves the last checkpoint."""
        tmp = self.out / "checkpoint.tmp-saving"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp), safe_serialization=False)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            (tmp / "trainer_state.json").write_text(json.dumps(self.state))
            replace_folder(tmp, self.out / "checkpoint")
        self.accelerator.wait_for_everyone()

    def _save_best(self) -> None:
        if self.is_main:
            with staged(self.out / "best.pt") as tmp:
                torch.save(self.trained_model.state_dict(), tmp)
        self.accelerator.wait_for_everyone()

    def _maybe_resume(self) -> bool:
        ckpt = self.out / "checkpoint"
        if not (self.config.resume and (ckpt / "trainer_state.json").exists()):
            return False
        self.accelerator.load_state(str(ckpt))
        self.state = json.loads((ckpt / "trainer_state.json").read_text())
        self.log(f"resumed from {ckpt} at step {self.state['step']}")
        return True

    # --- the loop ------------------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        """Validation metrics, computed by the main process (the weights are the same on every one)."""
        metrics = None
        if self.is_main:
            self.model.eval()
            with torch.no_grad():
                metrics = dict(self.eval_fn(self.trained_model))
            self.model.train()
        return self._from_main(metrics)

    def _batches(self):
        """Cycle over epochs; after a resume, skip the batches of the interrupted epoch already seen."""
        while True:
            loader = self.train_loader
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(self.state["epoch"])
            if self.state["batch_in_epoch"]:
                loader = self.accelerator.skip_first_batches(loader, self.state["batch_in_epoch"])
            for batch in loader:
                self.state["batch_in_epoch"] += 1
                yield batch
            self.state["epoch"] += 1
            self.state["batch_in_epoch"] = 0

    def fit(self) -> TrainResult:
        cfg = self.config
        self._maybe_resume()
        if self.state["step"] == 0 and self.state["best_metric"] is None and self.is_main:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        start, elapsed_before = time.perf_counter(), self.state["seconds"]
        self._clock = (start, elapsed_before)
        history: list[dict[str, float]] = []
        stopped = "max_steps"
        self.model.train()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.state["step"],
            disable=not (cfg.progress and self.is_main),
            desc="train",
        )
        running, seen = 0.0, 0
        batches = self._batches()
        while self.state["step"] < cfg.max_steps:
            step_start = time.perf_counter()
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                with self.accelerator.accumulate(self.model), self.accelerator.autocast():
                    loss = self.model(batch)
                    self.accelerator.backward(loss)
                    if cfg.max_grad_norm and self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    if self.accelerator.sync_gradients:  # once per optimiser step, on any number of processes
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                running, seen = running + float(loss.detach()), seen + 1
            self.state["step_seconds"] = (
                self.state.get("step_seconds", 0.0) + time.perf_counter() - step_start
            )
            self.state["step"] += 1
            bar.update(1)
            step = self.state["step"]
            # the budget is checked after every step (one step of a large log is seconds, an evaluation
            # interval minutes), and a run that passes it is evaluated once more at that step
            out_of_time = cfg.max_seconds is not None and self._elapsed() >= cfg.max_seconds
            if step % cfg.eval_every == 0 or step == cfg.max_steps or out_of_time:
                self.state["seconds"] = self._elapsed()
                metrics = self._evaluate()
                value = metrics[cfg.metric]
                record = {
                    "step": step,
                    "epoch": self.state["epoch"],
                    "train_loss": running / max(seen, 1),
                    "seconds": round(self.state["seconds"], 2),
                    **metrics,
                }
                running, seen = 0.0, 0
                history.append(record)
                if self.is_main:
                    with open(self.out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                best = self.state["best_metric"]
                if best is None or _better(value, best, cfg.mode):
                    self.state.update(best_metric=value, best_step=step, bad_evals=0)
                    self._save_best()
                else:
                    self.state["bad_evals"] += 1
                bar.set_postfix({cfg.metric: f"{value:.4f}", "best": f"{self.state['best_metric']:.4f}"})
                self.log(
                    f"step {step}: "
                    + ", ".join(
                        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()
                        if k != "step"
                    )
                )
                self._save_checkpoint()
                if self.state["bad_evals"] >= cfg.patience:
                    stopped = "early_stopping"
                    break
                if out_of_time:
                    stopped = "time_budget"
                    break
        bar.close()
        self.state["seconds"] = self._elapsed()
        self.load_best()
        best_metric = self.state["best_metric"]
        return TrainResult(
            best_metric=math.nan if best_metric is None else best_metric,
            best_step=self.state["best_step"],
            steps=self.state["step"],
            seconds=self.state["seconds"],
            stopped=stopped,
            history=history,
            device=str(self.device),
            step_seconds=self.state["step_seconds"],
        )

    def load_best(self) -> None:
        best = self.out / "best.pt"
        if best.exists():
            self.trained_model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))


def result_metadata(
    result: TrainResult, config: TrainConfig, batch_size: int | None = None
) -> dict[str, Any]:
    """What the pipeline attaches to a training asset; throughput counts optimisation steps only."""
    meta = {
        "best_" + config.metric: result.best_metric,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "steps_per_second": round(result.steps_per_second, 3),
        "stopped": result.stopped,
        "device": result.device,
        "config": asdict(config),
    }
    if batch_size:
        meta["samples_per_second"] = round(result.steps_per_second * config.grad_accum * batch_size, 1)
    return meta
