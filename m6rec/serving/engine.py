"""The engine behind the service: requests in, responses out, over one loaded bundle (no BentoML
involved, so it is unit-tested and reused without a server)."""

import logging
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from m6rec.evaluation.explanations import check_explanation
from m6rec.serving.bundle import package_version
from m6rec.serving.dialogue import Turn, understand
from m6rec.serving.recommender import HistoryEvent, RankJob, Recommender, RecommendQuery, Scored
from m6rec.serving.schemas import (
    MAX_CANDIDATES,
    MAX_HISTORY,
    MAX_K,
    MAX_QUERY_CHARS,
    BatchItem,
    ChatRequest,
    ChatResponse,
    ChatUnderstood,
    ExplainMethod,
    ExplainRequest,
    ExplainResponse,
    ExplanationSource,
    HistoryItem,
    ModelInfo,
    RankRequest,
    RankResponse,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
    SimilarItemsRequest,
    SimilarItemsResponse,
    request_error,
)
from m6rec.text.explanations import display_title, history_explanation
from m6rec.text.textify import Event, Profile
from m6rec.text.titles import TitleIndex

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
CHAT_RERANK = 20  # retrieved items the ranker re-scores for a dialogue that names (or has) a history
DEFAULT_LM_EXPLAIN_TOP = 5  # /recommend: the language model explains this many top items at most


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


MAX_DEFAULT_WORKERS = 4  # each worker holds the whole model (~0.6 GB with the explainer)


def default_workers() -> int:
    """One worker process per CPU core, at most :data:`MAX_DEFAULT_WORKERS`: requests are compute-bound,
    and separate processes scale on a small machine where more torch threads in one process do not."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def default_threads(workers: int) -> int:
    """Torch threads per worker: the cores shared among the workers."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


class Engine:
    """Answers the service's requests over a :class:`~m6rec.serving.recommender.Recommender` (and the bundle's
    optional explainer LM). Thread-safe: the recommender holds no per-request state and language-model
    generation is serialised by a lock."""

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        model_tag: str = "local",
        model_labels: dict[str, str] | None = None,
        lm_explain_top: int | None = None,
    ) -> None:
        self.path = Path(bundle_dir)
        # M6REC_PRECISION: the CTR scorer's arithmetic (auto / fp32 / bf16; m6rec.serving.precision)
        precision = os.environ.get("M6REC_PRECISION", "").strip().lower() or "auto"
        self.rec = Recommender(self.path, device=device, precision=precision)
        self.device = self.rec.device
        self.model_tag = model_tag
        self.model_labels = dict(model_labels or {})
        self.n_items = len(self.rec.items)
        self.lm_explain_top = (
            lm_explain_top
            if lm_explain_top is not None
            else env_int("M6REC_LM_EXPLAIN_TOP", DEFAULT_LM_EXPLAIN_TOP)
        )
        self.lm_max_new_tokens = env_int("M6REC_LM_MAX_NEW_TOKENS", 40)
        # the explainer's prompt and decoding: what it was tuned and checked with (the bundle says)
        check = self.rec.manifest.get("explainer_check") or {}
        self.lm_max_events = int(check.get("max_events", 10))
        self.lm_grounded = check.get("decoding") == "grounded"
        self._lm_lock = threading.Lock()
        self.lm, self._explain_fn, self.explainer_status = self._load_explainer()
        self._years = np.array(
            [np.nan if t.release_year is None else float(t.release_year) for t in self.rec.texts]
        )
        self._titles = TitleIndex.build(self.rec.titles, [t.release_year for t in self.rec.texts])

    # --- loading --------------------------------------------------------------------------------
    def _load_explainer(self) -> tuple[Any, Any, str]:
        folder = self.path / "explainer"
        if not folder.is_dir():
            return None, None, "absent: the bundle has no explainer/ folder"
        try:
            from m6rec.models import generation
            from m6rec.models.backbones import load_causal_lm

            explain_fn = getattr(generation, "explain_batch", None)
            if explain_fn is None:
                return None, None, "unavailable: m6rec.models.generation has no explain_batch()"
            lm = load_causal_lm(folder, device=self.device)
        except Exception as exc:  # a broken explainer must not take the recommender down
            logger.exception("could not load the explainer from %s", folder)
            return None, None, f"unavailable: {type(exc).__name__}: {exc}"
        return lm, explain_fn, "loaded"

    # --- validation helpers -----------------------------------------------------------------------
    def _check_ids(self, title: str, named: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
        errors = [
            (
                loc,
                "unknown_item",
                f"unknown item id {item!r} (not in the catalogue of {self.n_items} items)",
                item,
            )
            for loc, item in named
            if item not in self.rec.index
        ]
        if errors:
            raise request_error(title, errors[:MAX_REPORTED_ERRORS])

    def _check_k(self, title: str, k: int, available: int, what: str) -> None:
        if k > available:
            raise request_error(
                title, [(("k",), "k_too_large", f"k={k} is larger than {what} ({available} items)", k)]
            )

    @staticmethod
    def _events(history: Sequence[HistoryItem]) -> list[HistoryEvent]:
        return [HistoryEvent(h.item_id, h.rating, h.ts) for h in history]

    def _item(self, idx: int) -> tuple[str, str]:
        return str(self.rec.item_ids[idx]), str(self.rec.titles[idx])

    # --- explanations ---------------------------------------------------------------------------
    def _text_events(self, history: Sequence[HistoryEvent]) -> list[Event]:
        """The request's history as the text layer's events (each item's catalogue text)."""
        return [Event(self.rec.texts[self.rec.index[e.item_id]], e.ts, e.rating) for e in history]

    def _display(self, idx: int) -> str:
        return display_title(self.rec.texts[idx])

    def history_explanation(
        self,
        history: Sequence[HistoryEvent],
        item_id: str,
        profile: Profile | None,
        query: str | None = None,
    ) -> str:
        """The template explanation grounded in the request
        (:func:`m6rec.text.explanations.history_explanation`: liked history items of the candidate's
        genres, by the marts' rule ``rating > like_threshold`` from the bundle's contract; else the
        query; else the recent likes and the candidate's popularity)."""
        events = self._text_events(history)
        candidate = self.rec.texts[self.rec.index[item_id]]
        return history_explanation(candidate, events, profile, self.rec.contract.is_like, query)

    def lm_explanations(
        self, history: Sequence[HistoryEvent], item_ids: Sequence[str], profile: Profile | None
    ) -> list[str]:
        """The language model's explanations of ``item_ids`` for one history, written in one batch (a
        decoding step for five items costs little more than for one: it is mostly the weights' reading)."""
        events = self._text_events(history)
        now = max((e.ts for e in history if e.ts is not None), default=None)
        cases = [(profile, events, self.rec.texts[self.rec.index[i]], now) for i in item_ids]
        with self._lm_lock, torch.no_grad():
            return self._explain_fn(
                self.lm,
                cases,
                style=self.rec.style,
                max_new_tokens=self.lm_max_new_tokens,
                max_events=self.lm_max_events,
                is_like=self.rec.contract.is_like if self.lm_grounded else None,
            )

    def _explanations(
        self,
        history: Sequence[HistoryEvent],
        item_ids: Sequence[str],
        profile: Profile | None,
        methods: Sequence[ExplainMethod],
        query: str | None = None,
    ) -> list[tuple[str, ExplanationSource]]:
        """Each item's explanation by its method: the language model's (one batch for every item not
        asked for ``"history"``; with ``"auto"`` kept only when :meth:`explanation_holds`), else the
        history template."""
        by_lm = [method != "history" and self.lm is not None and bool(history) for method in methods]
        asked = [item_id for item_id, use_lm in zip(item_ids, by_lm, strict=True) if use_lm]
        written = iter(self.lm_explanations(history, asked, profile) if asked else [])
        out: list[tuple[str, ExplanationSource]] = []
        for item_id, method, use_lm in zip(item_ids, methods, by_lm, strict=True):
            if use_lm:
                text = next(written)
                if method == "language_model" or self.explanation_holds(text, history, item_id, query):
                    out.append((text, "language_model"))
                    continue
            out.append((self.history_explanation(history, item_id, profile, query), "history"))
        return out

    def explanation_holds(
        self, text: str, history: Sequence[HistoryEvent], item_id: str, query: str | None = None
    ) -> bool:
        """Whether the language model's explanation states nothing the data contradicts
        (:func:`m6rec.evaluation.explanations.check_explanation`): with ``method: "auto"`` one that does
        not is replaced by the history template, so what is served by default is never caught false."""
        texts = self.rec.texts
        past = self._text_events(history)
        check = check_explanation(
            text,
            texts[self.rec.index[item_id]],
            past,
            catalogue=texts,
            index=self._titles,
            is_like=self.rec.contract.is_like,
            query=query,
        )
        if check.is_false:
            logger.info(
                "language-model explanation replaced by the template: %s", "; ".join(check.false_claims)
            )
        return not check.is_false

    # --- endpoints --------------------------------------------------------------------------------
    def _query(self, req: RecommendRequest) -> RecommendQuery:
        """The checks that need the catalogue, then the recommender's query."""
        title = "recommend request"
        history = self._events(req.history)
        self._check_ids(title, [(("history", i, "item_id"), e.item_id) for i, e in enumerate(history)])
        self._check_k(title, req.k, self.n_items, "the catalogue")
        profile = req.profile.to_profile() if req.profile else None
        return RecommendQuery(history, req.k, profile, req.query, req.rerank, req.exclude_seen)

    def _response(self, req: RecommendRequest, query: RecommendQuery, top: list[Scored]) -> RecommendResponse:
        items = [ScoredItem(item_id=s.item_id, title=s.title, score=s.score) for s in top]
        if req.explain:
            methods: list[ExplainMethod] = [
                "auto" if rank < self.lm_explain_top else "history" for rank in range(len(items))
            ]
            explained = self._explanations(
                query.history, [item.item_id for item in items], query.profile, methods, req.query
            )
            for item, (text, source) in zip(items, explained, strict=True):
                item.explanation, item.explanation_source = text, source
        mode = "history+query" if query.history and req.query else "history" if query.history else "query"
        return RecommendResponse(items=items, mode=mode, model=self.model_tag)

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        query = self._query(req)
        [top] = self.rec.recommend_batch([query])
        return self._response(req, query, top)

    def recommend_many(self, reqs: Sequence[RecommendRequest]) -> list[BatchItem]:
        """Many requests in one retrieval and one ranking pass (what adaptive batching hands over). A bad
        request gets its own 400 entry; the others are answered as if each had come alone."""
        out: list[BatchItem] = [BatchItem(status=400) for _ in reqs]
        good: list[tuple[int, RecommendQuery]] = []
        for i, req in enumerate(reqs):
            try:
                good.append((i, self._query(req)))
            except ValidationError as exc:
                out[i] = BatchItem.from_error(exc)
        tops = self.rec.recommend_batch([q for _, q in good])
        for (i, query), top in zip(good, tops, strict=True):
            out[i] = BatchItem(status=200, result=self._response(reqs[i], query, top))
        return out

    def rank(self, req: RankRequest) -> RankResponse:
        title = "rank request"
        history = self._events(req.history)
        self._check_ids(
            title,
            [(("history", i, "item_id"), e.item_id) for i, e in enumerate(history)]
            + [(("candidates", i), c) for i, c in enumerate(req.candidates)],
        )
        now = req.now_ts
        if now is None:
            now = max((e.ts for e in history if e.ts is not None), default=None)
        profile = req.profile.to_profile() if req.profile else None
        scores = self.rec.rank(history, list(req.candidates), profile, now_ts=now)
        scores = np.asarray(scores, dtype=float)
        items = [
            ScoredItem(item_id=c, title=self._item(self.rec.index[c])[1], score=float(s))
            for c, s in zip(req.candidates, scores, strict=True)
        ]
        return RankResponse(items=items, model=self.model_tag)

    def explain(self, req: ExplainRequest) -> ExplainResponse:
        title = "explain request"
        history = self._events(req.history)
        self._check_ids(
            title,
            [(("history", i, "item_id"), e.item_id) for i, e in enumerate(history)]
            + [(("item_id",), req.item_id)],
        )
        if req.method == "language_model" and self.lm is None:
            raise request_error(
                title,
                [
                    (
                        ("method",),
                        "no_language_model",
                        f"this model has no language-model explainer ({self.explainer_status}); "
                        "use method 'auto' or 'history'",
                        req.method,
                    )
                ],
            )
        profile = req.profile.to_profile() if req.profile else None
        [(text, source)] = self._explanations(history, [req.item_id], profile, [req.method])
        return ExplainResponse(
            item_id=req.item_id,
            title=self._item(self.rec.index[req.item_id])[1],
            explanation=text,
            source=source,
            behaviour_text=self.rec.behaviour_text(history, req.item_id, profile),
            model=self.model_tag,
        )

    def similar_items(self, req: SimilarItemsRequest) -> SimilarItemsResponse:
        title = "similar_items request"
        self._check_ids(title, [(("item_id",), req.item_id)])
        self._check_k(title, req.k, self.n_items - 1, "the rest of the catalogue")
        similar = self.rec.similar_items(req.item_id, req.k)
        items = [ScoredItem(item_id=s.item_id, title=s.title, score=s.score) for s in similar]
        return SimilarItemsResponse(item_id=req.item_id, items=items, model=self.model_tag)

    def chat(self, req: ChatRequest) -> ChatResponse:
        """Recommend from a dialogue (M6-Rec's conversational task): the titles the user names become
        history, retrieval runs on that history plus the dialogue as text, the ranker re-scores the best
        ``CHAT_RERANK`` when there is a history; items the system offered before or the user turned
        down are never offered, and "older"/"newer" keeps items older/newer than the last turn's first
        offer."""
        title = "chat request"
        history = self._events(req.history)
        self._check_ids(title, [(("history", i, "item_id"), e.item_id) for i, e in enumerate(history)])
        self._check_k(title, req.k, self.n_items, "the catalogue")
        said = understand([Turn(t.role, t.text) for t in req.turns], self._titles)
        ids = self.rec.item_ids
        known = {e.item_id for e in history}
        history += [HistoryEvent(str(ids[i]), None, None) for i in said.liked if str(ids[i]) not in known]
        blocked = {int(self.rec.index[e.item_id]) for e in history}
        blocked |= set(said.offered) | set(said.disliked)
        profile = req.profile.to_profile() if req.profile else None
        query = RecommendQuery(history, req.k, profile, said.text, rerank=0, exclude_seen=False)
        pool = max(req.k, CHAT_RERANK)
        [(idx, scores)] = self.rec.candidates([query], [pool + len(blocked)])
        keep = ~np.isin(idx, list(blocked))
        ref = self._years[said.last_offered[0]] if said.constraint and said.last_offered else np.nan
        if np.isfinite(ref):  # older / newer than the first item the last system turn offered
            keep &= self._years[idx] < ref if said.constraint == "older" else self._years[idx] > ref
        idx, scores = idx[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[:pool]
        idx, scores = idx[order], scores[order]
        if history and len(idx):
            now = max((e.ts for e in history if e.ts is not None), default=None)
            [scores] = self.rec.rank_batch([RankJob(history, ids[idx].tolist(), profile, now)])
        top = np.argsort(-np.asarray(scores), kind="stable")[: req.k]
        items = [
            ScoredItem(item_id=str(ids[idx[i]]), title=str(self.rec.titles[idx[i]]), score=float(scores[i]))
            for i in top
        ]
        return ChatResponse(
            items=items,
            reply=self._chat_reply([int(idx[i]) for i in top], said),
            understood=ChatUnderstood(
                liked=[str(ids[i]) for i in said.liked],
                disliked=[str(ids[i]) for i in dict.fromkeys(said.disliked)],
                already_offered=[str(ids[i]) for i in said.offered],
                constraint=said.constraint if said.last_offered else None,
            ),
            model=self.model_tag,
        )

    def _chat_reply(self, top: list[int], said) -> str:
        """One or two sentences naming the first two items, and why (what the dialogue said)."""
        if not top:
            return "I have nothing left that fits: every match was offered, turned down or ruled out already."
        names = [self._display(i) for i in top[:2]]
        offer = names[0] if len(names) == 1 else f"{names[0]} or {names[1]}"
        if said.constraint and said.last_offered:
            return (
                f"Something {said.constraint} than {self._display(said.last_offered[0])}: how about {offer}?"
            )
        if said.liked:
            return f"Since you liked {self._display(said.liked[0])}, how about {offer}?"
        return f"How about {offer}?"

    def model_info(self) -> ModelInfo:
        manifest = self.rec.manifest
        versions = {
            "m6rec": package_version("m6rec"),
            "bentoml": package_version("bentoml"),
            "torch": torch.__version__,
            "transformers": package_version("transformers"),
            "python": platform.python_version(),
        }
        for name, value in (manifest.get("versions") or {}).items():
            versions[f"bundle:{name}"] = str(value)
        return ModelInfo(
            model=self.model_tag,
            serving=self.rec.serving,
            labels=self.model_labels,
            manifest={k: v for k, v in manifest.items() if k != "metrics"},
            metrics=manifest.get("metrics") or {},
            n_items=self.n_items,
            device=str(self.device),
            precision=self.rec.precision,
            explainer={
                "status": self.explainer_status,
                "in_bundle": bool(manifest.get("explainer")),
                "check": manifest.get("explainer_check"),
                "lm_explains_top": self.lm_explain_top if self.lm is not None else 0,
            },
            limits={
                "max_history": MAX_HISTORY,
                "max_k": min(MAX_K, self.n_items),
                "max_candidates": MAX_CANDIDATES,
                "max_query_chars": MAX_QUERY_CHARS,
            },
            versions=versions,
        )
