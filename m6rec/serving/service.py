"""The m6rec BentoML service: ``bentoml serve m6rec.serving.service:M6Rec``.

One ``@bentoml.service`` class (:class:`M6Rec`) loads the model bundle once in ``__init__`` (CUDA when
available, else CPU) from the BentoML model store — ``m6rec:latest`` unless ``$M6REC_MODEL_TAG`` names
another tag — and exposes JSON endpoints (all ``POST``):

* ``/recommend``      history of item ids (optional ratings / timestamps) and/or a free-text ``query``
                      -> top-``k`` items with scores and optional explanations
* ``/recommend_batch`` an array of ``/recommend`` bodies -> one answer (or 400 entry) each; adaptive
                      batching merges concurrent calls into one model pass
* ``/rank``           history + candidate ids -> like probabilities, in the candidates' order
* ``/explain``        history + one item id -> explanation text, its source, and the behaviour text
* ``/similar_items``  one item id -> the ``k`` most similar catalogue items
* ``/model_info``     bundle manifest (metrics, configs), model tag and library versions

plus BentoML's built-in ``/livez``, ``/readyz``, ``/metrics`` and the OpenAPI docs at ``/``.

Validation: every request body is a strict pydantic model (``extra="forbid"``, no string->number
coercion). Checks that need the catalogue (unknown ids, ``k`` larger than the catalogue) raise the same
:class:`pydantic.ValidationError`, so every client mistake is an HTTP 400 with the same body shape::

    {"error": "1 validation error for recommend request",
     "detail": [{"type": "unknown_item", "loc": ["history", 0, "item_id"],
                 "msg": "unknown item id 'nope' (not in the catalogue of 1682 items)"}]}

The request handling itself lives in :class:`Engine` (no BentoML involved), so it can be unit-tested
and reused; :class:`M6Rec` only wires it to BentoML.
"""

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from m6rec.recommender import HistoryEvent, Recommender, RecommendQuery, Scored
from m6rec.textify import Event, Profile, clean_title, pronoun

logger = logging.getLogger(__name__)

MODEL_TAG_ENV = "M6REC_MODEL_TAG"
DEFAULT_MODEL_TAG = "m6rec:latest"
MAX_HISTORY = 500
MAX_K = 1000
MAX_CANDIDATES = 1000
MAX_QUERY_CHARS = 1000
MAX_ID_CHARS = 200
MAX_TS = 100_000_000_000  # seconds since the epoch; larger values are almost surely milliseconds
LIKE_THRESHOLD = 4.0  # rating >= 4 is a like (the marts' ``is_like``)
MAX_REPORTED_ERRORS = 20
DEFAULT_RERANK = 50
AUTOCAST_MODES = ("off", "bf16")
MAX_BATCH = 64  # requests adaptive batching may merge into one call of recommend_batch
DEFAULT_LM_EXPLAIN_TOP = 5  # /recommend: the language model explains this many top items at most

ExplanationSource = Literal["language_model", "history"]
ExplainMethod = Literal["auto", "language_model", "history"]


# --------------------------------------------------------------------------------------------------
# request / response schemas


def _id_as_text(value: Any) -> Any:
    """Item ids are strings; whole numbers are accepted and turned into their decimal text (ML-100K
    ids look like numbers). Everything else goes to the strict ``str`` check."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


ItemId = Annotated[
    str,
    BeforeValidator(_id_as_text),
    Field(min_length=1, max_length=MAX_ID_CHARS, description="catalogue item id", examples=["50"]),
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)


class HistoryItem(_Strict):
    """One past interaction, oldest first in the history list."""

    item_id: ItemId
    rating: float | None = Field(None, ge=0, le=10, description="explicit rating (1-5 stars on ML-100K)")
    ts: int | None = Field(
        None, ge=0, le=MAX_TS, description="when it happened, in seconds since the epoch (not ms)"
    )


class UserProfile(_Strict):
    age: int | None = Field(None, ge=0, le=130)
    gender: str | None = Field(None, max_length=32, description="'M'/'F' (or 'male'/'female')")
    occupation: str | None = Field(None, max_length=100)

    def to_profile(self) -> Profile:
        return Profile(age=self.age, gender=self.gender, occupation=self.occupation)


History = Annotated[
    list[HistoryItem],
    Field(max_length=MAX_HISTORY, description=f"past interactions, oldest first (at most {MAX_HISTORY})"),
]
NonEmptyHistory = Annotated[
    list[HistoryItem],
    Field(
        min_length=1,
        max_length=MAX_HISTORY,
        description=f"past interactions, oldest first (1 to {MAX_HISTORY})",
    ),
]
TopK = Annotated[int, Field(ge=1, le=MAX_K, description=f"number of items to return (1 to {MAX_K})")]


class RecommendRequest(_Strict):
    model_config = ConfigDict(title="recommend request")

    history: History = Field(default_factory=list)
    query: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description='free text, e.g. "something like Alien but funnier"',
    )
    profile: UserProfile | None = None
    k: TopK = 10
    explain: bool = Field(False, description="add an explanation to every item")
    exclude_seen: bool = Field(True, description="never return items already in the history")
    rerank: int = Field(
        DEFAULT_RERANK,
        ge=0,
        le=MAX_CANDIDATES,
        description="how many retrieved items the CTR ranker re-scores (history-only requests); "
        "0 = retrieval scores only",
    )

    @model_validator(mode="after")
    def _history_or_query(self) -> "RecommendRequest":
        if not self.history and self.query is None:
            raise ValueError(
                "history is empty and no query was given: send at least one history event "
                '({"item_id": ...}) or a free-text "query"'
            )
        return self


RecommendBatch = Annotated[
    list[RecommendRequest],
    Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} recommend requests"),
]


class RankRequest(_Strict):
    model_config = ConfigDict(title="rank request")

    history: NonEmptyHistory
    candidates: list[ItemId] = Field(
        min_length=1, max_length=MAX_CANDIDATES, description=f"item ids to score (1 to {MAX_CANDIDATES})"
    )
    profile: UserProfile | None = None
    now_ts: int | None = Field(
        None, ge=0, le=MAX_TS, description="scoring time in seconds (default: the latest history ts)"
    )


class ExplainRequest(_Strict):
    model_config = ConfigDict(title="explain request")

    history: NonEmptyHistory
    item_id: ItemId
    profile: UserProfile | None = None
    method: ExplainMethod = Field(
        "auto",
        description="'auto': the bundle's language model when it has one, else the history; "
        "'language_model' fails when the bundle has none",
    )


class SimilarItemsRequest(_Strict):
    model_config = ConfigDict(title="similar_items request")

    item_id: ItemId
    k: TopK = 10


class ScoredItem(BaseModel):
    item_id: str
    title: str
    score: float
    explanation: str | None = None
    explanation_source: ExplanationSource | None = None


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    mode: Literal["history", "query", "history+query"]
    model: str


class RankResponse(BaseModel):
    items: list[ScoredItem] = Field(description="one entry per candidate, in the request's order")
    model: str


class ExplainResponse(BaseModel):
    item_id: str
    title: str
    explanation: str
    source: ExplanationSource
    behaviour_text: str = Field(description="the M6-Rec text the models read for this user and item")
    model: str


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model: str


class BatchItem(BaseModel):
    """One answer of ``/recommend_batch``: the response, or the 400 error body ``/recommend`` would
    have returned for this request."""

    status: Literal[200, 400]
    result: RecommendResponse | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_error(cls, exc: ValidationError) -> "BatchItem":
        # The body BentoML sends for a ValidationError on the other endpoints.
        detail = exc.errors(include_context=False, include_input=False)
        return cls(
            status=400,
            error={
                "error": f"{exc.error_count()} validation error for {exc.title}",
                "detail": json.loads(json.dumps(detail, default=str)),
            },
        )


class ModelInfo(BaseModel):
    model: str
    labels: dict[str, str]
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    n_items: int
    device: str
    explainer: dict[str, Any]
    limits: dict[str, int]
    versions: dict[str, str]


def request_error(
    title: str, errors: Sequence[tuple[tuple[str | int, ...], str, str, Any]]
) -> ValidationError:
    """A :class:`pydantic.ValidationError` for checks made after schema validation, one entry per
    ``(loc, type, message, input)``; BentoML turns it into HTTP 400 like any schema error."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value
            )
            for loc, kind, message, value in errors
        ],
    )


# --------------------------------------------------------------------------------------------------
# the engine: requests in, responses out, over one loaded bundle


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _his(he: str) -> str:
    return {"he": "his", "she": "her"}.get(he, "their")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


class Engine:
    """Answers the service's requests over a :class:`~m6rec.recommender.Recommender` (and the bundle's
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
        self.rec = Recommender(self.path, device=device)
        self.device = self.rec.device
        self.model_tag = model_tag
        self.model_labels = dict(model_labels or {})
        self.n_items = len(self.rec.items)
        self.lm_explain_top = (
            lm_explain_top
            if lm_explain_top is not None
            else _env_int("M6REC_LM_EXPLAIN_TOP", DEFAULT_LM_EXPLAIN_TOP)
        )
        self.lm_max_new_tokens = _env_int("M6REC_LM_MAX_NEW_TOKENS", 40)
        self._lm_lock = threading.Lock()
        self.autocast = os.environ.get("M6REC_AUTOCAST", "off").strip().lower() or "off"
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"M6REC_AUTOCAST={self.autocast!r}: use one of {', '.join(AUTOCAST_MODES)}")
        self.lm, self._explain_fn, self.explainer_status = self._load_explainer()
        self._genres = [
            tuple(str(g) for g in gs) if isinstance(gs, list | tuple | np.ndarray) else ()
            for gs in self.rec.items["genres"]
        ]

    def _precision(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for the retrieval and ranking passes when M6REC_AUTOCAST=bf16 (CPUs with
        AMX/AVX512-BF16 and GPUs run these matmuls faster; scores move by ~1e-3), else full precision."""
        if self.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- loading --------------------------------------------------------------------------------
    def _load_explainer(self) -> tuple[Any, Any, str]:
        folder = self.path / "explainer"
        if not folder.is_dir():
            return None, None, "absent: the bundle has no explainer/ folder"
        try:
            from m6rec import generation
            from m6rec.backbones import load_causal_lm

            explain_fn = getattr(generation, "explain", None)
            if explain_fn is None:
                return None, None, "unavailable: m6rec.generation has no explain()"
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
    def _display(self, idx: int) -> str:
        text = self.rec.texts[idx]
        title, year = clean_title(text.title, text.release_year)
        return f"{title} ({year})" if year is not None else title

    def history_explanation(
        self,
        history: Sequence[HistoryEvent],
        item_id: str,
        profile: Profile | None,
        query: str | None = None,
    ) -> str:
        """A template explanation grounded in the request: the most recent liked (rating >= 4, or
        unrated) history items that share the candidate's genres; else the query; else the history's
        most recent likes and the candidate's popularity."""
        he = pronoun(profile)
        cand = self.rec.index[item_id]
        cand_genres = self._genres[cand]
        head = f"{he.capitalize()} will like {self._display(cand)} because"
        seen: set[int] = set()
        sharing_liked: list[int] = []
        sharing_watched: list[int] = []
        recent_liked: list[int] = []
        for e in reversed(history):
            idx = self.rec.index[e.item_id]
            if idx in seen or idx == cand:
                continue
            seen.add(idx)
            liked = e.rating is not None and e.rating >= LIKE_THRESHOLD
            disliked = e.rating is not None and e.rating < LIKE_THRESHOLD
            shares = bool(set(self._genres[idx]) & set(cand_genres))
            if liked:
                recent_liked.append(idx)
            if shares and liked:
                sharing_liked.append(idx)
            elif shares and not disliked:
                sharing_watched.append(idx)
        cited, verb = (sharing_liked, "liked") if sharing_liked else (sharing_watched, "watched")
        if cited:
            cited = cited[:3]
            shared = [g for g in cand_genres if any(g in self._genres[i] for i in cited)]
            names = [self._display(i) for i in cited]
            listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            share = "shares" if len(names) == 1 else "share"
            genre_word = "genre" if len(shared) == 1 else "genres"
            return f"{head} {he} {verb} {listed}, which {share} its {genre_word} ({', '.join(shared)})."
        if query:
            genres = f" ({', '.join(cand_genres)})" if cand_genres else ""
            return f'{head} it matches the request "{query}"{genres}.'
        pct = self.rec.texts[cand].popularity_percentile
        popular = (
            ""
            if pct is None or pct != pct
            else f" and is among the top {max(1, round(100 - pct))}% most popular titles"
        )
        if recent_liked:
            liked_names = " and ".join(self._display(i) for i in recent_liked[:2])
            recent = f" (most recently {he} liked {liked_names})"
        else:
            recent = ""
        return f"{head} it fits the pattern of {_his(he)} recent history{recent}{popular}."

    def lm_explanation(self, history: Sequence[HistoryEvent], item_id: str, profile: Profile | None) -> str:
        events = [
            Event(item=self.rec.texts[self.rec.index[e.item_id]], ts=e.ts, rating=e.rating) for e in history
        ]
        now = max((e.ts for e in history if e.ts is not None), default=None)
        with self._lm_lock, torch.no_grad():
            return self._explain_fn(
                self.lm,
                profile,
                events,
                self.rec.texts[self.rec.index[item_id]],
                now,
                style=self.rec.style,
                max_new_tokens=self.lm_max_new_tokens,
            )

    def _explanation(
        self,
        history: Sequence[HistoryEvent],
        item_id: str,
        profile: Profile | None,
        method: ExplainMethod,
        query: str | None = None,
    ) -> tuple[str, ExplanationSource]:
        if method != "history" and self.lm is not None and history:
            return self.lm_explanation(history, item_id, profile), "language_model"
        return self.history_explanation(history, item_id, profile, query), "history"

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
            for rank, item in enumerate(items):
                method: ExplainMethod = "auto" if rank < self.lm_explain_top else "history"
                item.explanation, item.explanation_source = self._explanation(
                    query.history, item.item_id, query.profile, method, req.query
                )
        mode = "history+query" if query.history and req.query else "history" if query.history else "query"
        return RecommendResponse(items=items, mode=mode, model=self.model_tag)

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        query = self._query(req)
        with self._precision():
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
        with self._precision():
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
        with self._precision():
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
        text, source = self._explanation(history, req.item_id, profile, req.method)
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

    def model_info(self) -> ModelInfo:
        manifest = self.rec.manifest
        versions = {
            "m6rec": _version("m6rec"),
            "bentoml": _version("bentoml"),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "python": platform.python_version(),
        }
        for name, value in (manifest.get("versions") or {}).items():
            versions[f"bundle:{name}"] = str(value)
        return ModelInfo(
            model=self.model_tag,
            labels=self.model_labels,
            manifest={k: v for k, v in manifest.items() if k != "metrics"},
            metrics=manifest.get("metrics") or {},
            n_items=self.n_items,
            device=str(self.device),
            explainer={
                "status": self.explainer_status,
                "in_bundle": bool(manifest.get("explainer")),
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


# --------------------------------------------------------------------------------------------------
# the BentoML service


class JsonBodyGuard:
    """ASGI middleware: a body that is not JSON gets the usual 400 on the batchable endpoints.

    BentoML 1.4 parses a batchable endpoint's root-list body with ``json.loads`` outside its
    validation handler, so malformed JSON there would be a 500; the other endpoints are unaffected.
    The body is read once here and handed on unchanged."""

    def __init__(self, app: Any, paths: frozenset[str]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            if body.strip():
                json.loads(body)
        except ValueError as exc:
            from starlette.responses import JSONResponse

            name = scope["path"].strip("/")
            detail = [{"type": "json_invalid", "loc": [], "msg": f"Invalid JSON: {exc}"}]
            response = JSONResponse(
                {"error": f"1 validation error for {name} request", "detail": detail}, status_code=400
            )
            await response(scope, receive, send)
            return

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _pick_device() -> str:
    wanted = os.environ.get("M6REC_DEVICE", "").strip()
    if wanted:
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def _packaged_model() -> Any:
    """When serving a built Bento: the exact model version it packaged. (BentoML pins only Hugging Face
    models on load; a ``m6rec:latest`` reference would otherwise pick the newest model in a local store.)"""
    bento = getattr(M6Rec, "bento", None)
    if bento is None:
        return None
    wanted = M6Rec.inner.bundle.tag.name
    for info in bento.info.services:
        if info.name == M6Rec.name:
            for model in info.models:
                if model.tag.name == wanted:
                    return bentoml.models.get(model.tag)
    return None


@bentoml.service(
    name="m6rec",
    traffic={"timeout": 120, "max_concurrency": 64},
    # Worker processes, each with the whole model (M6REC_WORKERS; torch threads per worker:
    # M6REC_TORCH_THREADS). docs/benchmarks.md has latency figures for 1 and 2 on 2 cores.
    workers=_env_int("M6REC_WORKERS", 1),
)
class M6Rec:
    """m6rec recommendations over HTTP (see the module docstring for the endpoints)."""

    bundle = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV) or DEFAULT_MODEL_TAG)

    def __init__(self) -> None:
        threads = os.environ.get("M6REC_TORCH_THREADS", "").strip()
        if threads:
            torch.set_num_threads(int(threads))
        stored = _packaged_model() or self.bundle  # resolved from the model store once, here
        device = _pick_device()
        self.engine = Engine(
            stored.path, device=device, model_tag=str(stored.tag), model_labels=dict(stored.info.labels)
        )
        logger.info(
            "m6rec model %s loaded on %s (%d items, explainer %s)",
            stored.tag,
            device,
            self.engine.n_items,
            self.engine.explainer_status,
        )

    @bentoml.api
    def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        """Top-k items for a history of item ids and/or a free-text query."""
        return self.engine.recommend(request)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    def recommend_batch(self, requests: RecommendBatch, /) -> list[BatchItem]:
        """Several recommend requests in one body (a JSON array), one answer each in the same order:
        ``{"status": 200, "result": ...}`` or ``{"status": 400, "error": ...}``. Adaptive batching merges
        concurrent calls into one model pass, so clients sending one-element arrays share it too."""
        return self.engine.recommend_many(requests)

    @bentoml.api
    def rank(self, request: RankRequest, /) -> RankResponse:
        """Like probabilities of the candidates (in the given order) for this history."""
        return self.engine.rank(request)

    @bentoml.api
    def explain(self, request: ExplainRequest, /) -> ExplainResponse:
        """Why this user would like this item, with the behaviour text the models read."""
        return self.engine.explain(request)

    @bentoml.api
    def similar_items(self, request: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """The k catalogue items closest to one item (retriever item vectors, cosine)."""
        return self.engine.similar_items(request)

    @bentoml.api
    def model_info(self) -> ModelInfo:
        """The served model: tag, manifest metrics and configs, explainer status, versions, limits."""
        return self.engine.model_info()


M6Rec.add_asgi_middleware(JsonBodyGuard, paths=frozenset({"/recommend_batch"}))
