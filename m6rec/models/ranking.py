"""Ranking / CTR: will this user like this candidate?

Two scorers share one idea, M6-Rec's multi-segment late interaction: the profile, each history item
and the candidate are separate segments; the lower layers run per segment (so item segments are
computed once, offline, and cached) and only the top layers run at request time, over the
concatenation of the segments with learned segment-type embeddings.

- :class:`SegmentRanker` (here) is the CPU profile: the whole frozen encoder runs per segment (pooled,
  cached in :class:`~m6rec.models.segments.SegmentCache`) and a small trained transformer interacts them.
- :class:`~m6rec.models.late_interaction.LateInteractionScorer` does this at token level on the encoder
  itself (the ``full`` profile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import ctr_metrics
from m6rec.models.segments import (
    CANDIDATE,
    HISTORY,
    PROFILE,
    CachedSegmentModel,
    SegmentCache,
    gaps_before,
    last_position_state,
    popularity_buckets,
    rating_ids,
    segment_transformer,
)
from m6rec.training.trainer import TrainConfig, Trainer, TrainResult

# --- pooled-segment ranker (the CPU profile) ---------------------------------------------------------


@dataclass
class RankerConfig:
    dim: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    use_ids: bool = True
    use_item_stats: bool = True


class SegmentRanker(CachedSegmentModel):
    """Profile + history + candidate segments (cached pooled states) -> small transformer -> logit.
    History segments carry the rating given and how long before the candidate it happened."""

    def __init__(
        self,
        config: RankerConfig,
        cache: SegmentCache,
        pop_buckets: torch.Tensor,
        item_mean_rating: torch.Tensor,
        has_id: torch.Tensor,
    ) -> None:
        super().__init__(config.dim, cache, pop_buckets, has_id)
        self.config = config
        d = config.dim
        self.register_buffer("item_mean_rating", item_mean_rating.float().clone())
        self.stat_proj = nn.Linear(2, d)
        self.type_emb = nn.Embedding(3, d)
        self.pos_emb = nn.Embedding(64, d)
        self.encoder = segment_transformer(d, config.heads, config.layers, config.dropout)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    @torch.no_grad()
    def cache_item_vectors(self) -> None:
        """Precompute every item's vector (serving: they only change with the weights). Used while the
        model is in eval mode and no per-example mean rating is given; dropped by :meth:`train`."""
        self.eval()
        self._item_table = self.item_vectors(
            torch.arange(self.item_states.shape[0], device=self.item_states.device)
        )

    def train(self, mode: bool = True) -> SegmentRanker:
        if mode:
            self._item_table = None
        return super().train(mode)

    def item_vectors(self, items: torch.Tensor, mean_rating: torch.Tensor | None = None) -> torch.Tensor:
        table = getattr(self, "_item_table", None)
        if table is not None and mean_rating is None and not self.training:
            return table[items]
        vec = self.item_proj(self.item_states[items])
        if self.config.use_ids:
            vec = vec + self.id_emb(items) * self.has_id[items, None]
        if self.config.use_item_stats:
            mean = self.item_mean_rating[items] if mean_rating is None else mean_rating
            known = ~torch.isnan(mean)
            stats = torch.stack([torch.where(known, mean - 3.5, torch.zeros_like(mean)), known.float()], -1)
            vec = vec + self.pop_emb(self.pop_buckets[items]) + self.stat_proj(stats)
        return vec

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, hist, cand = batch["users"], batch["hist_items"], batch["cand_items"]
        b, t = hist.shape
        states = batch["profile_states"] if "profile_states" in batch else self.profile_states[users]
        profile = self.profile_proj(states)[:, None] + self.type_emb.weight[PROFILE]
        history = (
            self.item_vectors(hist.clamp(min=0))
            + self.rating_emb(batch["hist_ratings"])
            + self.gap_emb(batch["hist_gaps"])
            + self.type_emb.weight[HISTORY]
        )
        candidate = self.item_vectors(cand, batch.get("cand_mean"))[:, None] + self.type_emb.weight[CANDIDATE]
        tokens = torch.cat([profile, history, candidate], 1)
        tokens = tokens + self.pos_emb(torch.arange(t + 2, device=tokens.device))[None]
        padding = torch.cat(
            [
                torch.zeros(b, 1, dtype=torch.bool, device=hist.device),
                hist < 0,
                torch.zeros(b, 1, dtype=torch.bool, device=hist.device),
            ],
            1,
        )
        if self.training:
            state = self.encoder(tokens, src_key_padding_mask=padding)[:, -1]
        else:  # only the candidate's state is read: the last layer runs for it alone
            state = last_position_state(self.encoder, tokens, padding)
        return self.head(self.norm(state)).squeeze(-1)

    @torch.no_grad()
    def set_scoring_dtype(self, dtype: torch.dtype) -> None:
        """Serving: the transformer's weights in ``dtype`` (inputs cast to it, the candidate's state back
        to float32 for the norm and head); see :meth:`m6rec.models.lm_ranking.LMRanker.set_scoring_dtype`."""
        self.encoder.to(dtype)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch), batch["labels"].float())


def new_ranker(config: RankerConfig, data: RecData, cache: SegmentCache) -> SegmentRanker:
    items = data.items
    return SegmentRanker(
        config,
        cache,
        popularity_buckets(data),
        torch.tensor(items["mean_train_rating"].to_numpy(dtype=float, na_value=np.nan)),
        torch.tensor(items["n_train_interactions"].to_numpy() > 0),
    )


# --- CTR examples -------------------------------------------------------------------------------------


def ctr_tensors(examples: pd.DataFrame, data: RecData) -> dict[str, torch.Tensor]:
    """marts.ctr_examples rows -> padded tensors (history left-aligned, -1 = padding)."""
    item_index, user_index = (
        data.item_index,
        dict(zip(data.users["user_id"], data.users["user_idx"], strict=True)),
    )
    n = len(examples)
    lengths = examples["history_item_ids"].map(len).to_numpy(dtype=np.int64)
    width = int(examples["history_length"].max()) if n else 1
    hist = np.full((n, width), -1, dtype=np.int64)
    ratings = np.zeros((n, width), dtype=np.int64)
    gaps = np.zeros((n, width), dtype=np.int64)
    if lengths.sum():  # every example's history at once: rows × columns of the padded arrays
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids = pd.Series(_flat(examples["history_item_ids"]))
        items = ids.map(item_index)
        if items.isna().any():
            raise KeyError(f"history item ids not in the catalogue, e.g. {ids[items.isna()].head().tolist()}")
        hist[rows, cols] = items.to_numpy(dtype=np.int64)
        ratings[rows, cols] = rating_ids(_flat(examples["history_ratings"]).astype(float))
        target_ts = np.repeat(examples["target_ts"].to_numpy(dtype=np.int64), lengths)
        gaps[rows, cols] = gaps_before(_flat(examples["history_ts"]).astype(np.int64), target_ts)
    cand = examples["target_item_id"].map(item_index).to_numpy(dtype=np.int64)
    return {
        "users": torch.tensor(examples["user_id"].map(user_index).to_numpy(dtype=np.int64)),
        "hist_items": torch.as_tensor(hist),
        "hist_ratings": torch.as_tensor(ratings),
        "hist_gaps": torch.as_tensor(gaps),
        "cand_items": torch.tensor(cand),
        "cand_mean": torch.tensor(_candidate_mean_rating(examples, data, cand)),
        "labels": torch.tensor(examples["label"].to_numpy(dtype=np.int64)),
    }


def _flat(column: pd.Series) -> np.ndarray:
    """A column of per-row lists, concatenated (rows with none add nothing)."""
    parts = [np.asarray(v) for v in column.to_numpy() if len(v)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _candidate_mean_rating(examples: pd.DataFrame, data: RecData, cand: np.ndarray) -> np.ndarray:
    """The candidate's mean train rating; for a train-split example its own rating is left out, so the
    label never leaks into the feature the model learns from."""
    n = data.items["n_train_interactions"].to_numpy(dtype=float)[cand]
    mean = data.items["mean_train_rating"].to_numpy(dtype=float, na_value=np.nan)[cand]
    own = examples["target_rating"].to_numpy(dtype=float, na_value=np.nan)
    is_train = (examples["split"] == "train").to_numpy() & ~np.isnan(own)
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = np.where(n > 1, (mean * n - own) / (n - 1), np.nan)
    return np.where(is_train, loo, mean).astype(np.float32)


class TensorBatches(torch.utils.data.Dataset):
    """Row access into a dict of equal-length tensors (for a DataLoader with default collation)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


@torch.no_grad()
def predict_ctr(model: SegmentRanker, tensors: dict[str, torch.Tensor], batch_size: int = 2048) -> np.ndarray:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(tensors["labels"])
    out = [
        torch.sigmoid(model({k: v[s : s + batch_size].to(device) for k, v in tensors.items()})).cpu()
        for s in range(0, n, batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def evaluate_ctr(model: SegmentRanker, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    probs = predict_ctr(model, tensors)
    return ctr_metrics(tensors["labels"].numpy(), probs, groups=tensors["users"].numpy())


def train_ranker(
    data: RecData,
    cache: SegmentCache,
    examples: pd.DataFrame,
    config: RankerConfig,
    train_config: TrainConfig,
    *,
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
) -> tuple[SegmentRanker, TrainResult]:
    """Train on the train-split CTR examples, select on valid AUC; returns the best weights."""
    torch.manual_seed(train_config.seed)
    model = new_ranker(config, data, cache)
    train = ctr_tensors(examples[examples["split"] == "train"], data)
    valid = ctr_tensors(examples[examples["split"] == "valid"], data)
    loader = DataLoader(TensorBatches(train), batch_size=batch_size, shuffle=True)
    trainer = Trainer(
        model, lambda m, b: m.loss(b), loader, lambda m: evaluate_ctr(m, valid), train_config, log=log
    )
    result = trainer.fit()
    return trainer.trained_model, result
