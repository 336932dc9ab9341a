"""The training loop: it learns, stops early, keeps the best weights and resumes after a kill."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from m6rec.training.trainer import TrainConfig, Trainer


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.01 * torch.randn(256, generator=g)
    return x, y


def _trainer(
    out: Path, max_steps: int, *, patience: int = 100, eval_x=None, dropout: float = 0.0, seeded_loader=True
) -> Trainer:
    x, y = _problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    generator = torch.Generator().manual_seed(0) if seeded_loader else None
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=generator)

    def loss_fn(m, batch):
        bx, by = batch
        bx = torch.nn.functional.dropout(bx, dropout, training=dropout > 0)  # draws from the global RNG
        return torch.nn.functional.mse_loss(m(bx).squeeze(-1), by)

    def eval_fn(m):
        return {"mse": float(torch.nn.functional.mse_loss(m(x).squeeze(-1), y))}

    cfg = TrainConfig(
        output_dir=str(out),
        max_steps=max_steps,
        lr=0.05,
        eval_every=10,
        metric="mse",
        mode="min",
        patience=patience,
        progress=False,
    )
    return Trainer(model, loss_fn, loader, eval_fn, cfg)


def test_learns_and_logs_metrics(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 60)
    result = trainer.fit()
    assert result.steps == 60 and result.stopped == "max_steps"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40, 50, 60]
    assert lines[-1]["mse"] < 0.2 * lines[0]["mse"] and result.best_metric == lines[-1]["mse"]
    assert (tmp_path / "best.pt").exists() and (tmp_path / "checkpoint" / "trainer_state.json").exists()
    # Throughput counts optimisation steps only: six evaluations and checkpoints are not in it.
    assert 0 < result.step_seconds < result.seconds and result.steps_per_second == 60 / result.step_seconds


def test_time_budget_stops_between_evaluations_and_evaluates_that_step(tmp_path: Path) -> None:
    """A budget is honoured within a step, not an evaluation interval: on a large log one interval of
    ``eval_every`` steps can outlast the whole budget."""
    trainer = _trainer(tmp_path, 10_000)
    trainer.config = replace(trainer.config, eval_every=5_000, max_seconds=0.3)
    inner = trainer.loss_fn

    def slow_loss(m, batch):
        time.sleep(0.02)
        return inner(m, batch)

    trainer.model.loss_fn = slow_loss
    result = trainer.fit()
    assert result.stopped == "time_budget"
    assert 0.3 <= result.seconds < 2.0 and 5 <= result.steps < 100
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [result.steps] == [result.best_step]


@pytest.mark.parametrize(
    "kw",
    [{}, {"dropout": 0.3, "seeded_loader": False}],
    ids=[
        "plain",
        "dropout_unseeded_loader",
    ],  # the second diverged after a resume until the trainer seeded it
)
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, kw: dict) -> None:
    straight = _trainer(tmp_path / "straight", 40, **kw)
    straight.fit()
    first = _trainer(tmp_path / "resumed", 20, **kw)  # "killed" after the step-20 checkpoint (mid-epoch)
    first.fit()
    second = _trainer(tmp_path / "resumed", 40, **kw)
    result = second.fit()
    assert result.steps == 40
    a = straight.trained_model.weight
    b = second.trained_model.weight
    torch.testing.assert_close(a, b)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]


def test_early_stopping_keeps_best_weights(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 1000, patience=2)
    trainer.config.lr = 0.05
    result = trainer.fit()
    assert result.stopped == "early_stopping" and result.steps < 1000
    final = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.best_metric == min(r["mse"] for r in final)


def test_linear_decay_and_parameter_groups(tmp_path) -> None:
    """Warm-up then a linear fall to 0 by max_steps; parameter groups keep their own learning rates and a
    group with nothing trainable is dropped."""
    x, y = _problem()
    fast, slow, frozen = torch.nn.Linear(4, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    frozen.requires_grad_(False)
    model = torch.nn.ModuleDict({"fast": fast, "slow": slow, "frozen": frozen})
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    cfg = TrainConfig(
        output_dir=str(tmp_path), max_steps=10, lr=0.1, warmup_steps=2, lr_decay="linear", progress=False
    )
    groups = [
        {"params": list(fast.parameters()), "lr": 0.1},
        {"params": list(slow.parameters()), "lr": 0.01},
        {"params": list(frozen.parameters()), "lr": 1.0},
    ]
    trainer = Trainer(
        model,
        lambda m, b: torch.nn.functional.mse_loss(m["slow"](m["fast"](b[0])).squeeze(-1), b[1]),
        loader,
        lambda m: {"ndcg@10": 0.0},
        cfg,
        params=groups,
    )
    factors = [trainer._lr_factor(step) for step in range(11)]
    assert factors[0] == 0.5 * 1.0 and factors[1] == 0.9  # warm-up x decay
    assert factors[5] == 0.5 and factors[10] == 0.0
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.05, 0.005]  # step 0: half of each
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit()
    after = model.state_dict()
    assert torch.equal(after["frozen.weight"], before["frozen.weight"])
    assert not torch.equal(after["slow.weight"], before["slow.weight"])
    with pytest.raises(ValueError, match="lr_decay"):
        Trainer(model, lambda m, b: 0, loader, lambda m: {}, replace(cfg, lr_decay="cosine"))
