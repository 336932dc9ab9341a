"""The inference API over a model bundle (:mod:`m6rec.serving.bundle`): retrieval, ranking, similar
items and the behaviour text of a request; the BentoML service's engine answers over it."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from m6rec.data.marts import DataContract, RecData
from m6rec.models.backbones import load_encoder, pick_device
from m6rec.models.late_interaction import CandidateStates, load_token_ranker, segment_types
from m6rec.models.lm_layers import LowerLayerCache
from m6rec.models.registry import build_model
from m6rec.models.retrieval import Window, collate
from m6rec.models.segments import SegmentCache, gap_buckets, gaps_before, rating_ids
from m6rec.serving.bundle import BUNDLE_FORMAT
from m6rec.serving.item_index import ItemIndex
from m6rec.serving.precision import check_setting, pick_scoring_dtype
from m6rec.text.textify import Event, Profile, TextStyle, behaviour_segments, profile_text, pronoun

PROFILE_CACHE_SIZE = 4096


@dataclass
class HistoryEvent:
    item_id: str
    rating: float | None = None
    ts: int | None = None


@dataclass
class RecommendQuery:
    history: list[HistoryEvent]
    k: int = 10
    profile: Profile | None = None
    query: str | None = None
    rerank: int = 50  # retrieved items the ranker re-scores (history-only queries); 0 = retrieval only
    exclude_seen: bool = True


@dataclass
class RankJob:
    history: list[HistoryEvent]
    candidates: Sequence[str]
    profile: Profile | None = None
    now_ts: int | None = None


@dataclass
class Scored:
    item_id: str
    title: str
    score: float
    explanation: str | None = None


def _rating_ids(history: Sequence[HistoryEvent]) -> np.ndarray:
    return rating_ids(np.asarray([np.nan if e.rating is None else e.rating for e in history], dtype=float))


class UnknownItemError(KeyError):
    """A request named item ids the catalogue does not have."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        super().__init__(f"unknown item id(s): {', '.join(map(repr, ids[:10]))}")


class Recommender:
    """Loads a bundle once; every method is safe to call from many requests (no shared mutable state)."""

    def __init__(
        self, path: str | Path, device: str | torch.device | None = None, precision: str = "auto"
    ) -> None:
        """``precision``: the CTR scorer's arithmetic (:func:`m6rec.serving.precision.pick_scoring_dtype`;
        ``auto`` serves bfloat16 where the bundle's check and the hardware allow)."""
        check_setting(precision)  # a bad setting fails now, not after the load
        self.path = Path(path)
        self.device = torch.device(device) if device else pick_device()
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.items = pd.read_parquet(self.path / "items.parquet")
        self.index = dict(zip(self.items["item_id"], self.items["item_idx"], strict=True))
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(
                f"{self.path} is a format-{self.manifest.get('format')} bundle; this m6rec reads format "
                f"{BUNDLE_FORMAT}: re-run the pipeline (or the retrain job) to rebuild it"
            )
        self.style = TextStyle(**self.manifest["style"])
        # every value training took from the marts (like rule, CTR history length): from here only
        self.contract = DataContract.from_manifest(self.manifest, str(self.path / "manifest.json"))
        # The catalogue-sized tables (cached states, ID rows, the ANN index) are memory-mapped: read
        # only, so every worker process of the service shares one copy of them in the page cache.
        self.segment_cache = SegmentCache.load(self.path / "segments.pt", mmap=True)
        lm_file = self.path / "lm_segments.pt"
        lm_cache = LowerLayerCache.load(lm_file, mmap=True) if lm_file.exists() else None
        self.encoder = load_encoder(self.path / "encoder", device=self.device)
        shim = RecData(items=self.items, users=pd.DataFrame({"user_id": []}), events=pd.DataFrame())
        self.retriever, self.ranker = (
            self._load_model(task, shim, lm_cache) for task in ("retriever", "ranker")
        )
        with torch.no_grad():
            self.item_vectors = self.retriever.item_vectors()  # [n_items, d], unit norm
            self.item_vectors_raw = self.retriever.item_vectors(normalize=False)  # history segments
            self.ranker.cache_item_vectors()
        self.texts = shim.item_texts()  # the same ItemText rows training rendered
        self.item_ids = self.items["item_id"].astype(str).to_numpy()
        self.titles = self.items["title"].astype(str).to_numpy()
        # Profile texts take few distinct values (age, gender, occupation) and encoding one costs a
        # full encoder pass (~9 ms of a ~25 ms request on one CPU thread), so they are memoised.
        self._encode_profile = functools.lru_cache(maxsize=PROFILE_CACHE_SIZE)(self._encode_profile_uncached)
        # Large catalogues: candidates from the ANN index built with the bundle, scored exactly after.
        self.ann = ItemIndex.load(self.path / "index", mmap=True) if (self.path / "index").is_dir() else None
        self._touch_mapped_tables()
        self.token_ranker, self.token_config, self.candidate_states = None, None, None
        if (self.path / "token_ranker").is_dir():
            self.token_ranker, self.token_config = load_token_ranker(self.path / "token_ranker", self.device)
            self.candidate_states = CandidateStates.load(self.path / "token_ranker" / "candidates.pt")
        self.scoring_dtype, self.precision_reason = pick_scoring_dtype(
            precision,
            self.ranker if self.token_ranker is None else self.token_ranker,
            self.manifest["ranker"].get("precision"),
            self.device,
        )
        if self.scoring_dtype != torch.float32:
            self.ranker.set_scoring_dtype(self.scoring_dtype)

    def _load_model(self, task: str, data: RecData, lm_cache: LowerLayerCache | None) -> torch.nn.Module:
        spec = self.manifest[task]
        model = build_model(spec, data, self.segment_cache, lm_cache, self.encoder.model)
        weights = torch.load(self.path / f"{task}.pt", map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(weights, assign=True)  # the file's (mapped) tensors become the weights
        return model.to(self.device).eval()

    @property
    def ranker_kind(self) -> str:
        """Which model :meth:`rank` uses: "token" (late interaction over tokens) or the serving CTR
        model's kind ("lm_ranker", "segment_ranker")."""
        return "token" if self.token_ranker is not None else self.manifest["ranker"]["kind"]

    @property
    def serving(self) -> dict[str, str]:
        """The evaluation row of the model that serves each task."""
        ctr = self.manifest["ranker"].get("name", self.ranker_kind)
        if self.token_ranker is not None:
            ctr = f"m6rec token ranker (late interaction, k={self.token_config.top_k})"
        return {
            "retrieval": self.manifest["retriever"].get("name", self.manifest["retriever"]["kind"]),
            "ctr": ctr,
        }

    @property
    def precision(self) -> dict[str, str]:
        """The arithmetic each task is served in, and why the CTR scorer's is what it is."""
        ctr = "bf16" if self.scoring_dtype == torch.bfloat16 else "fp32"
        return {"retrieval": "fp32", "ctr": ctr, "ctr_reason": self.precision_reason}

    @torch.no_grad()
    def _touch_mapped_tables(self) -> None:
        """Read a value of every memory page of the catalogue-sized tables requests gather rows from
        (and the ANN index), so the service is ready only once they are in memory rather than its
        first requests faulting them in (``bench/serving_scale.py``'s ``cold_p99_ms``)."""
        n = len(self.items)
        tables = [self.segment_cache.item_states]
        for model in (self.retriever, self.ranker):
            tables += [t for t in (*model.buffers(), *model.parameters()) if t.dim() and t.shape[0] == n]
        for table in tables:
            if table.device.type == "cpu" and table.is_contiguous():
                table.reshape(-1)[:: 4096 // table.element_size()].sum()  # one value a 4 KiB page
        if self.ann is not None:
            self.ann.touch()

    # --- helpers ------------------------------------------------------------------------------------
    def _indices(self, ids: list[str]) -> np.ndarray:
        unknown = [i for i in ids if i not in self.index]
        if unknown:
            raise UnknownItemError(unknown)
        return np.asarray([self.index[i] for i in ids], dtype=np.int64)

    def _text_events(self, history: list[HistoryEvent], idx: np.ndarray) -> list[Event]:
        """The history (its items at catalogue indices ``idx``) as textify events, for the behaviour text."""
        return [
            Event(item=self.texts[i], ts=e.ts, rating=e.rating) for i, e in zip(idx, history, strict=True)
        ]

    def _profile_state(self, profile: Profile | None, model: torch.nn.Module) -> torch.Tensor:
        """The profile segment ``model`` reads: the pooled state after its cached lower layers (tuned-LM
        models) or the sentence embedding (frozen-feature models)."""
        return self._encode_profile(profile_text(profile), getattr(model, "profile_layer", None))

    def _encode_profile_uncached(self, text: str, layer: int | None) -> torch.Tensor:
        if layer is None:
            return self.encoder.encode([text], max_length=32).to(self.device)[0]
        return self.encoder.encode_layers([text], (layer,), max_length=32)[0].to(self.device)[0]

    def _window(self, history: list[HistoryEvent]) -> Window:
        """The last ``max_len`` events as the user tower's window; features from the whole history (so
        the window's first time gap is measured from the event before it, as in training)."""
        items = self._indices([e.item_id for e in history])
        ratings = _rating_ids(history)
        if history and all(e.ts is not None for e in history):
            gaps = gap_buckets(np.asarray([e.ts for e in history], dtype=np.int64))
        else:
            gaps = np.zeros(len(history), dtype=np.int64)
        keep = slice(max(0, len(items) - self.retriever.config.max_len), len(items))
        return Window(0, items[keep], ratings[keep], gaps[keep])

    # --- API ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _query_vectors(
        self, queries: Sequence[RecommendQuery]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``[n_queries, dim]`` user-tower vectors (zero rows for queries without one) and sentence
        embeddings of the free-text queries (likewise), or None when no query has that part."""
        users, texts = None, None
        tower = [i for i, q in enumerate(queries) if q.history or q.query is None]
        if tower:
            batch = {
                k: v.to(self.device)
                for k, v in collate([self._window(queries[i].history) for i in tower]).items()
            }
            batch["profile_states"] = torch.stack(
                [self._profile_state(queries[i].profile, self.retriever) for i in tower]
            )
            vectors = self.retriever.user_vectors(batch, self.item_vectors_raw)
            users = vectors.new_zeros(len(queries), vectors.shape[1])
            users[tower] = vectors
        asked = [i for i, q in enumerate(queries) if q.query]
        if asked:
            encoded = self.encoder.encode([queries[i].query for i in asked], max_length=64).to(self.device)
            texts = encoded.new_zeros(len(queries), encoded.shape[1])
            texts[asked] = encoded
        return users, texts

    @torch.no_grad()
    def retrieve_scores_batch(self, queries: Sequence[RecommendQuery]) -> np.ndarray:
        """``[len(queries), n_items]`` cosine scores, exact over the whole catalogue: the user tower over
        each history (all windows in one forward pass) plus the text encoder's similarity of each
        free-text query with the items."""
        users, texts = self._query_vectors(queries)
        total = torch.zeros(len(queries), len(self.items), device=self.device)
        if users is not None:
            total += users @ self.item_vectors.T
        if texts is not None:
            total += texts @ self.segment_cache.item_states.to(self.device).T
        return total.cpu().numpy()

    @torch.no_grad()
    def candidates(
        self, queries: Sequence[RecommendQuery], needed: Sequence[int]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query ``(item indices, scores)`` to pick its top from: the whole catalogue when it is
        scanned exactly; otherwise the ANN index's ``needed`` best items for the query (its tower and
        text vectors concatenated, as the index's items are), scored exactly as the full scan would."""
        if self.ann is None:
            every = np.arange(len(self.items))
            return [(every, row) for row in self.retrieve_scores_batch(queries)]
        users, texts = self._query_vectors(queries)
        width = self.ann.info["parts"]
        joined = torch.zeros(len(queries), sum(width))
        if users is not None:
            joined[:, : width[0]] = users.float().cpu()
        if texts is not None:
            joined[:, width[0] :] = texts.float().cpu()
        out = []
        for i, n in enumerate(needed):
            _, found = self.ann.search(joined[i : i + 1].numpy(), n)
            idx = found[0][found[0] >= 0]
            pick = torch.from_numpy(idx).to(self.device)
            scores = torch.zeros(len(idx), device=self.device)
            if users is not None:
                scores += self.item_vectors[pick] @ users[i]
            if texts is not None:
                scores += self.segment_cache.item_states[pick].to(self.device) @ texts[i]
            out.append((idx, scores.cpu().numpy()))
        return out

    def retrieve_scores(
        self, history: list[HistoryEvent], profile: Profile | None = None, query: str | None = None
    ) -> np.ndarray:
        """Scores over the catalogue for one user (see :meth:`retrieve_scores_batch`)."""
        return self.retrieve_scores_batch([RecommendQuery(history, profile=profile, query=query)])[0]

    @torch.no_grad()
    def rank_batch(self, jobs: Sequence[RankJob]) -> list[np.ndarray]:
        """Like probability of each job's candidates. The pooled ranker scores every (user, candidate)
        pair of every job in one forward pass; the tuned-LM scorer runs each job's context through its
        layers once and every candidate as one position (late interaction); the token-level ranker goes
        job by job."""
        if not jobs:
            return []
        cands = [self._indices(list(j.candidates)) for j in jobs]
        if self.token_ranker is not None:
            return [
                self._rank_tokens(j.history, c, j.profile, j.now_ts) for j, c in zip(jobs, cands, strict=True)
            ]
        n, width_max = sum(len(c) for c in cands), self.contract.ctr_history_length  # as marts.ctr_examples
        hist_items = torch.full((n, width_max), -1, dtype=torch.long)
        ratings = torch.zeros((n, width_max), dtype=torch.long)
        gaps = torch.zeros((n, width_max), dtype=torch.long)
        profiles, row = [], 0
        for job, cand in zip(jobs, cands, strict=True):
            recent = job.history[-width_max:]
            rows, width = slice(row, row + len(cand)), len(recent)
            hist_items[rows, :width] = torch.as_tensor(self._indices([e.item_id for e in recent]))
            ratings[rows, :width] = torch.as_tensor(_rating_ids(recent))
            if recent and job.now_ts is not None and all(e.ts is not None for e in recent):
                gaps[rows, :width] = torch.as_tensor(
                    gaps_before(np.asarray([e.ts for e in recent]), job.now_ts)
                )
            profiles.append(self._profile_state(job.profile, self.ranker)[None].expand(len(cand), -1))
            row += len(cand)
        batch = {
            "users": torch.zeros(n, dtype=torch.long),
            "hist_items": hist_items,
            "hist_ratings": ratings,
            "hist_gaps": gaps,
            "cand_items": torch.as_tensor(np.concatenate(cands) if cands else np.zeros(0, dtype=np.int64)),
        }
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["profile_states"] = torch.cat(profiles)
        ends = np.cumsum([len(c) for c in cands])
        if hasattr(self.ranker, "rank_candidates"):
            logits = torch.cat(
                [
                    self.ranker.rank_candidates({k: v[start:end] for k, v in batch.items()})
                    for start, end in zip(np.r_[0, ends[:-1]], ends, strict=True)
                    if end > start
                ]
                or [torch.zeros(0, device=self.device)]
            )
        else:
            logits = self.ranker(batch)
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        return np.split(probs, ends[:-1])

    def rank(
        self,
        history: list[HistoryEvent],
        candidates: list[str],
        profile: Profile | None = None,
        now_ts: int | None = None,
    ) -> np.ndarray:
        """Like probability of each candidate (the CTR ranker over the last history events)."""
        return self.rank_batch([RankJob(history, candidates, profile, now_ts)])[0]

    def _rank_tokens(
        self, history: list[HistoryEvent], cand: np.ndarray, profile: Profile | None, now_ts: int | None
    ) -> np.ndarray:
        """Token-level late interaction: the request's profile and history segments (built by the same
        function as in training) through the lower layers once; the cached question segments of the
        candidates; the top layers per candidate."""
        assert self.token_ranker is not None and self.token_config is not None
        assert self.candidate_states is not None
        events = self._text_events(history, self._indices([e.item_id for e in history]))
        segments = behaviour_segments(
            profile or Profile(),
            events,
            self.texts[int(cand[0])],
            now_ts,
            max_events=self.token_config.history,
            style=self.style,
        )[:-1]
        states = self.candidate_states.get(pronoun(profile), cand.tolist(), self.device)
        logits = self.token_ranker.rank_candidates(
            segments,
            segment_types(len(segments) + 1)[:-1],
            states,
            max_length=self.token_config.max_length,
        )
        return torch.sigmoid(logits.float()).cpu().numpy()

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[list[Scored]]:
        """Top-``k`` per query: retrieval over the catalogue (every item, or the ANN index's candidates
        past ``IndexConfig.exact_below`` items), then the ranker re-scores the top ``rerank`` of each
        history-only query. All queries share one retrieval and one ranking pass."""
        needed = [max(q.k, q.rerank) + (len(q.history) if q.exclude_seen else 0) for q in queries]
        candidates = self.candidates(queries, needed)
        pools, jobs, ranked = [], [], []
        for q, (idx, row) in zip(queries, candidates, strict=True):
            if q.exclude_seen and q.history:
                seen = self._indices([e.item_id for e in q.history])
                if self.ann is None:  # the whole catalogue, in item order
                    row = row.copy()
                    row[seen] = -np.inf
                else:
                    row = np.where(np.isin(idx, seen), -np.inf, row)
            order = np.argsort(-row, kind="stable")[: max(q.k, q.rerank)]
            order = order[np.isfinite(row[order])]
            pools.append((idx[order], row[order]))
            if q.rerank and q.history and not q.query and len(order):
                ranked.append(len(pools) - 1)
                jobs.append(
                    RankJob(q.history, self.item_ids[idx[order]].tolist(), q.profile, q.history[-1].ts)
                )
        finals = [scores for _, scores in pools]
        for i, probs in zip(ranked, self.rank_batch(jobs), strict=True):
            finals[i] = probs
        out = []
        for q, (pool, _), final in zip(queries, pools, finals, strict=True):
            order = np.argsort(-final, kind="stable")[: q.k]
            out.append(
                [
                    Scored(str(self.item_ids[pool[i]]), str(self.titles[pool[i]]), float(final[i]))
                    for i in order
                ]
            )
        return out

    def recommend(
        self,
        history: list[HistoryEvent],
        k: int = 10,
        *,
        profile: Profile | None = None,
        query: str | None = None,
        rerank: int = 50,
        exclude_seen: bool = True,
    ) -> list[Scored]:
        """Top-``k`` for one user (see :meth:`recommend_batch`)."""
        return self.recommend_batch([RecommendQuery(history, k, profile, query, rerank, exclude_seen)])[0]

    def similar_items(self, item_id: str, k: int = 10) -> list[Scored]:
        """The ``k`` items whose retriever vectors are closest to this item's (the ANN index, with the
        text part of the query left at zero, on large catalogues)."""
        idx = int(self._indices([item_id])[0])
        if self.ann is None:
            sims = (self.item_vectors @ self.item_vectors[idx]).cpu().numpy()
            sims[idx] = -np.inf
            order = np.argsort(-sims, kind="stable")[:k]
            return [Scored(str(self.item_ids[i]), str(self.titles[i]), float(sims[i])) for i in order]
        query = torch.zeros(1, sum(self.ann.info["parts"]))
        query[0, : self.item_vectors.shape[1]] = self.item_vectors[idx].float().cpu()
        scores, found = self.ann.search(query.numpy(), k + 1)
        keep = [(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True) if i >= 0 and i != idx]
        return [Scored(str(self.item_ids[i]), str(self.titles[i]), s) for i, s in keep[:k]]

    def behaviour_text(
        self, history: list[HistoryEvent], item_id: str, profile: Profile | None = None
    ) -> str:
        """The exact M6-Rec text the models are trained on, for this request (shared with training)."""
        idx = self._indices([item_id] + [e.item_id for e in history])
        events = self._text_events(history, idx[1:])
        now = max((e.ts for e in history if e.ts is not None), default=None)
        return " ".join(
            behaviour_segments(
                profile or Profile(),
                events,
                self.texts[idx[0]],
                now if now is not None else 0,
                style=self.style,
            )
        )
