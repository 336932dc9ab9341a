"""The causal LM as a recommender: Yes/No like-scoring (TALLRec), few-shot tuning of that head,
explanations ("... because") and zero-shot ranking by sentence likelihood.

Every prompt starts from the textify behaviour text (:func:`m6rec.text.textify.behaviour_text` /
:func:`~m6rec.text.textify.user_query_text`), so training and serving share one wording.

* **Like-scoring** — the behaviour text ("A 24-year-old male technician. ... Will he like Heat
  (1995; ...)?") is the user turn of the model's chat template, after a short task instruction as
  the system turn; ``P(like) = softmax(logit_No, logit_Yes)[Yes]`` at the first answer position.
  Only the last position's logits are computed (``logits_to_keep=1``). Batched, left padding, inputs
  longer than ``max_length`` lose their oldest tokens (the question and the answer tag are kept).
* **Few-shot tuning** (:func:`finetune_like_head`) — LoRA (cross-entropy over the ``No``/``Yes``
  logits), option tuning (cross-entropy over the two soft options, initialised from the ``No`` and
  ``Yes`` embeddings) or full fine-tuning, on a few labelled prompts, through
  :class:`m6rec.training.trainer.Trainer`.
* **Explanations** (:func:`explain`) — the assistant turn is pre-filled with "Yes. He will like
  <item> because" and the model continues it (greedy or sampled, bounded new tokens). The prompt
  holds the user's profile and history, which is what grounds the explanation.
* **Zero-shot ranking** (:func:`rank_candidates`) — every candidate becomes a sentence
  ("He will like <item>.") after the user text; candidates are ordered by the mean log-probability
  of the sentence's tokens (length-normalised log-likelihood).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m6rec.models.backbones import CausalLM, left_padded, mask_positions
from m6rec.models.grounded_decoding import citable_facts, grounded_continuations
from m6rec.models.tuning import OptionTuningModel, TuningReport, apply_tuning
from m6rec.text.textify import (
    DEFAULT_STYLE,
    Event,
    ItemText,
    Profile,
    TextStyle,
    behaviour_text,
    item_text,
    pronoun,
    user_query_text,
)
from m6rec.training.trainer import TrainConfig, Trainer, TrainResult

__all__ = [
    "DEFAULT_EXPLAIN_INSTRUCTION",
    "DEFAULT_LIKE_INSTRUCTION",
    "DEFAULT_RANK_INSTRUCTION",
    "Continuation",
    "FewShotConfig",
    "FewShotResult",
    "balanced_sample",
    "chat_prompt",
    "continue_prompts",
    "ctr_behaviour_texts",
    "explain",
    "explain_batch",
    "explanation_prompt",
    "finetune_like_head",
    "like_logits",
    "like_probabilities",
    "like_prompts",
    "rank_candidates",
    "sequence_logprobs",
]

DEFAULT_LIKE_INSTRUCTION = (
    "Given the user's profile and viewing history, answer whether the user will like the target item. "
    "Answer with Yes or No."
)
DEFAULT_EXPLAIN_INSTRUCTION = (
    "Given the user's profile and viewing history, explain in one sentence why the user will like the "
    "target item, referring to the items the user watched."
)
DEFAULT_RANK_INSTRUCTION = (
    "Given the user's profile and viewing history, say which item the user will like next."
)


# --------------------------------------------------------------------------------------------------
# prompts


def chat_prompt(lm: CausalLM, user: str, *, system: str | None = None, assistant_prefix: str = "") -> str:
    """``user`` as the user turn of the model's chat template (after ``system`` when given), ending at
    the start of the assistant turn plus ``assistant_prefix``. Without a chat template: plain text
    ending in "Answer:" and a newline (so the answer's first token carries no leading space)."""
    template = getattr(lm.tokenizer, "chat_template", None)
    if not template:
        head = f"{system}\n\n" if system else ""
        return f"{head}{user}\nAnswer:\n{assistant_prefix}"
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def like_prompts(
    lm: CausalLM, behaviour_texts: Sequence[str], *, instruction: str | None = DEFAULT_LIKE_INSTRUCTION
) -> list[str]:
    """The Yes/No prompts for behaviour texts that end with the "Will he like X?" question."""
    return [chat_prompt(lm, text, system=instruction) for text in behaviour_texts]


def ctr_behaviour_texts(
    examples: Any,
    items: Mapping[Any, ItemText],
    profiles: Mapping[Any, Profile],
    *,
    style: TextStyle = DEFAULT_STYLE,
    max_events: int | None = None,
    max_tokens: int | None = None,
    count_tokens: Any = None,
) -> list[str]:
    """Behaviour texts of ``marts.ctr_examples`` rows (a DataFrame or an iterable of mappings with
    ``user_id, target_item_id, target_ts, history_item_ids, history_ratings, history_ts``); "now" is
    the target's timestamp, so the history reads "3 days ago he watched ...". Unknown users get an
    empty profile ("A user.")."""
    rows = examples.to_dict("records") if hasattr(examples, "to_dict") else list(examples)
    texts = []
    for row in rows:
        ratings = row.get("history_ratings")
        ratings = [None] * len(row["history_item_ids"]) if ratings is None else list(ratings)
        history = [
            Event(item=items[i], ts=None if t is None else int(t), rating=r)
            for i, r, t in zip(row["history_item_ids"], ratings, row["history_ts"], strict=True)
        ]
        now = row.get("target_ts")
        texts.append(
            behaviour_text(
                profiles.get(row["user_id"]),
                history,
                items[row["target_item_id"]],
                None if now is None else int(now),
                max_tokens,
                count_tokens,
                max_events=max_events,
                style=style,
            )
        )
    return texts


def balanced_sample(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` examples, half positive and half negative (as TALLRec samples its few-shot
    sets), shuffled; deterministic in ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = n // 2
    n_neg = n - n_pos
    if len(pos) < n_pos or len(neg) < n_neg:
        raise ValueError(f"need {n_pos} positives and {n_neg} negatives, have {len(pos)} and {len(neg)}")
    chosen = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    rng.shuffle(chosen)
    return [int(i) for i in chosen]


# --------------------------------------------------------------------------------------------------
# tokenisation and forward helpers


@contextlib.contextmanager
def _left_truncation(tokenizer: Any) -> Iterator[None]:
    before = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = "left"
    try:
        yield
    finally:
        tokenizer.truncation_side = before


def _encode(lm: CausalLM, prompts: Sequence[str], max_length: int | None, device: torch.device):
    """Left-padded, left-truncated batch; the chat template already holds the special tokens."""
    tok = lm.tokenizer
    if tok.padding_side != "left":
        raise ValueError("the causal LM tokenizer must pad on the left")
    with _left_truncation(tok):
        batch = tok(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=max_length or lm.max_length,
            add_special_tokens=False,
            return_tensors="pt",
        )
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def like_logits(
    lm: CausalLM, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[batch, 2]`` logits of (No, Yes), keeping the autograd graph: the next-token logits of the
    ``No``/``Yes`` tokens at the last position for an LM (plain or peft), or the two soft-option logits
    of an :class:`~m6rec.models.tuning.OptionTuningModel` (options ordered No, Yes)."""
    if isinstance(model, OptionTuningModel):
        logits = model(input_ids, attention_mask)
        if logits.shape[-1] != 2:
            raise ValueError(f"like-scoring needs 2 options (No, Yes), the model has {logits.shape[-1]}")
        return logits
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=mask_positions(attention_mask),
        logits_to_keep=1,
    )
    return out.logits[:, -1, [lm.no_token_id, lm.yes_token_id]]


@torch.no_grad()
def like_probabilities(
    lm: CausalLM,
    prompts: Sequence[str],
    *,
    model: nn.Module | None = None,
    batch_size: int = 8,
    max_length: int | None = 512,
) -> np.ndarray:
    """``P(Yes)`` over {No, Yes} for every prompt (see :func:`like_prompts`); ``model`` defaults to
    ``lm.model`` and may be a peft model or an option-tuned model built on it. Shorter prompts are
    batched together (sorted by length) to waste little on padding; results keep the input order."""
    model = lm.model if model is None else model
    was_training = model.training
    model.eval()
    device = _device(model)
    prompts = list(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = np.empty(len(prompts), dtype=np.float64)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = _encode(lm, [prompts[i] for i in idx], max_length, device)
            probs = like_logits(lm, model, ids, mask).float().softmax(-1)[:, 1]
            out[idx] = probs.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def yes_no_sample(
    lm: CausalLM,
    examples: Any,
    items: Mapping[Any, ItemText],
    profiles: Mapping[Any, Profile],
    n: int,
    *,
    style: TextStyle = DEFAULT_STYLE,
    seed: int = 0,
) -> tuple[Any, np.ndarray]:
    """The LM's zero-shot ``P(Yes)`` for a seeded sample of ``n`` ``marts.ctr_examples`` rows (a
    DataFrame; the sample does not depend on the frame's row order): ``(sample, probabilities)``."""
    ordered = examples.sort_values("example_id")
    sample = ordered.sample(min(len(ordered), n), random_state=seed)
    texts = ctr_behaviour_texts(sample, items, profiles, style=style, max_events=10)
    return sample, like_probabilities(lm, like_prompts(lm, texts))


# --------------------------------------------------------------------------------------------------
# few-shot tuning


@dataclass
class FewShotConfig:
    """Settings of :func:`finetune_like_head`. ``max_steps`` defaults to ``epochs`` passes over the
    examples; without a validation set the weights after the last step are kept."""

    output_dir: str
    method: str = "lora"  # "lora" | "option" | "full"
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_steps: int | None = None
    eval_every: int | None = None  # default: once per epoch
    patience: int = 3
    max_length: int = 512
    seed: int = 0
    max_seconds: float | None = None
    progress: bool = False
    # continue from output_dir/checkpoint when one is there (a run stopped by its time budget goes on
    # where it stopped: weights, optimiser, data order and early-stopping state)
    resume: bool = False
    tuning: dict[str, Any] = field(default_factory=dict)


@dataclass
class FewShotResult:
    model: nn.Module
    report: TuningReport
    train: TrainResult
    seconds: float


class _PromptDataset(torch.utils.data.Dataset):
    def __init__(self, prompts: Sequence[str], labels: Sequence[int]) -> None:
        if len(prompts) != len(labels):
            raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
        self.prompts, self.labels = list(prompts), [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.prompts[i], self.labels[i]


def finetune_like_head(
    lm: CausalLM,
    prompts: Sequence[str],
    labels: Sequence[int],
    config: FewShotConfig,
    *,
    valid_prompts: Sequence[str] | None = None,
    valid_labels: Sequence[int] | None = None,
    log: Any = None,
) -> FewShotResult:
    """Tune the Yes/No head of ``lm`` on a few labelled prompts (label 1 = like) with
    ``config.method``; loss = cross-entropy over the (No, Yes) logits of :func:`like_logits`.

    ``lm.model`` is modified in place (adapters / LoRA layers). With a validation set the Trainer
    early-stops on its AUC and keeps the best weights; without one, the last weights are kept."""
    import time

    from m6rec.evaluation.metrics import ctr_metrics

    start = time.perf_counter()
    settings = dict(config.tuning)
    if config.method == "option":
        settings.setdefault("option_init_ids", [lm.no_token_id, lm.yes_token_id])
        settings.setdefault("num_options", 2)
        settings.setdefault("seed", config.seed)
    torch.manual_seed(config.seed)  # LoRA / adapter initialisation: the same weights whatever ran before
    model, report = apply_tuning(lm.model, config.method, **settings)
    if log:
        log(str(report))

    data = _PromptDataset(prompts, labels)
    device = _device(model)

    def collate(batch: list[tuple[str, int]]):
        ids, mask = _encode(lm, [p for p, _ in batch], config.max_length, torch.device("cpu"))
        return ids, mask, torch.tensor([y for _, y in batch], dtype=torch.long)

    loader = torch.utils.data.DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    steps_per_epoch = max(1, math.ceil(len(loader) / config.grad_accum))
    max_steps = config.max_steps or steps_per_epoch * config.epochs

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        ids, mask, y = batch
        return F.cross_entropy(like_logits(lm, m, ids, mask).float(), y)

    if valid_prompts is not None:
        if valid_labels is None:
            raise ValueError("valid_prompts needs valid_labels")
        metric, mode = "auc", "max"

        def eval_fn(m: nn.Module) -> dict[str, float]:
            probs = like_probabilities(lm, valid_prompts, model=m, max_length=config.max_length)
            return ctr_metrics(np.asarray(valid_labels), probs)

    else:
        metric, mode = "evaluations", "max"
        counter = {"n": 0}

        def eval_fn(m: nn.Module) -> dict[str, float]:  # always "improves": the last weights are kept
            counter["n"] += 1
            return {"evaluations": float(counter["n"])}

    train_config = TrainConfig(
        output_dir=config.output_dir,
        max_steps=max_steps,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        grad_accum=config.grad_accum,
        eval_every=config.eval_every or steps_per_epoch,
        metric=metric,
        mode=mode,
        patience=config.patience,
        max_seconds=config.max_seconds,
        seed=config.seed,
        resume=config.resume,
        progress=config.progress,
    )
    trainer = Trainer(
        model,
        loss_fn,
        loader,
        eval_fn,
        train_config,
        log=log,
        params=[p for p in model.parameters() if p.requires_grad],
    )
    result = trainer.fit()
    model = trainer.trained_model
    model.to(device).eval()
    return FewShotResult(model=model, report=report, train=result, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# generation


@dataclass
class Continuation:
    text: str  # decoded new tokens (special tokens removed)
    token_ids: list[int]  # the new tokens, up to and including eos when it was produced
    finished: bool  # eos was produced within the budget


@torch.no_grad()
def continue_prompts(
    lm: CausalLM,
    prompts: Sequence[str],
    *,
    model: nn.Module | None = None,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = None,
    batch_size: int = 8,
    max_length: int | None = 512,
) -> list[Continuation]:
    """Continue each prompt with at most ``max_new_tokens`` tokens (greedy unless ``do_sample``);
    ``max_length`` bounds the prompt (oldest tokens dropped). Sampling is reproducible with ``seed``."""
    model = lm.model if model is None else model
    if isinstance(model, OptionTuningModel):
        model = model.backbone
    was_training = model.training
    model.eval()
    device = _device(model)
    eos = lm.tokenizer.eos_token_id
    results: list[Continuation] = []
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    try:
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
                random.seed(seed)
            for start in range(0, len(prompts), batch_size):
                ids, mask = _encode(lm, prompts[start : start + batch_size], max_length, device)
                kwargs: dict[str, Any] = {"do_sample": do_sample}
                if do_sample:
                    kwargs.update(temperature=temperature, top_p=top_p)
                else:
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=lm.tokenizer.pad_token_id,
                    eos_token_id=eos,
                    **kwargs,
                )
                for row in out[:, ids.shape[1] :].tolist():
                    if eos in row:
                        row = row[: row.index(eos) + 1]
                    results.append(
                        Continuation(
                            text=lm.tokenizer.decode(row, skip_special_tokens=True),
                            token_ids=row,
                            finished=bool(row) and row[-1] == eos,
                        )
                    )
    finally:
        model.train(was_training)
    return results


def explanation_prompt(
    lm: CausalLM,
    profile: Profile | None,
    history: Sequence[Event],
    candidate: ItemText,
    now_ts: int | None,
    *,
    style: TextStyle = DEFAULT_STYLE,
    max_events: int | None = 10,
    instruction: str | None = DEFAULT_EXPLAIN_INSTRUCTION,
) -> tuple[str, str]:
    """``(prompt, statement)``: the behaviour text as the user turn, and the assistant turn started
    with the statement "Yes. He will like <item> because" (which the prompt ends with)."""
    behaviour = behaviour_text(profile, history, candidate, now_ts, max_events=max_events, style=style)
    statement = f"Yes. {pronoun(profile).capitalize()} will like {item_text(candidate, style)} because"
    return chat_prompt(lm, behaviour, system=instruction, assistant_prefix=statement), statement


def _tidy(continuation: str) -> str:
    """Collapse whitespace and drop a trailing unfinished sentence when a finished one precedes it."""
    text = " ".join(continuation.split())
    ends = [i for i, ch in enumerate(text) if ch in ".!?"]
    if ends and ends[-1] != len(text) - 1:
        text = text[: ends[-1] + 1]
    return text


def explain_batch(
    lm: CausalLM,
    cases: Sequence[tuple[Profile | None, Sequence[Event], ItemText, int | None]],
    *,
    model: nn.Module | None = None,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = None,
    style: TextStyle = DEFAULT_STYLE,
    max_events: int | None = 10,
    batch_size: int = 32,
    is_like: Callable[[float], bool] | None = None,
) -> list[str]:
    """:func:`explain` for many ``(profile, history, candidate, now_ts)`` cases, generated in batches
    (greedy, when ``is_like`` asks for decoding grounded in the history's facts)."""
    prompts, statements = [], []
    for profile, history, candidate, now_ts in cases:
        prompt, statement = explanation_prompt(
            lm, profile, history, candidate, now_ts, style=style, max_events=max_events
        )
        prompts.append(prompt)
        statements.append(statement)
    if is_like is not None:
        texts = grounded_continuations(
            lm,
            prompts,
            [
                citable_facts(candidate, history[-max_events:] if max_events else history, is_like, style)
                for _, history, candidate, _ in cases
            ],
            model=model,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    else:
        texts = [
            c.text
            for c in continue_prompts(
                lm,
                prompts,
                model=model,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                batch_size=batch_size,
            )
        ]
    return [
        f"{statement.removeprefix('Yes. ')} {_tidy(text)}".rstrip()
        for statement, text in zip(statements, texts, strict=True)
    ]


def explain(
    lm: CausalLM,
    profile: Profile | None,
    history: Sequence[Event],
    candidate: ItemText,
    now_ts: int | None,
    *,
    model: nn.Module | None = None,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = None,
    style: TextStyle = DEFAULT_STYLE,
    max_events: int | None = 10,
    is_like: Callable[[float], bool] | None = None,
) -> str:
    """One explanation, e.g. "He will like Heat (1995; ...) because he liked other crime thrillers
    such as ...": the statement plus the model's continuation of "because" (trimmed to its last
    complete sentence when the token budget cut it). With ``is_like`` (the marts' like rule) the
    decoding is grounded: titles, ratings and shared genres come from the history
    (:mod:`m6rec.models.grounded_decoding`)."""
    return explain_batch(
        lm,
        [(profile, history, candidate, now_ts)],
        model=model,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        style=style,
        max_events=max_events,
        is_like=is_like,
    )[0]


# --------------------------------------------------------------------------------------------------
# likelihood scoring and zero-shot ranking


@torch.no_grad()
def sequence_logprobs(
    lm: CausalLM,
    contexts: Sequence[str],
    continuations: Sequence[str],
    *,
    model: nn.Module | None = None,
    normalize: bool = True,
    batch_size: int = 8,
    max_length: int | None = 512,
) -> np.ndarray:
    """``log P(continuation | context)`` for each pair, divided by the continuation's token count when
    ``normalize`` (the mean token log-probability). Context and continuation are tokenised separately
    and concatenated, so the scored tokens are exactly the continuation's; the context loses its
    oldest tokens when the pair exceeds ``max_length``."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    model = lm.model if model is None else model
    if isinstance(model, OptionTuningModel):
        model = model.backbone
    was_training = model.training
    model.eval()
    device = _device(model)
    tok = lm.tokenizer
    limit = max_length or lm.max_length
    pairs = []
    for ctx, cont in zip(contexts, continuations, strict=True):
        c_ids = tok.encode(ctx, add_special_tokens=False)
        x_ids = tok.encode(cont, add_special_tokens=False)
        if not x_ids:
            raise ValueError(f"empty continuation for context {ctx[:40]!r}")
        if len(x_ids) >= limit:
            raise ValueError(f"continuation of {len(x_ids)} tokens does not fit max_length={limit}")
        if not c_ids:  # score the first token too: condition on eos/bos
            c_ids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
        c_ids = c_ids[max(0, len(c_ids) + len(x_ids) - limit) :]
        pairs.append((c_ids, x_ids))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = np.empty(len(pairs), dtype=np.float64)
    pad = tok.pad_token_id
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = left_padded([pairs[i][0] + pairs[i][1] for i in idx], pad)
            ids, mask = ids.to(device), mask.to(device)
            width = ids.shape[1]
            keep = max(len(pairs[i][1]) for i in idx) + 1
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask), logits_to_keep=keep
            ).logits  # [B, keep, V]: positions width-keep .. width-1
            logp = logits[:, :-1].float().log_softmax(-1)  # predicts tokens width-keep+1 .. width-1
            targets = ids[:, width - keep + 1 :]
            token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, keep-1]
            for row, i in enumerate(idx):
                n = len(pairs[i][1])
                total = float(token_lp[row, keep - 1 - n :].sum())
                out[i] = total / n if normalize else total
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def continuation_logprobs(
    lm: CausalLM,
    context: str,
    continuations: Sequence[str],
    *,
    model: nn.Module | None = None,
    normalize: bool = True,
    batch_size: int = 32,
    max_length: int | None = 512,
) -> np.ndarray:
    """``log P(continuation | context)`` for many continuations of one context (divided by each
    continuation's token count when ``normalize``): the context runs through the model once and its
    key/value cache is reused for every batch of continuations, so ranking N candidates costs the
    context plus N short continuations instead of N full sequences (the same numbers as
    :func:`sequence_logprobs`, tested; the context likewise loses its oldest tokens when context plus
    the longest continuation exceed ``max_length``)."""
    model = lm.model if model is None else model
    if isinstance(model, OptionTuningModel):
        model = model.backbone
    was_training = model.training
    model.eval()
    device = _device(model)
    tok = lm.tokenizer
    ctx = tok.encode(context, add_special_tokens=False) or [
        tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ]
    conts = [tok.encode(c, add_special_tokens=False) for c in continuations]
    if any(not c for c in conts):
        raise ValueError("empty continuation")
    limit = max_length or lm.max_length
    longest = max((len(c) for c in conts), default=0)
    if longest >= limit:
        raise ValueError(f"continuation of {longest} tokens does not fit max_length={limit}")
    ctx = ctx[max(0, len(ctx) + longest - limit) :]
    out = np.empty(len(conts), dtype=np.float64)
    try:
        first = model(input_ids=torch.tensor([ctx], device=device), use_cache=True)
        first_logp = first.logits[0, -1].float().log_softmax(-1)
        for start in range(0, len(conts), batch_size):
            batch = conts[start : start + batch_size]
            width = max(len(c) for c in batch)
            ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in batch], device=device)
            real = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in batch], device=device)
            cache = copy.deepcopy(first.cache)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones(len(batch), len(ctx), dtype=real.dtype, device=device), real], 1)
            positions = (len(ctx) + torch.arange(width, device=device))[None].expand(len(batch), -1)
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache
            ).logits.float()
            logp = torch.cat([first_logp.expand(len(batch), 1, -1), logits[:, :-1].log_softmax(-1)], 1)
            token_lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * real
            totals = token_lp.sum(1)
            if normalize:
                totals = totals / real.sum(1)
            out[start : start + len(batch)] = totals.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def rank_candidates(
    lm: CausalLM,
    profile: Profile | None,
    history: Sequence[Event],
    candidates: Sequence[ItemText],
    now_ts: int | None,
    *,
    model: nn.Module | None = None,
    style: TextStyle = DEFAULT_STYLE,
    max_events: int | None = 10,
    instruction: str | None = DEFAULT_RANK_INSTRUCTION,
    batch_size: int = 8,
    max_length: int | None = 512,
) -> tuple[list[int], np.ndarray]:
    """Zero-shot ranking: ``(order, scores)`` with ``scores[i]`` the length-normalised log-likelihood
    of "He will like <candidate i>." after the user text (as the assistant turn of the chat
    template), and ``order`` the candidate indices best first (ties keep the given order)."""
    user = user_query_text(profile, history, now_ts, max_events=max_events, style=style)
    context = chat_prompt(lm, user, system=instruction)
    who = pronoun(profile).capitalize()
    sentences = [f"{who} will like {item_text(c, style)}." for c in candidates]
    scores = continuation_logprobs(
        lm, context, sentences, model=model, batch_size=batch_size, max_length=max_length
    )
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order, scores
