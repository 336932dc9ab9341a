"""Tuning the explainer language model to write explanations the data supports, and checking it.

Untuned, SmolLM2 continues "He will like Schindler's List (1993) because" with fluent claims the data
contradicts (bench/results/explanations.json: 17.7% false, 23.3% citing evidence). Here it is tuned,
with LoRA, on explanations built from the data: for a user's event, the history before it and the
grounded explanation of :mod:`m6rec.text.explanations` (history items that share the item's genres,
liked ones first, by the marts' like rule; the recent likes otherwise) as the continuation of the
serving prompt (:func:`m6rec.models.generation.explanation_prompt`). The loss covers only the
continuation's tokens, so the model learns what to say after "because", not to reproduce the prompt.

Cost on a CPU is what decides the shape (the M6-Rec argument, DESIGN.md §4): LoRA sits on the top
``top_layers`` decoder layers only, so the backward pass stops there; the frozen layers below run once
per example before the first epoch and their output is cached (every epoch then runs the top layers
only); and only the continuation's logits are computed (the vocabulary projection of every prompt
position would cost more than a layer).

The check (:func:`check_explainer`) is the rule set of :mod:`m6rec.evaluation.explanations` over the
explanations the tuned model writes for a seeded sample of users' *valid* events (never test): the
pipeline records it as metadata and the promotion gate reads it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m6rec.data.marts import RecData, events_of
from m6rec.evaluation.explanations import ExplanationCheck, check_explanation, summarise
from m6rec.models.backbones import CausalLM, left_padded, mask_positions
from m6rec.models.generation import explain_batch, explanation_prompt
from m6rec.models.tuning import TuningReport, apply_tuning
from m6rec.text.explanations import rated_reason
from m6rec.text.textify import DEFAULT_STYLE, Event, ItemText, Profile, TextStyle
from m6rec.text.titles import TitleIndex
from m6rec.training.trainer import TrainConfig, Trainer, TrainResult

__all__ = [
    "ExplainerCheckResult",
    "ExplainerTuningConfig",
    "ExplainerTuningResult",
    "ExplanationCase",
    "check_explainer",
    "explanation_cases",
    "tune_explainer",
]


@dataclass(frozen=True)
class ExplainerTuningConfig:
    """How the explainer is tuned and checked in one training profile. ``method``: ``"lora"`` or
    ``"none"`` (the instruct model as it is; still checked)."""

    method: str = "lora"
    examples: int = 64  # training explanations, one per sampled user (train split only)
    epochs: int = 2
    batch_size: int = 4
    lr: float = 2e-3
    lora_r: int = 8
    top_layers: int = 8  # LoRA on the top decoder layers only (0 = every layer)
    max_events: int = 5  # history events in the prompt (the bundle tells the service)
    max_length: int = 512
    max_seconds: float | None = None
    check_users: int = 40  # valid events whose explanation is checked after tuning
    max_new_tokens: int = 40  # the service's default budget (M6REC_LM_MAX_NEW_TOKENS)
    # decode with the fact slots constrained to the history (m6rec.models.grounded_decoding); the
    # bundle tells the service to decode the same way
    grounded: bool = True
    seed: int = 0


@dataclass
class ExplanationCase:
    """One explanation to write: who, what they watched before (oldest first), the item, and when."""

    user_id: Any
    profile: Profile | None
    history: list[Event]
    candidate: ItemText
    now_ts: int | None


@dataclass
class ExplainerTuningResult:
    model: nn.Module  # the LM with the LoRA weights merged in (a plain HF model, saved as is)
    report: TuningReport
    train: TrainResult
    examples: int
    seconds: float


@dataclass
class ExplainerCheckResult:
    """The check over ``cases``: the summary of :func:`~m6rec.evaluation.explanations.summarise`, the
    explanations themselves and what the rules found."""

    summary: dict[str, float | int]
    explanations: list[str]
    checks: list[ExplanationCheck]
    seconds: float

    def to_dict(self, examples: int = 5) -> dict[str, Any]:
        return {
            **self.summary,
            "seconds": round(self.seconds, 1),
            "examples": self.explanations[:examples],
            "false_claims_found": [c.false_claims for c in self.checks if c.is_false][:20],
        }


# --------------------------------------------------------------------------------------------------
# cases from the marts


def explanation_cases(
    data: RecData, split: str, n: int, *, seed: int = 0, max_events: int = 10, min_history: int = 3
) -> list[ExplanationCase]:
    """A seeded sample of ``n`` users' events to explain, with at least ``min_history`` train events
    before them. ``split="train"``: the user's last train event, explained by the train events before it
    (what the explainer is tuned on); ``"valid"``: the user's valid event after their whole train
    history (what it is checked on)."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    texts = data.item_texts()
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    events = data.events.sort_values(["user_id", "position"])
    train = events[events["split"] == "train"]
    train_events = train.groupby("user_id").size()
    if split == "train":  # the last train event; the ones before it are its history
        targets = train.groupby("user_id", sort=True).tail(1)
        targets = targets[targets["user_id"].map(train_events) > min_history]
    else:
        targets = events[events["split"] == "valid"].groupby("user_id", sort=True).head(1)
        targets = targets[targets["user_id"].map(train_events).fillna(0) >= min_history]
    if targets.empty:
        return []
    rng = np.random.default_rng(seed)
    chosen = targets.iloc[np.sort(rng.choice(len(targets), min(n, len(targets)), replace=False))]
    by_user = dict(tuple(train.groupby("user_id", sort=False)))
    cases = []
    for row in chosen.itertuples(index=False):
        past = by_user[row.user_id]
        past = past[past["position"] < row.position].tail(max_events)
        cases.append(
            ExplanationCase(
                user_id=row.user_id,
                profile=profiles.get(row.user_id),
                history=events_of(past, texts),
                candidate=texts[int(row.item_idx)],
                now_ts=int(row.ts),
            )
        )
    return cases


# --------------------------------------------------------------------------------------------------
# tuning


def _token_rows(
    lm: CausalLM, prompts: Sequence[str], targets: Sequence[str], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, target ids + eos)`` per pair. Prompts lose their oldest tokens when a row is longer
    than ``max_length``; prompt and target are tokenised apart, as generation sees them."""
    tok = lm.tokenizer
    rows = []
    for prompt, target in zip(prompts, targets, strict=True):
        t_ids = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
        p_ids = tok.encode(prompt, add_special_tokens=False)
        rows.append((p_ids[max(0, len(p_ids) + len(t_ids) - max_length) :], t_ids))
    return rows


def _pad_rows(
    lm: CausalLM, rows: Sequence[tuple[list[int], list[int]]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded ``prompt + target`` rows, their attention mask, a mask of the target tokens, and how
    many final positions hold every row's target (the logits to compute)."""
    ids, mask = left_padded([p + t for p, t in rows], lm.tokenizer.pad_token_id)
    width = ids.shape[1]
    is_target = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for _, t in rows], dtype=torch.bool)
    return ids, mask, is_target, max(len(t) for _, t in rows)


def continuation_loss(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    is_target: torch.Tensor,
    longest: int,
    states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the target tokens; only the last ``longest + 1`` positions' logits are
    computed (the targets sit at the end of every left-padded row). With ``states`` (the cached output
    of the frozen lower layers, in :func:`_upper_layers_only`) the model starts from them instead of
    the tokens."""
    keep = longest + 1
    inputs = {"input_ids": ids} if states is None else {"inputs_embeds": states}
    logits = model(
        **inputs,
        attention_mask=mask,
        position_ids=mask_positions(mask),
        logits_to_keep=keep,
        use_cache=False,
    ).logits[:, :-1]
    labels = ids[:, -longest:].masked_fill(~is_target[:, -longest:], -100)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def _top_layer_targets(lm: CausalLM, top_layers: int) -> dict[str, Any]:
    """peft settings that put LoRA on the attention and MLP projections of the top layers only."""
    if top_layers <= 0 or top_layers >= lm.num_layers:
        return {}
    return {"layers_to_transform": list(range(lm.num_layers - top_layers, lm.num_layers))}


def _decoder_stack(model: nn.Module) -> nn.Module | None:
    """The decoder of a Llama-style causal LM (plain or peft): the module holding ``layers`` (run in
    order from the token embeddings) and the final ``norm``; None for a layout the lower-layer cache
    does not know (then every step runs every layer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    if isinstance(getattr(inner, "layers", None), nn.ModuleList) and hasattr(inner, "norm"):
        return inner
    return None


@contextlib.contextmanager
def _layers_only(stack: nn.Module, start: int, stop: int | None, *, final_norm: bool) -> Iterator[None]:
    """Within the block the model runs decoder layers ``start:stop`` only (the same modules: no copy),
    from ``inputs_embeds`` when ``start > 0``; without ``final_norm`` its last hidden state is what the
    next layer would read."""
    layers, norm = stack.layers, stack.norm
    stack.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        stack.norm = nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = layers, norm


def _lower_layers_only(stack: nn.Module, split: int):
    return _layers_only(stack, 0, split, final_norm=False)


def _upper_layers_only(stack: nn.Module, split: int):
    return _layers_only(stack, split, None, final_norm=True)


@torch.no_grad()
def _lower_states(
    lm: CausalLM, stack: nn.Module, rows: Sequence[tuple[list[int], list[int]]], split: int
) -> list[torch.Tensor]:
    """Each row's hidden states after the frozen lower ``split`` layers (``[tokens, hidden]``, no
    padding): computed once, read by every epoch — the M6-Rec way of tuning on a CPU (DESIGN.md §4)."""
    device = next(stack.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: sum(map(len, rows[i])))  # little padding
    with _lower_layers_only(stack, split):
        for start in range(0, len(order), 8):
            idx = order[start : start + 8]
            ids, mask, _, _ = _pad_rows(lm, [rows[i] for i in idx])
            hidden = stack(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=mask_positions(mask).to(device),
                use_cache=False,
            ).last_hidden_state
            for j, i in enumerate(idx):
                out[i] = hidden[j, ids.shape[1] - sum(map(len, rows[i])) :].clone()
    return out


def _pad_states(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Left-padded ``[batch, width, hidden]`` (zeros where the attention mask is 0)."""
    width = max(len(x) for x in states)
    return torch.stack([F.pad(x, (0, 0, width - len(x), 0)) for x in states])


def tune_explainer(
    lm: CausalLM,
    cases: Sequence[ExplanationCase],
    is_like: Callable[[float], bool],
    config: ExplainerTuningConfig,
    *,
    style: TextStyle = DEFAULT_STYLE,
    log: Callable[[str], None] | None = None,
) -> ExplainerTuningResult:
    """LoRA-tune ``lm`` to continue each case's explanation prompt with its grounded explanation, for
    ``config.epochs`` passes (or ``max_seconds``); the LoRA weights are merged into ``lm.model``, which
    is returned ready to save and serve with no peft at load time."""
    if config.method != "lora":
        raise ValueError(f"explainer tuning method must be 'lora' here, got {config.method!r}")
    if not cases:
        raise ValueError("no explanation cases to tune the explainer on")
    start = time.perf_counter()
    prompts, targets = [], []
    for case in cases:
        prompt, _ = explanation_prompt(
            lm,
            case.profile,
            case.history,
            case.candidate,
            case.now_ts,
            style=style,
            max_events=config.max_events,
        )
        prompts.append(prompt)
        targets.append(" " + rated_reason(case.candidate, case.history, case.profile, is_like, style))
    torch.manual_seed(config.seed)
    model, report = apply_tuning(
        lm.model, "lora", r=config.lora_r, dropout=0.0, **_top_layer_targets(lm, config.top_layers)
    )
    device = next(model.parameters()).device
    rows = _token_rows(lm, prompts, targets, config.max_length)
    # LoRA on the top layers only: the frozen layers below them run once per example, not per epoch
    split = lm.num_layers - config.top_layers if 0 < config.top_layers < lm.num_layers else 0
    stack = _decoder_stack(model) if split else None
    states = _lower_states(lm, stack, rows, split) if stack is not None else None
    if log:
        cached = f"; layers 1-{split} run once (cached)" if states is not None else ""
        log(f"explainer tuning: {report} on {len(cases)} explanations{cached}")
    order = list(range(len(cases)))

    def collate(idx: list[int]):
        batch = _pad_rows(lm, [rows[i] for i in idx])
        return (*batch, None if states is None else _pad_states([states[i] for i in idx]))

    loader = torch.utils.data.DataLoader(
        order,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        ids, mask, is_target, longest, lower = batch
        args = (m, ids.to(device), mask.to(device), is_target.to(device), longest)
        if lower is None:
            return continuation_loss(*args)
        with _upper_layers_only(stack, split):
            return continuation_loss(*args, states=lower.to(device))

    evaluations = {"n": 0}

    def eval_fn(_: nn.Module) -> dict[str, float]:  # no held-out loss: the last weights are kept
        evaluations["n"] += 1
        return {"evaluations": float(evaluations["n"])}

    steps_per_epoch = max(1, math.ceil(len(order) / config.batch_size))
    with tempfile.TemporaryDirectory(prefix="m6rec-explainer-") as tmp:
        trainer = Trainer(
            model,
            loss_fn,
            loader,
            eval_fn,
            TrainConfig(
                output_dir=tmp,
                max_steps=steps_per_epoch * config.epochs,
                lr=config.lr,
                eval_every=steps_per_epoch,
                metric="evaluations",
                mode="max",
                patience=config.epochs + 1,
                max_seconds=config.max_seconds,
                seed=config.seed,
                resume=False,
                progress=False,
            ),
            log=log,
            params=[p for p in model.parameters() if p.requires_grad],
        )
        result = trainer.fit()
    merged = trainer.trained_model.merge_and_unload()
    merged.to(device).eval()
    lm.model = merged
    return ExplainerTuningResult(
        model=merged, report=report, train=result, examples=len(cases), seconds=time.perf_counter() - start
    )


# --------------------------------------------------------------------------------------------------
# the check


def check_explainer(
    lm: CausalLM,
    cases: Sequence[ExplanationCase],
    catalogue: Sequence[ItemText],
    is_like: Callable[[float], bool],
    *,
    style: TextStyle = DEFAULT_STYLE,
    max_events: int = 10,
    max_new_tokens: int = 40,
    grounded: bool = True,
) -> ExplainerCheckResult:
    """Greedy explanations of every case by ``lm`` (the service's decoding: grounded in the history's
    facts unless ``grounded`` is off), checked by the rules of
    :func:`~m6rec.evaluation.explanations.check_explanation` against each case's history and the
    catalogue."""
    start = time.perf_counter()
    index = TitleIndex.build([t.title for t in catalogue], [t.release_year for t in catalogue])
    texts = explain_batch(
        lm,
        [(c.profile, c.history, c.candidate, c.now_ts) for c in cases],
        max_new_tokens=max_new_tokens,
        style=style,
        max_events=max_events,
        is_like=is_like if grounded else None,
    )
    checks = [
        check_explanation(text, c.candidate, c.history, catalogue=catalogue, index=index, is_like=is_like)
        for text, c in zip(texts, cases, strict=True)
    ]
    return ExplainerCheckResult(summarise(checks), texts, checks, time.perf_counter() - start)
