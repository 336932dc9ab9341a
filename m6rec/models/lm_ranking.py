"""CTR with the tuned language model (M6-Rec's late interaction): the encoder's own top layers over
[profile, last history events, candidate] segments; the candidate position's state gives the like
probability (TALLRec labels, marts.ctr_examples).

The context segments (profile and history) attend among themselves only and the candidate attends to
them and to itself, so a request's context runs through the top layers once and each candidate costs
one position per layer (:meth:`LMRanker.rank_candidates`) — the serving trade DESIGN.md §4 names.
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
from m6rec.models.lm_layers import LMSegmentModel, LowerLayerCache, additive_mask, attend_from
from m6rec.models.ranking import TensorBatches, ctr_tensors, evaluate_ctr
from m6rec.models.segments import CANDIDATE, N_POP_BUCKETS, popularity_buckets
from m6rec.training.trainer import TrainConfig, Trainer, TrainResult

# Serving keeps every item's input segment and its first-layer query/key/value projections as a
# candidate (4 x hidden floats per item) up to this catalogue size; past it (1.5 GB of inputs alone at
# 10⁶ items, per worker) both are computed per request, for the request's ~60 items.
CANDIDATE_PROJECTIONS_MAX_ITEMS = 20_000


@dataclass
class LMRankerConfig:
    tuning: str = "full"
    lora_rank: int = 8
    pretrained: bool = True  # False: the top layers' architecture from random weights (an ablation)
    lm_lr: float = 1e-4
    dropout: float = 0.1
    history: int = 10  # positions for history events (marts.ctr_examples keeps the last N)
    use_item_stats: bool = True  # the item's train mean rating and popularity bucket
    use_ids: bool = False


class LMRanker(LMSegmentModel):
    """The top layers over [profile, history..., candidate] (bidirectional); the candidate position's
    state -> like logit."""

    def __init__(
        self,
        config: LMRankerConfig,
        cache: LowerLayerCache,
        encoder_model: nn.Module,
        pop_buckets: torch.Tensor,
        item_mean_rating: torch.Tensor,
    ) -> None:
        super().__init__(
            cache,
            encoder_model,
            tuning=config.tuning,
            lora_rank=config.lora_rank,
            pretrained=config.pretrained,
            max_positions=config.history + 2,
            dropout=config.dropout,
            pop_buckets=pop_buckets,
        )
        self.config = config
        hidden = cache.item_states.shape[1]
        self.register_buffer("item_mean_rating", item_mean_rating.float().clone())
        self.pop_emb = nn.Embedding(N_POP_BUCKETS + 1, hidden)
        self.stat_proj = nn.Linear(2, hidden)
        nn.init.normal_(self.pop_emb.weight, std=0.02)
        nn.init.normal_(self.stat_proj.weight, std=0.02)
        nn.init.zeros_(self.stat_proj.bias)
        self.id_emb = nn.Embedding(self.n_items, hidden) if config.use_ids else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)
        self.head = nn.Linear(hidden, 1)
        self._item_table: torch.Tensor | None = None
        self._candidate_projections: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def item_inputs(self, items: torch.Tensor, mean_rating: torch.Tensor | None = None) -> torch.Tensor:
        """Each item's segment state plus its statistics (mean train rating, popularity bucket)."""
        if self._item_table is not None and mean_rating is None and not self.training:
            return self._item_table[items]
        vec = self.item_states[items]
        if self.config.use_item_stats:
            mean = self.item_mean_rating[items] if mean_rating is None else mean_rating
            known = ~torch.isnan(mean)
            stats = torch.stack([torch.where(known, mean - 3.5, torch.zeros_like(mean)), known.float()], -1)
            vec = vec + self.pop_emb(self.pop_buckets[items]) + self.stat_proj(stats)
        if self.id_emb is not None:
            vec = vec + self.id_emb(items)
        return vec

    @torch.no_grad()
    def cache_item_vectors(self) -> None:
        """Serving, up to :data:`CANDIDATE_PROJECTIONS_MAX_ITEMS` items: precompute every item's input
        segment and its first layer's query/key/value projections as a candidate after
        ``config.history`` history positions: a candidate's input depends on the item alone, so a
        quarter of its per-request arithmetic is the same for every request (dropped by
        :meth:`train`)."""
        self.eval()
        self._item_table, self._candidate_projections = None, None
        if self.n_items <= CANDIDATE_PROJECTIONS_MAX_ITEMS:
            self._item_table = self.item_inputs(torch.arange(self.n_items, device=self.item_states.device))
            width = 1 + self.config.history  # the profile and the history positions before the candidate
            attn = self.top.layers[0].attention.self
            inputs = self._item_table + self.type_emb.weight[CANDIDATE] + self.pos_emb.weight[width]
            inputs = inputs.to(self.top.dtype)
            self._candidate_projections = (width, attn.query(inputs), attn.key(inputs), attn.value(inputs))

    @torch.no_grad()
    def set_scoring_dtype(self, dtype: torch.dtype) -> None:
        """Serving: the top layers' weights (and the cached candidate projections) in ``dtype``, inputs
        cast to it and the candidate's state back to float32 for the head. bfloat16 runs the rerank's
        matmuls several times faster on CPUs with AVX512-BF16/AMX and on GPUs; whether a bundle's
        scorer keeps its valid AUC in it is measured when the bundle is written
        (:func:`m6rec.serving.precision.bf16_check`)."""
        self.top.to(dtype)
        if self._item_table is not None:
            self.cache_item_vectors()

    def train(self, mode: bool = True) -> LMRanker:
        if mode:
            self._item_table, self._candidate_projections = None, None
        return super().train(mode)

    def context_segments(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context segments [B, 1 + T, H] (profile, history) and which of them are real."""
        hist = batch["hist_items"]
        history = self.history_segments(
            self.item_inputs(hist.clamp(min=0)), batch["hist_ratings"], batch["hist_gaps"]
        )
        profile = self.profile_segment(batch["users"], batch.get("profile_states"))
        context = torch.cat([profile[:, None], history], dim=1)
        real = torch.cat([torch.ones_like(hist[:, :1], dtype=torch.bool), hist >= 0], dim=1)
        return context, real

    def candidate_segment(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The candidate segment [B, H]."""
        return self.item_inputs(batch["cand_items"], batch.get("cand_mean")) + self.type_emb.weight[CANDIDATE]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Late interaction: the context segments attend among themselves only (so at serving time they
        run once per request), the candidate attends to the context and itself."""
        context, real = self.context_segments(batch)
        candidate = self.candidate_segment(batch)
        rows, width = real.shape
        keys = torch.cat([real, torch.ones_like(real[:, :1])], dim=1)  # [B, width + 1]
        allowed = keys[:, None, :].repeat(1, width + 1, 1)
        allowed[:, :width, width] = False  # context never sees the candidate
        hidden = self.encode(torch.cat([context, candidate[:, None]], dim=1), allowed)
        return self.head(hidden[:, -1]).squeeze(-1)

    @torch.no_grad()
    def rank_candidates(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Serving: one request's context (batch rows all share row 0's profile and history) through the
        top layers once, then every candidate as a single position attending to it. Equals
        ``forward`` (tested) at a fraction of the cost: context + N positions instead of N x context."""
        context, real = self.context_segments({k: v[:1] for k, v in batch.items()})
        candidate = self.candidate_segment(batch)
        width, dtype = context.shape[1], self.top.dtype
        positions = self.pos_emb(torch.arange(width + 1, device=context.device))
        ctx = (context + positions[:width]).to(dtype)
        cand = (candidate + positions[width])[:, None].to(dtype)  # [N, 1, H]
        ctx_mask = additive_mask(real[:, None, :].expand(1, width, width)).to(dtype)
        projected = None
        cached = self._candidate_projections
        if cached is not None and cached[0] == width and "cand_mean" not in batch:
            items = batch["cand_items"]
            projected = tuple(table[items][:, None] for table in cached[1:])
        last = len(self.top.layers) - 1
        for i, layer in enumerate(self.top.layers):
            cand = attend_from(layer, cand, ctx, real, and_self=True, projected=projected if i == 0 else None)
            if i < last:  # the context's own output of the last layer is never read
                ctx = self.top.run_layer(layer, ctx, ctx_mask)
        return self.head(cand[:, 0].float()).squeeze(-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch), batch["labels"].float())


def new_lm_ranker(
    config: LMRankerConfig, data: RecData, cache: LowerLayerCache, encoder_model: nn.Module
) -> LMRanker:
    mean = data.items["mean_train_rating"].to_numpy(dtype=float, na_value=np.nan)
    return LMRanker(config, cache, encoder_model, popularity_buckets(data), torch.tensor(mean))


def train_lm_ranker(
    data: RecData,
    cache: LowerLayerCache,
    encoder_model: nn.Module,
    examples: pd.DataFrame,
    config: LMRankerConfig,
    train_config: TrainConfig,
    *,
    batch_size: int = 256,
    init: LMSegmentModel | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[LMRanker, TrainResult]:
    """Train on the train-split CTR examples, select on valid AUC. ``init``: start the top layers from
    another tuned LM model's (the retriever's), so one language model is tuned for both tasks."""
    torch.manual_seed(train_config.seed)
    model = new_lm_ranker(config, data, cache, encoder_model)
    if init is not None:
        model.top.load_state_dict(init.top.state_dict())
    train = ctr_tensors(examples[examples["split"] == "train"], data)
    valid = ctr_tensors(examples[examples["split"] == "valid"], data)
    loader = DataLoader(TensorBatches(train), batch_size=batch_size, shuffle=True)
    trainer = Trainer(
        model,
        lambda m, b: m.loss(b),
        loader,
        lambda m: evaluate_ctr(m, valid),
        train_config,
        log=log,
        params=model.param_groups(train_config.lr, config.lm_lr),
    )
    result = trainer.fit()
    return trainer.trained_model, result
