"""The service's request and response schemas (pydantic), shared by the BentoML service and its engine.

Every request body is a strict model (``extra="forbid"``, no string->number coercion) with bounded
sizes. Checks that need the catalogue (unknown ids, ``k`` larger than the catalogue) are made by the
engine and raise the same :class:`pydantic.ValidationError` (:func:`request_error`), so every client
mistake is an HTTP 400 with the same body shape::

    {"error": "1 validation error for recommend request",
     "detail": [{"type": "unknown_item", "loc": ["history", 0, "item_id"],
                 "msg": "unknown item id 'nope' (not in the catalogue of 1682 items)"}]}
"""

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from m6rec.text.textify import Profile

MAX_HISTORY = 500
MAX_K = 1000
MAX_CANDIDATES = 1000
MAX_QUERY_CHARS = 1000
MAX_ID_CHARS = 200
MAX_TS = 100_000_000_000  # seconds since the epoch; larger values are almost surely milliseconds
DEFAULT_RERANK = 50
MAX_BATCH = 64  # requests adaptive batching may merge into one call of recommend_batch

ExplanationSource = Literal["language_model", "history"]
ExplainMethod = Literal["auto", "language_model", "history"]


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
    serving: dict[str, str] = Field(
        description="Per task (retrieval, ctr), the evaluation row of the model that serves it"
    )
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
