"""Reference recommenders evaluated on the same splits as the language models: Pop, ItemKNN, SASRec.

Every baseline has ``fit(train_sequences, n_items)`` and ``score(histories) -> [n_users, n_items]``
over catalogue ``item_idx``; history exclusion and ranking are left to :mod:`m6rec.evaluation.metrics`, so
all models are ranked by one piece of code.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from m6rec.data.eval_inputs import EvalInputs
from m6rec.evaluation.metrics import ranking_metrics, ranks_in_chunks

log = logging.getLogger(__name__)

Sequences = Sequence[np.ndarray]


def binary_matrix(sequences: Sequences, n_items: int) -> sp.csr_array:
    """Row-per-sequence 0/1 interaction matrix (repeated items count once)."""
    indptr = np.r_[0, np.cumsum([len(s) for s in sequences])]
    indices = np.concatenate(sequences).astype(np.int64) if len(sequences) else np.zeros(0, np.int64)
    mat = sp.csr_array(
        (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(sequences), n_items)
    )
    mat.sum_duplicates()
    mat.data[:] = 1.0
    return mat


class Popularity:
    """Score every item by its number of train interactions: the floor any model must clear."""

    def __init__(self) -> None:
        self.counts_: np.ndarray | None = None

    def fit(self, train_sequences: Sequences, n_items: int) -> Popularity:
        seqs = [np.asarray(s, dtype=np.int64) for s in train_sequences]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        self.counts_ = np.bincount(flat, minlength=n_items).astype(np.float32)
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        if self.counts_ is None:
            raise RuntimeError("call fit() first")
        return np.tile(self.counts_, (len(histories), 1))


def item_neighbours(
    train_sequences: Sequences, n_items: int, k: int, shrinks: Sequence[float], block_size: int = 2048
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """ItemKNN's neighbour lists for several shrinkages from one pass over the co-occurrence counts
    (which do not depend on the shrinkage): per shrink, ``(items [n_items, k'], similarities
    [n_items, k'])``, each row best first (ties to the smaller item) and padded with similarity 0,
    ``k' = min(k, n_items - 1)``. A list of k holds every shorter one as its prefix, so one pass serves
    a whole (k, shrink) grid. Only co-occurring pairs are visited (the counts stay sparse: items that
    never share a user have similarity 0 and are never neighbours), so the cost follows the pairs in
    the log, not items²; row blocks of ``block_size`` items bound the memory of the pairs at once."""
    x = binary_matrix(train_sequences, n_items)
    xt = x.T.tocsr()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    k = min(k, max(n_items - 1, 1))
    out = {float(s): (np.zeros((n_items, k), np.int32), np.zeros((n_items, k), np.float32)) for s in shrinks}
    for start in range(0, n_items, block_size):
        co = (xt[start : start + block_size] @ x).tocoo()
        rows, cols, counts = co.row.astype(np.int64) + start, co.col.astype(np.int64), co.data
        other = rows != cols  # an item is not its own neighbour
        rows, cols, counts = rows[other], cols[other], counts[other]
        denominator = norms[rows] * norms[cols]
        for shrink, (items, similarities) in out.items():
            sim = counts / (denominator + shrink + 1e-6)
            order = np.lexsort((cols, -sim, rows))  # by item, then best first, then smaller neighbour
            r, c, v = rows[order], cols[order], sim[order]
            rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
            top = (rank < k) & (v > 0)
            items[r[top], rank[top]] = c[top]
            similarities[r[top], rank[top]] = v[top]
    return out


class ItemKNN:
    """Item-item cosine neighbours on the binary train matrix, as RecBole's ItemKNN.

    sim(i, j) = |U_i ∩ U_j| / (sqrt|U_i| sqrt|U_j| + shrink); shrinkage damps similarities built on
    few co-occurrences. Each candidate item j keeps its ``k`` most similar items N_k(j), and
    score(u, j) = sum of sim(i, j) over the history items i of u that lie in N_k(j).
    """

    def __init__(self, k: int = 100, shrink: float = 10.0, block_size: int = 2048) -> None:
        if k < 1 or shrink < 0:
            raise ValueError("k must be >= 1 and shrink >= 0")
        self.k, self.shrink, self.block_size = k, shrink, block_size
        self.similarity_: sp.csr_array | None = None
        """[n_items, n_items]: row j holds sim(j, i) for i in N_k(j)."""

    def fit(self, train_sequences: Sequences, n_items: int) -> ItemKNN:
        neighbours = item_neighbours(train_sequences, n_items, self.k, [self.shrink], self.block_size)
        return self._set_neighbours(*neighbours[float(self.shrink)])

    @classmethod
    def fit_grid(
        cls,
        train_sequences: Sequences,
        n_items: int,
        grid: Sequence[dict[str, float]],
        block_size: int = 2048,
    ) -> Iterator[tuple[dict[str, float], ItemKNN]]:
        """``(params, fitted model)`` for each ``{"k", "shrink"}`` of ``grid``, as many separate fits would
        give, from one pass over the co-occurrences (a tuning grid costs about one fit, not one per point)."""
        k_max = max(int(p["k"]) for p in grid)
        neighbours = item_neighbours(
            train_sequences, n_items, k_max, sorted({float(p["shrink"]) for p in grid}), block_size
        )
        for params in grid:
            model = cls(k=int(params["k"]), shrink=float(params["shrink"]), block_size=block_size)
            yield params, model._set_neighbours(*neighbours[float(params["shrink"])])

    def _set_neighbours(self, items: np.ndarray, similarities: np.ndarray) -> ItemKNN:
        items, similarities = items[:, : self.k], similarities[:, : self.k]
        rows, slots = np.nonzero(similarities > 0)
        self.similarity_ = sp.csr_array(
            (similarities[rows, slots], (rows, items[rows, slots])), shape=(len(items), len(items))
        )
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        if self.similarity_ is None:
            raise RuntimeError("call fit() first")
        h = binary_matrix(histories, self.similarity_.shape[0])
        return np.asarray((h @ self.similarity_.T).toarray(), dtype=np.float32)


class _SASRecNet(nn.Module):
    """SASRec (Kang & McAuley 2018) as in RecBole: item + learned position embeddings, LayerNorm,
    dropout, post-LN causal Transformer blocks, output tied to the item embedding."""

    def __init__(
        self, n_items: int, max_len: int, hidden: int, n_layers: int, n_heads: int, inner: int, dropout: float
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=n_items)  # last row = padding
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden, n_heads, inner, dropout, activation="gelu", batch_first=True, layer_norm_eps=1e-12
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.apply(self._init)
        for block in self.encoder.layers:
            nn.init.normal_(block.self_attn.in_proj_weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[n_items].zero_()

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, d] for right-padded item sequences [B, T].

        Sequences are right-padded, so under the causal mask a real position never sees padding
        and no key-padding mask is needed.
        """
        length = seq.size(1)
        x = self.item_emb(seq) + self.pos_emb.weight[:length]
        x = self.dropout(self.norm(x))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=seq.device)
        return self.encoder(x, mask=mask, is_causal=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[: self.n_items].T


def _training_windows(sequences: Sequences, max_len: int) -> list[np.ndarray]:
    """Cut each sequence into windows of at most max_len + 1 items whose targets (all items but
    the first) cover every next-item event exactly once, the latest window ending at the last item."""
    windows = []
    for seq in sequences:
        end = len(seq)
        while end > 1:
            start = max(0, end - max_len - 1)
            windows.append(np.asarray(seq[start:end], dtype=np.int64))
            end = start + 1
    return windows


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (1 is fastest on a shared 2-core machine)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SASRecBaseline:
    """Self-attentive sequential recommender on item IDs, trained with full-softmax next-item CE.

    Defaults follow RecBole's SASRec (2 layers, 2 heads, d=64, inner 256, dropout 0.5, Adam 1e-3,
    CE loss); every position of a training window is a next-item example, as RecBole's prefix
    augmentation. Early stopping keeps the epoch with the best valid NDCG@10. Deterministic for a
    seed on CPU; CUDA is used when available unless ``device`` says otherwise.
    """

    def __init__(
        self,
        max_len: int = 50,
        hidden: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner: int = 256,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        max_epochs: int = 200,
        patience: int = 10,
        max_train_seconds: float | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        num_threads: int | None = None,
        eval_batch_size: int = 1024,
    ) -> None:
        self.max_len, self.hidden, self.n_layers, self.n_heads = max_len, hidden, n_layers, n_heads
        self.inner, self.dropout, self.lr, self.weight_decay = inner, dropout, lr, weight_decay
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.max_train_seconds, self.seed, self.num_threads = max_train_seconds, seed, num_threads
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_: _SASRecNet | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int | None = None
        self.best_valid_ndcg_: float | None = None

    def _batches(self, windows: list[np.ndarray], order: np.ndarray) -> Iterator[tuple[torch.Tensor, ...]]:
        pad = self.model_.n_items
        for start in range(0, len(order), self.batch_size):
            batch = [windows[i] for i in order[start : start + self.batch_size]]
            length = max(len(w) for w in batch) - 1
            inputs = np.full((len(batch), length), pad, dtype=np.int64)
            targets = np.full((len(batch), length), -100, dtype=np.int64)
            for row, w in enumerate(batch):
                inputs[row, : len(w) - 1] = w[:-1]
                targets[row, : len(w) - 1] = w[1:]
            yield torch.from_numpy(inputs).to(self.device), torch.from_numpy(targets).to(self.device)

    def fit(
        self,
        train_sequences: Sequences,
        n_items: int,
        valid: EvalInputs | tuple[Sequences, np.ndarray] | None = None,
    ) -> SASRecBaseline:
        """Train on next-item prediction; with ``valid`` (histories, targets), stop early on NDCG@10."""
        if valid is not None and not isinstance(valid, tuple):
            valid = (valid.histories, valid.targets)
        windows = _training_windows(train_sequences, self.max_len)
        if not windows:
            raise ValueError("no training sequence has two or more items")
        rng = np.random.default_rng(self.seed)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with _torch_threads(self.num_threads), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            self.model_ = _SASRecNet(
                n_items, self.max_len, self.hidden, self.n_layers, self.n_heads, self.inner, self.dropout
            ).to(self.device)
            optimiser = torch.optim.Adam(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
            self.history_, best_state, best, since_best = [], None, -math.inf, 0
            started = time.perf_counter()
            for epoch in range(1, self.max_epochs + 1):
                self.model_.train()
                total, n_tokens = 0.0, 0
                for inputs, targets in self._batches(windows, rng.permutation(len(windows))):
                    # logits for real positions only: padding would cost batch × window × catalogue
                    real = targets != -100
                    logits = self.model_.logits(self.model_(inputs)[real])
                    loss = loss_fn(logits, targets[real])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    count = int(real.sum())
                    total, n_tokens = total + loss.item() * count, n_tokens + count
                    if self._out_of_time(started):  # an epoch of a large log outlasts the budget
                        break
                record = {"epoch": epoch, "loss": total / n_tokens, "seconds": time.perf_counter() - started}
                if valid is not None:
                    histories, targets = valid
                    ranks = ranks_in_chunks(
                        lambda a, b, h=histories: self._score_tensor(h[a:b]), targets, histories
                    )
                    record["valid_ndcg@10"] = ranking_metrics(ranks, ks=(10,))["ndcg@10"]
                    if record["valid_ndcg@10"] > best:
                        best, since_best, self.best_epoch_ = record["valid_ndcg@10"], 0, epoch
                        best_state = {k: v.detach().clone() for k, v in self.model_.state_dict().items()}
                    else:
                        since_best += 1
                self.history_.append(record)
                log.info("SASRec epoch %s: %s", epoch, record)
                if (valid is not None and since_best >= self.patience) or self._out_of_time(started):
                    break
            if best_state is not None:
                self.model_.load_state_dict(best_state)
                self.best_valid_ndcg_ = best
            else:
                self.best_epoch_ = len(self.history_)
        self.model_.eval()
        return self

    def _out_of_time(self, started: float) -> bool:
        """The wall-clock budget is spent: checked after every batch, so training stops mid-epoch (the
        partial epoch is still evaluated on valid and kept if it is the best)."""
        return self.max_train_seconds is not None and time.perf_counter() - started > self.max_train_seconds

    @torch.no_grad()
    def _score_tensor(self, histories: Sequences) -> torch.Tensor:
        """Scores [n, n_items] on the model's device from the last max_len items of each history.

        An empty history is fed as a lone padding token, which yields a context-free score.
        """
        if self.model_ is None:
            raise RuntimeError("call fit() first")
        model, pad = self.model_, self.model_.n_items
        was_training = model.training
        model.eval()
        out = []
        for start in range(0, len(histories), self.eval_batch_size):
            batch = [
                np.asarray(h, dtype=np.int64)[-self.max_len :]
                for h in histories[start : start + self.eval_batch_size]
            ]
            lengths = np.array([max(len(h), 1) for h in batch])
            inputs = np.full((len(batch), lengths.max()), pad, dtype=np.int64)
            for row, h in enumerate(batch):
                inputs[row, : len(h)] = h
            hidden = model(torch.from_numpy(inputs).to(self.device))
            rows = torch.arange(len(batch), device=self.device)
            last = hidden[rows, torch.as_tensor(lengths - 1, device=self.device)]
            out.append(model.logits(last))
        model.train(was_training)
        if not out:
            return torch.zeros((0, pad), device=self.device)
        return torch.cat(out)

    def score(self, histories: Sequences) -> np.ndarray:
        with _torch_threads(self.num_threads):
            return self._score_tensor(histories).float().cpu().numpy()
