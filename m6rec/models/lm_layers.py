"""The pretrained encoder's own top layers, tuned on behaviour: M6-Rec's recipe made to fit a CPU.

M6-Rec reads a user's behaviour as text with one pretrained language model and fine-tunes it. Run
token by token through every layer, that costs hours per epoch on a CPU (docs/benchmarks.md). The
multi-segment late-interaction structure makes it affordable: the lower ``split`` layers of the encoder
run once per *segment* — every item text and every profile text — and their mean-pooled states are
cached (:class:`LowerLayerCache`). The top ``L - split`` layers, copied from the checkpoint, then run
over the concatenated segments of a request (profile, history items with the rating given and the time
gap, a candidate) with segment-type and position embeddings, and are tuned on behaviour: every weight
(``tuning="full"``), low-rank adapters on every linear map (``"lora"``, peft), or nothing (``"frozen"``,
an ablation). With ``split=0`` every layer is tuned (the GPU profile).

This module holds what both tasks share: the cache, the tuned layers (:class:`TopLayers`) and the
segment embeddings (:class:`LMSegmentModel`). The retriever is :mod:`m6rec.models.lm_retrieval`, the
CTR scorer :mod:`m6rec.models.lm_ranking`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from m6rec.data.marts import RecData
from m6rec.files import staged
from m6rec.models.backbones import Encoder
from m6rec.models.segments import (
    HISTORY,
    N_GAP_BUCKETS,
    N_RATING_IDS,
    PROFILE,
    SegmentCache,
    share_cache_tables,
)
from m6rec.text.textify import TextStyle, item_text, profile_text

TUNING_METHODS = ("full", "lora", "frozen")
LORA_TARGETS = ("query", "key", "value", "dense")  # every linear map of a BERT layer

# --- the cache: lower layers, once per segment ------------------------------------------------------


@dataclass
class LowerLayerCache:
    """Pooled states of every item and profile segment after the encoder's lower ``split`` layers, and
    their sentence embeddings (every layer, pooled, L2-normalised): the item tower's input, and the
    frozen-feature models' :class:`~m6rec.models.segments.SegmentCache` (:meth:`sentences`), so one
    encoder pass serves both."""

    split: int
    item_states: torch.Tensor  # [n_items, H]
    item_sentences: torch.Tensor  # [n_items, H]
    profile_states: torch.Tensor  # [n_users, H]
    profile_sentences: torch.Tensor  # [n_users, H]
    encoder_name: str
    style: dict

    def sentences(self) -> SegmentCache:
        """The sentence embeddings alone, as the frozen-feature models read them."""
        return SegmentCache(
            item_states=self.item_sentences,
            profile_states=self.profile_sentences,
            encoder_name=self.encoder_name,
            style=self.style,
        )

    def save(self, path: str | Path) -> None:
        with staged(path) as tmp:
            torch.save(asdict(self), tmp)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> LowerLayerCache:
        """``mmap``: the tables stay in the file's pages (serving: every worker process on a machine
        shares one copy of them instead of reading its own)."""
        return cls(**torch.load(path, map_location="cpu", weights_only=True, mmap=mmap))


def build_lower_cache(
    encoder: Encoder, data: RecData, style: TextStyle, split: int, batch_size: int = 64
) -> LowerLayerCache:
    """One pass of the frozen encoder over every item text and profile text (the texts and lengths of
    :func:`m6rec.models.segments.build_segment_cache`, whose states :meth:`LowerLayerCache.sentences`
    equals)."""
    if not 0 <= split < encoder.num_layers:
        raise ValueError(f"split must be in 0..{encoder.num_layers - 1} (layers cached), got {split}")
    layers = (split, encoder.num_layers)
    items = [item_text(t, style) for t in data.item_texts()]
    profiles = [profile_text(p) for p in data.profiles()]
    item_low, item_top = encoder.encode_layers(items, layers, max_length=64, batch_size=batch_size)
    profile_low, profile_top = encoder.encode_layers(profiles, layers, max_length=32, batch_size=batch_size)
    return LowerLayerCache(
        split=split,
        item_states=item_low,
        item_sentences=F.normalize(item_top, dim=-1),
        profile_states=profile_low,
        profile_sentences=F.normalize(profile_top, dim=-1),
        encoder_name=encoder.name,
        style=asdict(style),
    )


# --- the tuned top layers ---------------------------------------------------------------------------


class TopLayers(nn.Module):
    """The encoder's layers ``split..L-1``, copied with their pretrained weights, over a sequence of
    segment states. ``tuning``: ``"full"`` trains every weight, ``"lora"`` adds rank-``r`` adapters to
    every linear map (peft) and freezes the rest, ``"frozen"`` trains none (an ablation)."""

    def __init__(
        self,
        encoder_model: nn.Module,
        split: int,
        tuning: str = "full",
        lora_rank: int = 8,
        pretrained: bool = True,
    ):
        super().__init__()
        if tuning not in TUNING_METHODS:
            raise ValueError(f"unknown tuning {tuning!r}; choose one of {TUNING_METHODS}")
        layers = getattr(getattr(encoder_model, "encoder", None), "layer", None)
        if layers is None:
            raise TypeError(
                f"{type(encoder_model).__name__} has no encoder.layer list: tuned top layers need a "
                "BERT-style encoder (MiniLM, BERT, RoBERTa, ...)"
            )
        if not 0 <= split < len(layers):
            raise ValueError(f"split must be in 0..{len(layers) - 1}, got {split}")
        self.layers = nn.ModuleList(copy.deepcopy(list(layers[split:])))
        self.pretrained = pretrained
        if not pretrained:  # the ablation: the same architecture from random weights
            self.layers.apply(encoder_model._init_weights)
        self.tuning = tuning
        if tuning == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(
                r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS)
            )
            inject_adapter_in_model(config, self.layers)
            for name, p in self.layers.named_parameters():
                p.requires_grad_("lora_" in name)
        elif tuning == "frozen":
            self.layers.requires_grad_(False)

    @staticmethod
    def run_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = layer(hidden, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    @property
    def dtype(self) -> torch.dtype:
        """The layers' arithmetic: float32 always in training; bfloat16 when a served scorer was put in
        it (:meth:`m6rec.models.lm_ranking.LMRanker.set_scoring_dtype`)."""
        return next(self.layers.parameters()).dtype

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask``: additive attention mask ``[B, 1, T or 1, T]`` (0 = attend), or None. Runs in the
        layers' dtype; the output has the input's."""
        dtype, given = self.dtype, hidden.dtype
        hidden = hidden.to(dtype)
        mask = mask.to(dtype) if mask is not None else None
        for layer in self.layers:
            hidden = self.run_layer(layer, hidden, mask)
        return hidden.to(given)

    def pretrained_parameters(self) -> int:
        """Weights of the pretrained language model (or adapters on it) that receive gradients; 0 for
        the random-init ablation, whose layers hold no pretrained weight."""
        if not self.pretrained:
            return 0
        return sum(p.numel() for p in self.layers.parameters() if p.requires_grad)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """bool ``[B, Tq, Tk]`` (True = may attend) -> the float mask the HF layers add to their scores."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )[:, None]


def attend_from(
    layer: nn.Module,
    queries: torch.Tensor,
    context: torch.Tensor,
    allowed: torch.Tensor,
    *,
    and_self: bool,
    projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One BERT layer's output for ``queries`` [N, 1, H] only, each attending to the ``context``
    [N or 1, T, H] positions ``allowed`` [N or 1, T] (bool) — and to itself when ``and_self``. The same
    arithmetic as the layer's own forward over ``context`` (+ ``queries``) with the matching mask, read at
    the query positions, without computing every other position's output (or, for a context of 1,
    repeating it N times). ``projected``: the queries' own query/key/value projections [N, 1, H] when a
    caller has them already (a candidate's do not depend on the request)."""
    attn = layer.attention.self
    n, heads, size = queries.shape[0], attn.num_attention_heads, attn.attention_head_size

    own_q, own_k, own_v = projected or (attn.query(queries), attn.key(queries), attn.value(queries))
    q = own_q.view(n, heads, size) / size**0.5
    rows, width = context.shape[:2]
    # [rows, T, H] -> per head: keys [.., size, T], values [.., T, size]. One query per row, so plain
    # matmuls (SDPA's kernel costs more than the arithmetic at this size).
    keys = attn.key(context).view(rows, width, heads, size).permute(0, 2, 3, 1)
    values = attn.value(context).view(rows, width, heads, size).transpose(1, 2)
    if rows == 1:  # one shared context: the heads are the batch, the queries its rows
        scores = torch.bmm(q.transpose(0, 1), keys[0]).transpose(0, 1)
    else:
        scores = (q[:, :, None, :] @ keys)[:, :, 0]
    scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))  # [n, heads, T]
    if and_self:
        scores = torch.cat([scores, (q * own_k.view(n, heads, size)).sum(-1, keepdim=True)], dim=-1)
    weights = scores.softmax(dim=-1)
    on_context = weights[..., :width]
    if rows == 1:
        mixed = torch.bmm(on_context.transpose(0, 1), values[0]).transpose(0, 1)
    else:
        mixed = (on_context[:, :, None, :] @ values)[:, :, 0]
    if and_self:
        mixed = mixed + weights[..., width:] * own_v.view(n, heads, size)
    mixed = mixed.reshape(n, 1, heads * size)
    attended = layer.attention.output(mixed, queries)
    return layer.output(layer.intermediate(attended), attended)


class LMSegmentModel(nn.Module):
    """What the retriever and the ranker share: the cached lower-layer states (buffers), the tuned top
    layers, and the embeddings added to each segment state (type, position, rating, time gap)."""

    def __init__(
        self,
        cache: LowerLayerCache,
        encoder_model: nn.Module,
        *,
        tuning: str,
        lora_rank: int,
        pretrained: bool = True,
        max_positions: int,
        dropout: float,
        pop_buckets: torch.Tensor,
    ) -> None:
        super().__init__()
        hidden = cache.item_states.shape[1]
        self.split = cache.split
        share_cache_tables(
            self,
            item_states=cache.item_states,
            item_sentences=cache.item_sentences,
            profile_states=cache.profile_states,
        )
        self.register_buffer("pop_buckets", pop_buckets.long().clone())
        self.top = TopLayers(encoder_model, cache.split, tuning, lora_rank, pretrained)
        self.type_emb = nn.Embedding(3, hidden)
        self.pos_emb = nn.Embedding(max_positions, hidden)
        self.rating_emb = nn.Embedding(N_RATING_IDS, hidden)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, hidden)
        for emb in (self.type_emb, self.pos_emb, self.rating_emb, self.gap_emb):
            nn.init.normal_(emb.weight, std=0.02)  # small next to the states: the layers see text first
        self.dropout = nn.Dropout(dropout)

    @property
    def n_items(self) -> int:
        return self.item_states.shape[0]

    @property
    def profile_layer(self) -> int:
        """Which encoder layer's pooled profile state a request must supply (serving)."""
        return self.split

    def profile_segment(self, users: torch.Tensor, profile_states: torch.Tensor | None) -> torch.Tensor:
        """[B, H]; a request's own profile (serving) arrives as a pooled state instead of a user index."""
        states = profile_states if profile_states is not None else self.profile_states[users]
        return states + self.type_emb.weight[PROFILE]

    def history_segments(
        self, item_inputs: torch.Tensor, ratings: torch.Tensor, gaps: torch.Tensor
    ) -> torch.Tensor:
        """[B, T, H]: each history event's item input (``item_inputs``, already gathered per event)
        with its rating, time-gap and segment-type embeddings."""
        return item_inputs + self.rating_emb(ratings) + self.gap_emb(gaps) + self.type_emb.weight[HISTORY]

    def encode(self, segments: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Top layers over ``segments`` [B, T, H] (positions added here); ``allowed`` [B, T, T] bool."""
        positions = torch.arange(segments.shape[1], device=segments.device)
        tokens = self.dropout(segments + self.pos_emb(positions)[None])
        return self.top(tokens, additive_mask(allowed))

    def encode_at(self, segments: torch.Tensor, allowed: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """[B, H]: ``encode(segments, allowed)`` read at one position per row (``at`` [B]) — what a user
        vector needs — with the last layer computed for that position alone (the layers below it still
        run over every position, whose outputs it attends to). On one tuned layer this skips the
        attention output and feed-forward maps of all other positions: most of a request's tower."""
        positions = torch.arange(segments.shape[1], device=segments.device)
        hidden = self.dropout(segments + self.pos_emb(positions)[None])
        *lower, last = self.top.layers
        if lower:
            mask = additive_mask(allowed)
            for layer in lower:
                hidden = self.top.run_layer(layer, hidden, mask)
        rows = torch.arange(len(hidden), device=hidden.device)
        return attend_from(last, hidden[rows, at][:, None], hidden, allowed[rows, at], and_self=False)[:, 0]

    def param_groups(self, head_lr: float, lm_lr: float) -> list[dict[str, Any]]:
        """The pretrained layers learn at ``lm_lr``, everything new at ``head_lr``."""
        lm = [p for p in self.top.parameters() if p.requires_grad]
        lm_ids = {id(p) for p in self.top.parameters()}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in lm_ids]
        return [{"params": lm, "lr": lm_lr}, {"params": new, "lr": head_lr}]

    def parameter_counts(self) -> dict[str, int]:
        return {
            "lm_trainable_parameters": self.top.pretrained_parameters(),
            "lm_parameters": sum(p.numel() for p in self.top.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in self.parameters()),
            "cached_state_values": sum(b.numel() for b in self.buffers()),
        }
