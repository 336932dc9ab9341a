"""What retrieval and ranking share: the cached segment states and the features built on them.

The frozen encoder runs once over every item text and every profile text (mean-pooled,
L2-normalised): :class:`SegmentCache`. Both the retriever (:mod:`m6rec.models.retrieval`) and the
pooled ranker (:mod:`m6rec.models.ranking`) are a :class:`CachedSegmentModel`: those states as buffers,
plus the embeddings that turn a state into a model-width segment and the buckets every history segment
carries (the rating given, the time gap, the item's train popularity). The segment types (profile,
history, candidate) are shared with the token-level scorer in :mod:`m6rec.models.late_interaction`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m6rec.data.marts import RecData
from m6rec.files import staged
from m6rec.models.backbones import Encoder
from m6rec.text.textify import TextStyle, item_text, profile_text

N_GAP_BUCKETS = 16
N_POP_BUCKETS = 10
N_RATING_IDS = 12  # 0-10 rounded ratings, 11 = unrated
PROFILE, HISTORY, CANDIDATE = 0, 1, 2  # segment types


# --- cached segment states --------------------------------------------------------------------------


@dataclass
class SegmentCache:
    """The frozen encoder's pooled states of every item text and profile text."""

    item_states: torch.Tensor  # [n_items, H]
    profile_states: torch.Tensor  # [n_users, H]
    encoder_name: str
    style: dict

    def save(self, path: str | Path) -> None:
        with staged(path) as tmp:
            torch.save(
                {
                    "item_states": self.item_states,
                    "profile_states": self.profile_states,
                    "encoder_name": self.encoder_name,
                    "style": self.style,
                },
                tmp,
            )

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> SegmentCache:
        """``mmap``: the tables stay in the file's pages (serving: every worker process on a machine
        shares one copy of them instead of reading its own)."""
        return cls(**torch.load(path, map_location="cpu", weights_only=True, mmap=mmap))


def build_segment_cache(
    encoder: Encoder, data: RecData, style: TextStyle | None = None, batch_size: int = 64
) -> SegmentCache:
    """Run every item and profile segment through the encoder once (mean-pooled, L2-normalised)."""
    style = style or TextStyle(with_popularity=True)
    items = [item_text(t, style) for t in data.item_texts()]
    profiles = [profile_text(p) for p in data.profiles()]
    return SegmentCache(
        item_states=encoder.encode(items, batch_size=batch_size, max_length=64),
        profile_states=encoder.encode(profiles, batch_size=batch_size, max_length=32),
        encoder_name=encoder.name,
        style=asdict(style),
    )


# --- features ---------------------------------------------------------------------------------------


def rating_ids(ratings: np.ndarray) -> np.ndarray:
    r = np.asarray(ratings, dtype=float)
    out = np.clip(np.rint(np.nan_to_num(r, nan=0.0)), 0, 10).astype(np.int64)
    out[np.isnan(r)] = N_RATING_IDS - 1
    return out


def gap_buckets(ts: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Log2 buckets of the time since the previous event (first event: bucket 0). ``first``: where
    several users' events are concatenated, True at each user's first event."""
    ts = np.asarray(ts, dtype=np.int64)
    gaps = np.diff(ts, prepend=ts[:1]).clip(min=0)
    if first is not None:
        gaps[first] = 0
    gaps = gaps / 3600.0  # hours
    return np.minimum(np.floor(np.log2(gaps + 1.0)).astype(np.int64), N_GAP_BUCKETS - 1)


def popularity_buckets(data: RecData) -> torch.Tensor:
    """Deciles of train popularity (0 = top 10%); items never seen in training get their own bucket."""
    pct = data.items["popularity_percentile"].to_numpy(dtype=float)
    seen = data.items["n_train_interactions"].to_numpy() > 0
    buckets = np.minimum((pct - 1) // 10, N_POP_BUCKETS - 1).astype(np.int64)
    buckets[~seen] = N_POP_BUCKETS
    return torch.as_tensor(buckets)


def gaps_before(history_ts: np.ndarray, target_ts: int) -> np.ndarray:
    """Log2 buckets of how many hours before the candidate each history event happened."""
    hours = (target_ts - np.asarray(history_ts, dtype=np.int64)).clip(min=0) / 3600.0
    return np.minimum(np.floor(np.log2(hours + 1.0)), N_GAP_BUCKETS - 1).astype(np.int64)


# --- the shared model part -------------------------------------------------------------------------

CACHE_TABLES = ("item_states", "item_sentences", "profile_states")


def share_cache_tables(module: nn.Module, **tables: torch.Tensor) -> None:
    """Give ``module`` the cache's per-item and per-user state tables (:data:`CACHE_TABLES`) as buffers
    that share the cache's memory and stay out of its state dict. They are data, written once with the
    cache (the bundle's ``segments.pt`` / ``lm_segments.pt``), not weights: at 10⁶ items each table is
    1.5 GB, which every model file and every model of a serving worker used to copy. Model files written
    while the tables were in the state dict still load (those keys are skipped)."""
    for name, table in tables.items():
        if name not in CACHE_TABLES:
            raise ValueError(f"{name!r} is not a cache table ({', '.join(CACHE_TABLES)})")
        module.register_buffer(name, table.float(), persistent=False)
    module.register_load_state_dict_pre_hook(_skip_saved_cache_tables)


def _skip_saved_cache_tables(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    for name in CACHE_TABLES:
        state_dict.pop(prefix + name, None)


class CachedSegmentModel(nn.Module):
    """What the retriever and the ranker share: the cached segment states (the cache's tables, not
    saved with the weights) and the embeddings that turn an item or profile state into a model-width
    segment."""

    def __init__(
        self, dim: int, cache: SegmentCache, pop_buckets: torch.Tensor, has_id: torch.Tensor
    ) -> None:
        super().__init__()
        n_items, text_dim = cache.item_states.shape
        share_cache_tables(self, item_states=cache.item_states, profile_states=cache.profile_states)
        self.register_buffer("pop_buckets", pop_buckets.long().clone())
        self.register_buffer("has_id", has_id.bool().clone())
        self.item_proj = nn.Linear(text_dim, dim)
        self.profile_proj = nn.Linear(text_dim, dim)
        self.id_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        self.pop_emb = nn.Embedding(N_POP_BUCKETS + 1, dim)
        self.rating_emb = nn.Embedding(N_RATING_IDS, dim)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, dim)


def segment_transformer(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def last_position_state(
    encoder: nn.TransformerEncoder, tokens: torch.Tensor, padding: torch.Tensor
) -> torch.Tensor:
    """``encoder(tokens, src_key_padding_mask=padding)[:, -1]`` (eval mode, a :func:`segment_transformer`)
    with its last layer computed for the last position alone: that layer's keys and values still come
    from every position, but its query, attention output and feed-forward maps run once per row instead
    of once per position — what a ranker that reads only the candidate's state needs. Runs in the
    layers' dtype; the output has the input's."""
    *lower, last = encoder.layers
    dtype, given = last.linear1.weight.dtype, tokens.dtype
    hidden = tokens.to(dtype)
    for layer in lower:
        hidden = layer(hidden, src_key_padding_mask=padding)
    attn = last.self_attn
    rows, width, dim = hidden.shape
    heads = attn.num_heads
    normed = last.norm1(hidden)  # norm_first
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    query = F.linear(normed[:, -1], weight[:dim], bias[:dim]).view(rows, heads, 1, dim // heads)
    keys, values = (
        part.view(rows, width, heads, dim // heads).transpose(1, 2)
        for part in F.linear(normed, weight[dim:], bias[dim:]).split(dim, dim=-1)
    )
    mixed = F.scaled_dot_product_attention(query, keys, values, attn_mask=~padding[:, None, None, :])
    state = hidden[:, -1] + attn.out_proj(mixed.reshape(rows, dim))
    state = state + last.linear2(last.activation(last.linear1(last.norm2(state))))
    return state.to(given)
