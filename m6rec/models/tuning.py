"""Parameter-efficient tuning, chosen by config: option tuning (M6-Rec), LoRA (peft) or full fine-tuning.

:func:`apply_tuning` takes a Hugging Face model (or an :class:`~m6rec.models.backbones.CausalLM` /
:class:`~m6rec.models.backbones.Encoder` container) and returns the module to train plus a
:class:`TuningReport` with the trainable-parameter counts.

Option tuning (M6-Rec, Cui et al. 2022) — :class:`OptionTuningModel`:

* a **soft prompt** of ``P`` learned embeddings is prepended to the input embeddings;
* its **last ``C`` embeddings double as the ``C`` class vectors** ("soft options"): the logit of class
  ``c`` is ``<h_last, option_c>``, with ``h_last`` the backbone's final hidden state (after its final
  norm) at the last real position. For a tied-embedding causal LM whose options start from the
  embeddings of the class words (``No``/``Yes``), the initial class logits are exactly the LM's
  next-token logits of those words given the prompted input;
* **low-rank adapters on every FFN (MLP) block**, parallel (``ffn(x) + up(act(down(x)))``) or
  sequential (``y = ffn(x); y + up(act(down(y)))``), rank ``r``; the up-projection starts at zero,
  so the adapted backbone computes exactly the base model's function at initialisation;
* everything else is frozen. With the defaults (P=20, r=32) that is 0.84% of SmolLM2-135M.

It works for decoder-only LMs whose layers have an ``mlp`` child (Llama/SmolLM2, Qwen, Mistral,
GPT-2, ...) and for BERT-style encoders (MiniLM), whose FFN output block ``BertOutput`` is wrapped
(the adapter is added after its residual LayerNorm there). Position ids are passed explicitly
(``cumsum(mask) - 1``), so the prompt sits at positions ``0..P-1`` whatever the padding side.

The model given to :func:`apply_tuning` is modified in place (adapters / LoRA layers are injected,
``requires_grad`` flags changed); load a fresh copy when the base model is needed as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from m6rec.models.backbones import mask_positions

__all__ = [
    "METHODS",
    "AdaptedFFN",
    "LowRankAdapter",
    "OptionTuningModel",
    "TuningReport",
    "apply_tuning",
    "count_parameters",
    "default_lora_targets",
    "trainable_state_dict",
]

METHODS = ("option", "lora", "full")
# Attention and MLP projections of the common HF architectures (Llama/Qwen/Mistral, GPT-2, BERT).
_LORA_NAMES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
    "query",
    "key",
    "value",
    "dense",
)


# --------------------------------------------------------------------------------------------------
# reports


@dataclass
class TuningReport:
    """What is trained. Tied weights are counted once."""

    method: str
    trainable_parameters: int
    total_parameters: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / max(self.total_parameters, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "trainable_percent": round(self.trainable_percent, 4),
            "settings": dict(self.settings),
        }

    def __str__(self) -> str:
        return (
            f"{self.method}: {self.trainable_parameters:,} / {self.total_parameters:,} parameters trainable "
            f"({self.trainable_percent:.2f}%)"
        )


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)``; ``module.parameters()`` yields a tied weight once."""
    trainable = total = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that require grad (soft prompt + adapters, LoRA weights, ...): what a tuned
    model needs to save on top of its base checkpoint. Load it back with ``load_state_dict(sd,
    strict=False)``."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------------
# adapters


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class LowRankAdapter(nn.Module):
    """``x -> scale * up(act(down(x)))`` with a rank-``r`` bottleneck; ``up`` is zero-initialised."""

    def __init__(
        self, dim: int, rank: int, *, activation: str = "gelu", dropout: float = 0.0, scale: float = 1.0
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {rank}")
        self.down = nn.Linear(dim, rank)
        self.act = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(rank, dim)
        self.scale = scale
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(self.act(self.down(x))))


class AdaptedFFN(nn.Module):
    """An FFN block with a low-rank adapter, parallel or sequential.

    ``kind="mlp"``: the block is ``mlp(x)`` (decoder layers). ``kind="bert_output"``: the block is
    ``BertOutput(hidden, input_tensor)`` = LayerNorm(dense(hidden) + input_tensor); the FFN's input is
    ``input_tensor``, which a parallel adapter reads."""

    def __init__(self, block: nn.Module, adapter: LowRankAdapter, mode: str = "parallel", kind: str = "mlp"):
        super().__init__()
        if mode not in ("parallel", "sequential"):
            raise ValueError(f"adapter mode must be 'parallel' or 'sequential', got {mode!r}")
        self.block, self.adapter, self.mode, self.kind = block, adapter, mode, kind

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        if self.mode == "sequential":
            return out + self.adapter(out)
        ffn_input = args[0] if self.kind == "mlp" else (args[1] if len(args) > 1 else kwargs["input_tensor"])
        return out + self.adapter(ffn_input)


def _ffn_slots(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, attribute, kind)`` for every FFN block: ``layer.mlp`` in decoder layers, ``layer.output``
    in BERT layers (those that also have an ``intermediate`` child)."""
    slots = []
    for module in model.modules():
        if isinstance(module, AdaptedFFN):
            continue
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Module):
            slots.append((module, "mlp", "mlp"))
        elif isinstance(getattr(module, "intermediate", None), nn.Module) and isinstance(
            getattr(module, "output", None), nn.Module
        ):
            slots.append((module, "output", "bert_output"))
    return slots


def _hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if size is None:
        size = model.get_input_embeddings().weight.shape[1]
    return int(size)


# --------------------------------------------------------------------------------------------------
# option tuning


class OptionTuningModel(nn.Module):
    """Soft prompt + soft options + FFN adapters around a frozen HF causal LM or encoder.

    ``forward(input_ids, attention_mask)`` returns class logits ``[batch, num_options]``. The backbone
    (with its adapters) is ``self.backbone``; its adapters are also active for ordinary use of the
    backbone (e.g. ``generate``), the soft prompt only in this module's forward."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_prompt_tokens: int = 20,
        num_options: int = 2,
        adapter_rank: int = 32,
        adapter_mode: str = "parallel",
        adapter_activation: str = "gelu",
        adapter_dropout: float = 0.0,
        adapter_scale: float = 1.0,
        option_init_ids: Sequence[int] | None = None,
        prompt_init_ids: Sequence[int] | None = None,
        pool: str = "last",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_options < 1 or num_prompt_tokens < num_options:
            raise ValueError(
                f"need 1 <= num_options <= num_prompt_tokens, got {num_options} options and "
                f"{num_prompt_tokens} prompt tokens"
            )
        if pool not in ("last", "first", "mean"):
            raise ValueError(f"pool must be 'last', 'first' or 'mean', got {pool!r}")
        self.backbone = model
        self.num_prompt_tokens, self.num_options, self.pool = num_prompt_tokens, num_options, pool
        for p in model.parameters():
            p.requires_grad_(False)

        dim = _hidden_size(model)
        slots = _ffn_slots(model)
        if not slots:
            raise ValueError(
                f"found no FFN blocks (an 'mlp' child or BERT 'intermediate'/'output') in {type(model)}"
            )
        self.adapters = nn.ModuleList()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for parent, attr, kind in slots:
                block = getattr(parent, attr)
                ref = next(block.parameters())
                adapter = LowRankAdapter(
                    dim,
                    adapter_rank,
                    activation=adapter_activation,
                    dropout=adapter_dropout,
                    scale=adapter_scale,
                ).to(device=ref.device, dtype=ref.dtype)
                setattr(parent, attr, AdaptedFFN(block, adapter, adapter_mode, kind))
                self.adapters.append(adapter)

        embed = model.get_input_embeddings().weight
        n_free = num_prompt_tokens - num_options
        gen = torch.Generator().manual_seed(seed)
        prompt_ids = _init_ids(prompt_init_ids, n_free, embed.shape[0], gen, "prompt_init_ids")
        option_ids = _init_ids(option_init_ids, num_options, embed.shape[0], gen, "option_init_ids")
        init = embed.detach()[torch.cat([prompt_ids, option_ids]).to(embed.device)].clone()
        self.prompt = nn.Parameter(init)  # [P, H]; rows P-C..P-1 are the options

    # ---- views -------------------------------------------------------------------------------------
    @property
    def options(self) -> torch.Tensor:
        """The ``C`` class vectors: the last ``C`` soft-prompt embeddings (a view, shares gradients)."""
        return self.prompt[self.num_prompt_tokens - self.num_options :]

    @property
    def base(self) -> nn.Module:
        """The transformer without its LM head (``LlamaModel`` for a causal LM, the encoder itself)."""
        return getattr(self.backbone, "base_model", self.backbone)

    # ---- forward -----------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(states [B, P+T, H], mask [B, P+T])`` of the prompted input."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = input_ids.shape[0]
        embeds = self.backbone.get_input_embeddings()(input_ids)
        prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([prompt, embeds], dim=1)
        mask = torch.cat([attention_mask.new_ones(batch, self.num_prompt_tokens), attention_mask], dim=1)
        out = self.base(inputs_embeds=embeds, attention_mask=mask, position_ids=mask_positions(mask))
        return out.last_hidden_state, mask

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        states, mask = self.hidden_states(input_ids, attention_mask)
        if self.pool == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.pool == "first":
            return states[:, 0]
        # last real position, whichever side the padding is on
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.pooled(input_ids, attention_mask)
        return h @ self.options.to(h.dtype).T

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self)


def _init_ids(ids: Sequence[int] | None, n: int, vocab: int, gen: torch.Generator, what: str) -> torch.Tensor:
    if ids is None:
        return torch.randint(0, vocab, (n,), generator=gen)
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"{what} must hold {n} token ids, got {len(ids)}")
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# LoRA and full fine-tuning


def default_lora_targets(model: nn.Module) -> list[str] | str:
    """The attention/MLP projection names present among ``model``'s Linear layers, or peft's
    ``"all-linear"`` when none of the known names occurs."""
    found = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _LORA_NAMES and isinstance(module, nn.Linear | _conv1d_type()):
            found.add(leaf)
    return sorted(found) if found else "all-linear"


def _conv1d_type() -> type:
    try:
        from transformers.pytorch_utils import Conv1D

        return Conv1D
    except ImportError:  # pragma: no cover
        return nn.Linear


def _is_causal_lm(model: nn.Module) -> bool:
    return model.get_output_embeddings() is not None if hasattr(model, "get_output_embeddings") else False


def _apply_lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: int | None = None,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str | None = None,
    bias: str = "none",
    layers_to_transform: Sequence[int] | None = None,
) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = default_lora_targets(model) if target_modules is None else target_modules
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        bias=bias,
        layers_to_transform=list(layers_to_transform) if layers_to_transform is not None else None,
        task_type=TaskType.CAUSAL_LM if _is_causal_lm(model) else TaskType.FEATURE_EXTRACTION,
    )
    return get_peft_model(model, config)


# --------------------------------------------------------------------------------------------------
# entry point


def _unwrap(model: Any) -> nn.Module:
    inner = getattr(model, "model", None)
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner  # a CausalLM / Encoder container
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch module or a CausalLM/Encoder container, got {type(model)}")
    return model


def apply_tuning(model: Any, method: str = "option", **settings: Any) -> tuple[nn.Module, TuningReport]:
    """Make ``model`` trainable by ``method`` and report the trainable-parameter counts.

    * ``"option"``: returns an :class:`OptionTuningModel` (settings: ``num_prompt_tokens=20``,
      ``num_options=2``, ``adapter_rank=32``, ``adapter_mode="parallel"|"sequential"``,
      ``adapter_activation``, ``adapter_dropout``, ``adapter_scale``, ``option_init_ids``,
      ``prompt_init_ids``, ``pool``, ``seed``);
    * ``"lora"``: returns a peft ``PeftModel`` (settings: ``r=8``, ``alpha=2r``, ``dropout=0.05``,
      ``target_modules`` = the attention and MLP projections by default, ``bias="none"``,
      ``layers_to_transform``: only these layer indices, e.g. the top ones, so backward stops there);
    * ``"full"``: returns the model itself with every parameter trainable.

    ``model`` is a HF model or a ``CausalLM``/``Encoder`` container (its ``.model`` is used); it is
    modified in place."""
    module = _unwrap(model)
    if method == "option":
        tuned: nn.Module = OptionTuningModel(module, **settings)
    elif method == "lora":
        tuned = _apply_lora(module, **settings)
    elif method == "full":
        if settings:
            raise TypeError(f"full fine-tuning takes no settings, got {sorted(settings)}")
        for p in module.parameters():
            p.requires_grad_(True)
        tuned = module
    else:
        raise ValueError(f"unknown tuning method {method!r}; choose one of {METHODS}")
    trainable, total = count_parameters(tuned)
    record = _settings_record(method, settings)
    if method == "lora":
        targets = tuned.peft_config["default"].target_modules
        record["target_modules"] = sorted(targets) if not isinstance(targets, str) else targets
    return tuned, TuningReport(method, trainable, total, record)


def _settings_record(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    defaults: dict[str, dict[str, Any]] = {
        "option": {"num_prompt_tokens": 20, "num_options": 2, "adapter_rank": 32, "adapter_mode": "parallel"},
        "lora": {"r": 8, "dropout": 0.05},
        "full": {},
    }
    record = {**defaults[method], **settings}
    if method == "lora":
        record.setdefault("alpha", 2 * record["r"])
    return {
        k: (list(v) if isinstance(v, Iterable) and not isinstance(v, str) else v) for k, v in record.items()
    }
