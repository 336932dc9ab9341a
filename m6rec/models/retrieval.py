"""Retrieval: a user tower and an item tower over one shared text encoder, scored by cosine similarity
with a temperature-scaled softmax (contrastive) loss.

Item segments (``item_text``) and profile segments (``profile_text``) are run once through the frozen
lower encoder and cached (:class:`~m6rec.models.segments.SegmentCache`); the towers train over those
cached states, which is what makes training fit a CPU (DESIGN.md §4). The item tower is a projection
of the item's text state, plus an optional per-item ID embedding and a popularity embedding; an item
without an ID row (never seen in training) falls back to its text alone, so unseen items can be
retrieved. The user tower runs a small causal transformer over the profile segment and the history
segments (item state + rating + time gap), trained to predict every next item of every training
window (all items are the softmax's classes; in-batch negatives replace them for catalogues past
``full_softmax_max_items``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import ranking_metrics, ranks_in_chunks
from m6rec.models.segments import (
    CachedSegmentModel,
    SegmentCache,
    gap_buckets,
    popularity_buckets,
    rating_ids,
    segment_transformer,
)
from m6rec.training.trainer import TrainConfig, Trainer, TrainResult

EVAL_CHUNK = 1024  # users scored at once in evaluation: bounds memory at EVAL_CHUNK × n_items scores

# --- the model ----------------------------------------------------------------------------------------


@dataclass
class RetrieverConfig:
    dim: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.2
    max_len: int = 50
    temperature: float = 0.07
    cosine: bool = True  # False: plain dot products (as SASRec), temperature ignored
    use_ids: bool = True
    id_dropout: float = 0.2  # share of ID rows zeroed per step, so text alone stays a good item vector
    use_popularity: bool = True
    use_profile: bool = True
    full_softmax_max_items: int = 200_000  # larger catalogues (or 0) train on in-batch negatives
    hard_negatives: int = 0  # in-batch mode: add each query's top-N items from a random pool of items
    negative_pool: int = 4096


class SequentialRetriever(CachedSegmentModel):
    """User tower over cached segments; item tower = text projection (+ ID) (+ popularity)."""

    def __init__(
        self, config: RetrieverConfig, cache: SegmentCache, pop_buckets: torch.Tensor, has_id: torch.Tensor
    ) -> None:
        super().__init__(config.dim, cache, pop_buckets, has_id)
        self.config = config
        d = config.dim
        self.pos_emb = nn.Embedding(config.max_len + 1, d)
        self.encoder = segment_transformer(d, config.heads, config.layers, config.dropout)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def n_items(self) -> int:
        return self.item_states.shape[0]

    @property
    def _temperature(self) -> float:
        return self.config.temperature if self.config.cosine else 1.0

    def item_vectors(self, normalize: bool = True) -> torch.Tensor:
        """[n_items, d] item tower output for the whole catalogue."""
        vec = self.item_proj(self.item_states)
        if self.config.use_ids:
            ids = self.id_emb.weight * self.has_id[:, None]
            if self.training and self.config.id_dropout > 0:
                keep = torch.rand(self.n_items, 1, device=ids.device) >= self.config.id_dropout
                ids = ids * keep
            vec = vec + ids
        if self.config.use_popularity:
            vec = vec + self.pop_emb(self.pop_buckets)
        return F.normalize(vec, dim=-1) if normalize and self.config.cosine else vec

    def user_states(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        gaps: torch.Tensor,
        lengths: torch.Tensor,
        item_vecs: torch.Tensor,
        profile_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T+1, d]: position 0 is the profile segment, position t the t-th history segment."""
        batch, steps = items.shape
        # A request's own profile (serving) arrives as a pooled state instead of a training user index.
        states = profile_states if profile_states is not None else self.profile_states[users]
        profile = self.profile_proj(states)
        if not self.config.use_profile:
            profile = torch.zeros_like(profile)
        history = item_vecs[items.clamp(min=0)] + self.rating_emb(ratings) + self.gap_emb(gaps)
        tokens = torch.cat([profile[:, None], history], dim=1)
        tokens = tokens + self.pos_emb(torch.arange(steps + 1, device=tokens.device))[None]
        causal = torch.triu(torch.ones(steps + 1, steps + 1, dtype=torch.bool, device=tokens.device), 1)
        padding = torch.arange(steps + 1, device=tokens.device)[None] > lengths[:, None]
        out = self.encoder(self.dropout(tokens), mask=causal, src_key_padding_mask=padding)
        out = self.norm(out)
        return F.normalize(out, dim=-1) if self.config.cosine else out

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Softmax over the catalogue (or the batch's targets) for every next-item position."""
        item_vecs_raw = self.item_vectors(normalize=False)
        item_vecs = F.normalize(item_vecs_raw, dim=-1) if self.config.cosine else item_vecs_raw
        states = self.user_states(
            batch["users"], batch["items"], batch["ratings"], batch["gaps"], batch["lengths"], item_vecs_raw
        )[:, :-1]  # position t predicts item t
        valid = batch["items"] >= 0
        queries, targets = states[valid], batch["items"][valid]
        if self.n_items <= self.config.full_softmax_max_items:
            logits = queries @ item_vecs.T / self._temperature
            return F.cross_entropy(logits, targets)
        classes = torch.unique(targets)  # in-batch negatives: every query's target is a class
        if self.config.hard_negatives:
            # plus, per query, the highest-scoring items of a random pool (mined without gradient)
            with torch.no_grad():
                pool = torch.randperm(self.n_items, device=queries.device)[: self.config.negative_pool]
                top = (queries @ item_vecs[pool].T).topk(min(self.config.hard_negatives, len(pool)), dim=1)
                classes = torch.unique(torch.cat([classes, pool[top.indices].flatten()]))
        logits = queries @ item_vecs[classes].T / self._temperature
        return F.cross_entropy(logits, torch.searchsorted(classes, targets))

    @torch.no_grad()
    def user_vectors(
        self, batch: dict[str, torch.Tensor], item_vecs_raw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last state of each window (``batch["profile_states"]``, if given, replaces the profiles).
        ``item_vecs_raw``: ``item_vectors(normalize=False)`` computed once by a caller that serves many
        requests (it is the whole catalogue through the item tower)."""
        if item_vecs_raw is None:
            item_vecs_raw = self.item_vectors(normalize=False)
        states = self.user_states(
            batch["users"],
            batch["items"],
            batch["ratings"],
            batch["gaps"],
            batch["lengths"],
            item_vecs_raw,
            batch.get("profile_states"),
        )
        return states[torch.arange(len(states)), batch["lengths"]]

    @torch.no_grad()
    def score(
        self, batch: dict[str, torch.Tensor], item_vecs_raw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, n_items] cosine similarities of each user's last state with every item. ``item_vecs_raw``:
        ``item_vectors(normalize=False)`` computed once by a caller that scores many batches."""
        if item_vecs_raw is None:
            item_vecs_raw = self.item_vectors(normalize=False)
        items = F.normalize(item_vecs_raw, dim=-1) if self.config.cosine else item_vecs_raw
        return self.user_vectors(batch, item_vecs_raw) @ items.T


def new_retriever(config: RetrieverConfig, data: RecData, cache: SegmentCache) -> SequentialRetriever:
    has_id = torch.tensor(data.items["n_train_interactions"].to_numpy() > 0)
    return SequentialRetriever(config, cache, popularity_buckets(data), has_id)


# --- batches ------------------------------------------------------------------------------------------


@dataclass
class Window:
    user: int
    items: np.ndarray
    ratings: np.ndarray
    gaps: np.ndarray


@dataclass(frozen=True)
class UserEvents:
    """The events of some splits as arrays in (user_idx, position) order: user ``u``'s rows are
    ``start[u]:start[u + 1]``. Windows are slices of these (no per-user frames: a log of 10⁶ users would
    spend minutes building them on every evaluation)."""

    start: np.ndarray  # [n_users + 1]
    position: np.ndarray
    items: np.ndarray
    ratings: np.ndarray  # rating ids
    gaps: np.ndarray  # gap buckets: the time since the user's previous event in these splits

    @classmethod
    def of(cls, data: RecData, splits: tuple[str, ...]) -> UserEvents:
        chosen = data.events[data.events["split"].isin(splits)]  # sorted by user_idx, position
        users = chosen["user_idx"].to_numpy(dtype=np.int64)
        start = np.searchsorted(users, np.arange(data.n_users + 1))
        first = np.diff(users, prepend=-1) != 0  # each user's first event
        return cls(
            start=start,
            position=chosen["position"].to_numpy(dtype=np.int64),
            items=chosen["item_idx"].to_numpy(dtype=np.int64),
            ratings=rating_ids(chosen["rating"].to_numpy()),
            gaps=gap_buckets(chosen["ts"].to_numpy(), first=first),
        )

    def window(self, user: int, start: int, end: int) -> Window:
        """Rows ``start:end`` (absolute) of ``user``."""
        return Window(user, self.items[start:end], self.ratings[start:end], self.gaps[start:end])


def training_windows(data: RecData, max_len: int) -> list[Window]:
    """Each user's train sequence cut into windows of ``max_len`` from the end: every event is a
    prediction target exactly once per epoch (the first event of a window is predicted from the profile)."""
    events = UserEvents.of(data, ("train",))
    out = []
    for user in range(data.n_users):
        first, last = int(events.start[user]), int(events.start[user + 1])
        for end in range(last, first, -max_len):
            out.append(events.window(user, max(first, end - max_len), end))
    return out


def query_windows(
    data: RecData, split: str, max_len: int, users: Collection[str] | None = None
) -> tuple[list[Window], np.ndarray, list[np.ndarray]]:
    """For each held-out event (of ``users`` only, when given): the last ``max_len`` events before it,
    its target and full history."""
    events = UserEvents.of(data, data.history_splits(split))
    holdout = data.holdout(split)
    if users is not None:
        holdout = holdout[holdout["user_id"].astype(str).isin(set(users))]
    windows, exclude = [], []
    users_idx, positions = (holdout[c].to_numpy(dtype=np.int64) for c in ("user_idx", "position"))
    for user, position in zip(users_idx, positions, strict=True):
        first, last = int(events.start[user]), int(events.start[user + 1])
        end = first + int(np.searchsorted(events.position[first:last], position))  # events before it
        windows.append(events.window(int(user), max(first, end - max_len), end))
        exclude.append(events.items[first:end])
    return windows, holdout["item_idx"].to_numpy(dtype=np.int64, copy=True), exclude


def collate(windows: Sequence[Window]) -> dict[str, torch.Tensor]:
    """Right-padded batch; padded item slots are -1 (ignored by the loss)."""
    length = max(max(len(w.items) for w in windows), 1)
    items = torch.full((len(windows), length), -1, dtype=torch.long)
    ratings = torch.zeros((len(windows), length), dtype=torch.long)
    gaps = torch.zeros((len(windows), length), dtype=torch.long)
    for i, w in enumerate(windows):
        n = len(w.items)
        items[i, :n] = torch.tensor(w.items)
        ratings[i, :n] = torch.tensor(w.ratings)
        gaps[i, :n] = torch.tensor(w.gaps)
    return {
        "users": torch.as_tensor([w.user for w in windows]),
        "items": items,
        "ratings": ratings,
        "gaps": gaps,
        "lengths": torch.as_tensor([len(w.items) for w in windows]),
    }


# --- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def score_windows(
    model: SequentialRetriever,
    windows: Sequence[Window],
    batch_size: int = 256,
    item_vecs_raw: torch.Tensor | None = None,
) -> np.ndarray:
    """[len(windows), n_items] scores. The item tower runs once over the catalogue here (or not at all
    when the caller passes ``item_vecs_raw``, e.g. once per evaluation), not once per batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if item_vecs_raw is None:
        item_vecs_raw = catalogue_vectors(model)
    out = []
    for start in range(0, len(windows), batch_size):
        batch = {k: v.to(device) for k, v in collate(windows[start : start + batch_size]).items()}
        out.append(model.score(batch, item_vecs_raw).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.n_items), dtype=np.float32)


@torch.no_grad()
def catalogue_vectors(model: SequentialRetriever) -> torch.Tensor:
    """The item tower over the whole catalogue, in eval mode (what every scored batch shares)."""
    was_training = model.training
    model.eval()
    vectors = model.item_vectors(normalize=False)
    model.train(was_training)
    return vectors


def evaluate_retrieval(
    model: SequentialRetriever,
    data: RecData,
    split: str = "valid",
    ks: Sequence[int] = (10, 20),
    users: Collection[str] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics over the whole catalogue, history items excluded (RecBole protocol), for
    every user with a ``split`` target or the given sample of ``users``."""
    return evaluate_windows(model, *query_windows(data, split, model.config.max_len, users), ks)


def evaluate_windows(
    model: SequentialRetriever,
    windows: Sequence[Window],
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    ks: Sequence[int] = (10, 20),
) -> dict[str, float]:
    """:func:`evaluate_retrieval` on windows built once (training evaluates the same ones many times)."""
    items = catalogue_vectors(model)
    ranks = ranks_in_chunks(
        lambda a, b: score_windows(model, windows[a:b], item_vecs_raw=items), targets, exclude, EVAL_CHUNK
    )
    return ranking_metrics(ranks, ks)


def train_retriever(
    data: RecData,
    cache: SegmentCache,
    config: RetrieverConfig,
    train_config: TrainConfig,
    *,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
    eval_users: Collection[str] | None = None,
) -> tuple[SequentialRetriever, TrainResult]:
    """Train on the train split, select on valid NDCG (early stopping); returns the best weights."""
    torch.manual_seed(train_config.seed)
    model = new_retriever(config, data, cache)
    return fit_next_item(model, data, train_config, batch_size=batch_size, log=log, eval_users=eval_users)


def fit_next_item(
    model: nn.Module,
    data: RecData,
    train_config: TrainConfig,
    *,
    batch_size: int,
    log: Callable[[str], None] | None = None,
    params: list[dict] | None = None,
    eval_users: Collection[str] | None = None,
) -> tuple[nn.Module, TrainResult]:
    """The training loop every retriever shares: next-item loss (``model.loss``) over the train split's
    windows of ``model.config.max_len``, selected on valid NDCG@10; ``params`` gives optimiser groups
    (e.g. a lower learning rate for pretrained weights); ``eval_users``: the users whose valid targets
    select it (default all; a seeded sample on large logs). Returns the best weights."""
    loader = DataLoader(
        training_windows(data, model.config.max_len), batch_size=batch_size, shuffle=True, collate_fn=collate
    )
    valid = query_windows(data, "valid", model.config.max_len, eval_users)
    trainer = Trainer(
        model,
        lambda m, b: m.loss(b),
        loader,
        lambda m: evaluate_windows(m, *valid),
        train_config,
        log=log,
        params=params,
    )
    result = trainer.fit()
    return trainer.trained_model, result
