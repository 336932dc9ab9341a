"""Retrieval with the tuned language model (M6-Rec): a user tower made of the encoder's own top layers
over cached segment states, an item tower that reads each item's text.

User tower: the top layers of :mod:`m6rec.models.lm_layers`, causal over [profile, history...], so the
state at position ``t`` is the user vector that predicts item ``t + 1`` (every next item of every
training window is a target; the whole catalogue is the softmax's classes, as for the frozen-feature
retriever of :mod:`m6rec.models.retrieval`, whose windows, batches and evaluation this reuses). Item
tower: an MLP over the item's sentence embedding, so an item never seen in training is scored from its
text alone. History segments read the item tower's output too (mapped back to the layers' width,
zero-initialised), as SASRec shares one item table between input and output. Item-ID rows and a
popularity embedding are optional add-ons, reported beside the text-only model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m6rec.data.marts import RecData
from m6rec.models.lm_layers import LMSegmentModel, LowerLayerCache
from m6rec.models.retrieval import fit_next_item
from m6rec.models.segments import N_POP_BUCKETS, popularity_buckets
from m6rec.training.trainer import TrainConfig, TrainResult

ITEM_BLOCK = 65_536  # catalogue rows per item-tower pass without gradients (serving, evaluation)


@dataclass
class LMRetrieverConfig:
    tuning: str = "full"  # "full" | "lora" | "frozen" (the top layers)
    lora_rank: int = 8
    pretrained: bool = True  # False: the top layers' architecture from random weights (an ablation)
    lm_lr: float = 1e-4  # the pretrained layers; new weights use the trainer's lr
    dim: int = 256
    item_head: str = "mlp"  # "mlp" | "linear" over the item's sentence + lower-layer states
    item_hidden: int = 1024
    dropout: float = 0.1
    max_len: int = 50
    temperature: float = 0.07
    use_ids: bool = False  # add-on: a learned row per item seen in training
    use_popularity: bool = False  # add-on: a train-popularity bucket embedding (the text says it too)
    # Past this many items a step's softmax runs over the batch's own items plus `sampled_negatives`
    # uniformly drawn ones (mixed negative sampling) instead of the whole catalogue: the item tower over
    # 10⁵ items is ~4·10¹¹ FLOPs a step on this CPU, over ~10⁴ it is a tenth of that.
    full_softmax_max_items: int = 50_000
    sampled_negatives: int = 8192


class LMRetriever(LMSegmentModel):
    """User tower: the top layers, causal over [profile, history...]. Item tower: a head over each item's
    text states (+ optional ID rows and popularity). Cosine scores, temperature-scaled softmax over the
    whole catalogue for every next-item position."""

    def __init__(
        self,
        config: LMRetrieverConfig,
        cache: LowerLayerCache,
        encoder_model: nn.Module,
        pop_buckets: torch.Tensor,
        has_id: torch.Tensor,
    ) -> None:
        super().__init__(
            cache,
            encoder_model,
            tuning=config.tuning,
            lora_rank=config.lora_rank,
            pretrained=config.pretrained,
            max_positions=config.max_len + 1,
            dropout=config.dropout,
            pop_buckets=pop_buckets,
        )
        self.config = config
        hidden = cache.item_states.shape[1]
        self.register_buffer("has_id", has_id.bool().clone())
        if config.item_head == "mlp":
            self.item_head: nn.Module = nn.Sequential(
                nn.Linear(hidden, config.item_hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.item_hidden, config.dim),
            )
        elif config.item_head == "linear":
            self.item_head = nn.Linear(hidden, config.dim)
        else:
            raise ValueError(f"unknown item_head {config.item_head!r}; choose 'mlp' or 'linear'")
        self.user_proj = nn.Linear(hidden, config.dim)
        # History segments read the item tower's output too (as SASRec shares its item embeddings between
        # input and output): zero-initialised, so training starts from the text states alone.
        self.history_proj = nn.Linear(config.dim, hidden)
        nn.init.zeros_(self.history_proj.weight)
        nn.init.zeros_(self.history_proj.bias)
        self.id_emb = nn.Embedding(self.n_items, config.dim) if config.use_ids else None
        self.pop_emb = nn.Embedding(N_POP_BUCKETS + 1, config.dim) if config.use_popularity else None
        for emb in (self.id_emb, self.pop_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)

    def item_vectors(self, normalize: bool = True, items: torch.Tensor | None = None) -> torch.Tensor:
        """[n_items, dim]: the item tower over the whole catalogue (from text; IDs only where trained);
        with ``items``, over those rows only. Without gradients the catalogue goes through in blocks
        of :data:`ITEM_BLOCK` rows: the MLP head's hidden layer over 10⁶ items at once is 4 GB."""
        if items is None and not torch.is_grad_enabled() and self.n_items > ITEM_BLOCK:
            blocks = torch.arange(self.n_items, device=self.item_states.device).split(ITEM_BLOCK)
            return torch.cat([self.item_vectors(normalize, block) for block in blocks])
        rows = slice(None) if items is None else items
        vec = self.item_head(self.dropout(self.item_sentences[rows]))
        if self.id_emb is not None:
            vec = vec + self.id_emb.weight[rows] * self.has_id[rows, None]
        if self.pop_emb is not None:
            vec = vec + self.pop_emb(self.pop_buckets[rows])
        return F.normalize(vec, dim=-1) if normalize else vec

    def history_inputs(
        self, item_vecs_raw: torch.Tensor, items: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, T, H]: what each history segment starts from — the item's cached text state plus the item
        tower's (un-normalised) output mapped back to the layers' width. Gathered before the projection:
        a request maps its own few events, not the whole catalogue. ``rows``: where each item's vector is
        in ``item_vecs_raw`` when that holds a subset of the catalogue (default: the item index)."""
        idx = items.clamp(min=0)
        return self.item_states[idx] + self.history_proj(item_vecs_raw[idx if rows is None else rows])

    def _tower_inputs(
        self,
        batch: dict[str, torch.Tensor],
        item_vecs_raw: torch.Tensor,
        profile_states: torch.Tensor | None,
        rows: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user tower's segments [B, T+1, H] (profile, then the events) and its causal mask
        [B, T+1, T+1]: position t sees positions 0..t, never padding."""
        items, lengths = batch["items"], batch["lengths"]
        steps = items.shape[1] + 1
        segments = torch.cat(
            [
                self.profile_segment(batch["users"], profile_states)[:, None],
                self.history_segments(
                    self.history_inputs(item_vecs_raw, items, rows), batch["ratings"], batch["gaps"]
                ),
            ],
            dim=1,
        )
        position = torch.arange(steps, device=items.device)
        causal = position[None, :] <= position[:, None]  # query t sees keys 0..t
        return segments, causal[None] & (position[None, None, :] <= lengths[:, None, None])

    def user_states(
        self,
        batch: dict[str, torch.Tensor],
        item_vecs_raw: torch.Tensor,
        profile_states: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T+1, dim], unit norm: position 0 reads the profile, position t the first t events
        (``rows`` as for :meth:`history_inputs`)."""
        segments, allowed = self._tower_inputs(batch, item_vecs_raw, profile_states, rows)
        return F.normalize(self.user_proj(self.encode(segments, allowed)), dim=-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Softmax CE for every next-item position: over the catalogue, or past
        ``full_softmax_max_items`` over the batch's items (every window item is both a history segment
        and a target) plus ``sampled_negatives`` uniform ones, the item tower running on those only."""
        items = batch["items"]
        valid = items >= 0
        targets = items[valid]
        if self.n_items <= self.config.full_softmax_max_items:
            raw = self.item_vectors(normalize=False)
            states = self.user_states(batch, raw)[:, :-1]  # position t predicts item t
        else:
            negatives = torch.randint(self.n_items, (self.config.sampled_negatives,), device=items.device)
            classes = torch.unique(torch.cat([targets, negatives]))  # sorted
            raw = self.item_vectors(normalize=False, items=classes)
            rows = torch.searchsorted(classes, items.clamp(min=0))
            states = self.user_states(batch, raw, rows=rows)[:, :-1]
            targets = torch.searchsorted(classes, targets)
        logits = states[valid] @ F.normalize(raw, dim=-1).T / self.config.temperature
        return F.cross_entropy(logits, targets)

    @torch.no_grad()
    def user_vectors(
        self, batch: dict[str, torch.Tensor], item_vecs_raw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The state after each window's last event (``batch["profile_states"]`` replaces the profiles).
        ``item_vecs_raw``: ``item_vectors(normalize=False)`` computed once by a caller that serves many
        requests."""
        if item_vecs_raw is None:
            item_vecs_raw = self.item_vectors(normalize=False)
        segments, allowed = self._tower_inputs(batch, item_vecs_raw, batch.get("profile_states"), None)
        state = self.encode_at(segments, allowed, batch["lengths"])  # the last event's position only
        return F.normalize(self.user_proj(state), dim=-1)

    @torch.no_grad()
    def score(
        self, batch: dict[str, torch.Tensor], item_vecs_raw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, n_items] cosine scores; ``item_vecs_raw`` as for :meth:`user_vectors`."""
        if item_vecs_raw is None:
            item_vecs_raw = self.item_vectors(normalize=False)
        return self.user_vectors(batch, item_vecs_raw) @ F.normalize(item_vecs_raw, dim=-1).T


def new_lm_retriever(
    config: LMRetrieverConfig, data: RecData, cache: LowerLayerCache, encoder_model: nn.Module
) -> LMRetriever:
    has_id = torch.tensor(data.items["n_train_interactions"].to_numpy() > 0)
    return LMRetriever(config, cache, encoder_model, popularity_buckets(data), has_id)


def train_lm_retriever(
    data: RecData,
    cache: LowerLayerCache,
    encoder_model: nn.Module,
    config: LMRetrieverConfig,
    train_config: TrainConfig,
    *,
    batch_size: int = 64,
    init: LMRetriever | None = None,
    log: Callable[[str], None] | None = None,
    eval_users: Collection[str] | None = None,
) -> tuple[LMRetriever, TrainResult]:
    """Next-item training on the train split, selected on valid NDCG@10 (early stopping). ``init``
    warm-starts from another LM retriever's weights (e.g. the text-only one, before adding ID rows)."""
    torch.manual_seed(train_config.seed)
    model = new_lm_retriever(config, data, cache, encoder_model)
    if init is not None:
        missing, _ = model.load_state_dict(init.state_dict(), strict=False)
        if any(not k.startswith(("id_emb", "pop_emb")) for k in missing):
            raise ValueError(f"init does not match this retriever's shape (missing {missing[:5]})")
    params = model.param_groups(train_config.lr, config.lm_lr)
    return fit_next_item(
        model, data, train_config, batch_size=batch_size, log=log, params=params, eval_users=eval_users
    )
