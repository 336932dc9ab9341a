"""The service's request and response schemas (pydantic), shared by the BentoML service and its engine.

Every request body is a strict model (``extra="forbid"``, no string->number coercion) with bounded
sizes, and everything it checks is visible in its JSON Schema (so in the OpenAPI document the service
publishes): lengths are counted on the text as sent, before surrounding whitespace is stripped, and a
text that must not be empty must not be blank either (``pattern``: :data:`NOT_BLANK`). Checks that need the
catalogue (:data:`SEMANTIC_REJECTIONS`: unknown ids, ``k`` larger than the catalogue, an explainer the
bundle lacks) are made by the engine and raise the same :class:`pydantic.ValidationError`
(:func:`request_error`), so every client mistake is an HTTP 400 with the same body shape
(:class:`ErrorBody`)::

    {"error": "1 validation error for recommend request",
     "detail": [{"type": "unknown_item", "loc": ["history", 0, "item_id"],
                 "msg": "unknown item id 'nope' (not in the catalogue of 1682 items)"}]}
"""

import json
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from m6rec.text.textify import Profile

MAX_HISTORY = 500
MAX_K = 1000
MAX_CANDIDATES = 1000
MAX_QUERY_CHARS = 1000
MAX_ID_CHARS = 200
MAX_INT_ID = 2**63 - 1  # whole-number item ids: 0 .. the largest 64-bit integer
MAX_TS = 100_000_000_000  # seconds since the epoch; larger values are almost surely milliseconds
DEFAULT_RERANK = 50
MAX_BATCH = 64  # requests adaptive batching may merge into one call of recommend_batch

ExplanationSource = Literal["language_model", "history"]
ExplainMethod = Literal["auto", "language_model", "history"]


# Checks the service makes that no JSON Schema can state, because they need the served catalogue: the
# ``type`` of the 400 error entry -> when it happens. They are the only 400s a schema-valid body can get
# (the OpenAPI document lists them per endpoint; tests/serving/test_openapi_contract.py allows exactly
# these). /recommend_batch reports them per request, as ``status: 400`` entries of a 200 answer.
SEMANTIC_REJECTIONS: dict[str, str] = {
    "unknown_item": "an item id (in `history`, `candidates` or `item_id`) that is not in the served "
    "model's catalogue (/model_info reports its size, `n_items`)",
    "k_too_large": "`k` larger than the catalogue (/recommend, /chat) or than the rest of it, `n_items - 1` "
    "(/similar_items)",
    "no_language_model": '`method: "language_model"` when the served bundle has no explainer '
    "(/model_info: `explainer.status`)",
}


# Whitespace as JSON Schema's regular expressions (ECMA-262 ``\\s``) define it, which is not Python's
# ``str.isspace`` (that also counts U+001C-U+001F and U+0085, and not U+FEFF). Texts are stripped of
# exactly these, and a text that must not be empty must contain another character (NOT_BLANK), so the
# schema and the server agree on every string.
WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
NOT_BLANK = r"[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


class _Text:
    """A string whose length limits apply to the text as sent, and which is then stripped of surrounding
    :data:`WHITESPACE`; with ``min_length=1`` it must also contain a non-whitespace character.

    Why not pydantic's ``str_strip_whitespace`` with ``min_length``/``max_length``: those count the
    stripped text, so ``"  "`` (schema-valid under ``minLength: 1``) was refused and a padded over-long
    id (schema-invalid) was accepted; here the JSON Schema (``minLength``, ``maxLength`` and ``pattern:``
    :data:`NOT_BLANK`) says exactly what is accepted."""

    def __init__(self, max_length: int, *, min_length: int = 0) -> None:
        self.max_length, self.min_length = max_length, min_length

    def _strip(self, value: str) -> str:
        stripped = value.strip(WHITESPACE)
        if self.min_length and not stripped:
            raise PydanticCustomError(
                "string_blank", "String should have at least 1 character that is not whitespace"
            )
        return stripped

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        raw = core_schema.str_schema(min_length=self.min_length or None, max_length=self.max_length)
        return core_schema.no_info_after_validator_function(self._strip, raw)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        if self.min_length:
            out["pattern"] = NOT_BLANK
        return out


def _whole_float_as_int(value: Any) -> Any:
    """JSON does not tell ``5`` from ``5.0`` (JSON Schema's ``integer`` takes both, and so do clients that
    only have one number type), so a float with no fractional part is read as that integer; anything else
    goes to the strict ``int`` check (``2.5`` and ``"5"`` are refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Whole:
    """A strict integer from ``ge`` to ``le`` that also takes whole floats (:func:`_whole_float_as_int`).

    One annotation rather than ``BeforeValidator`` plus ``Field(ge=, le=)``: pydantic cannot fold bounds
    into an integer schema behind a before-validator, and its JSON Schema then shows them as the unknown
    keywords ``ge``/``le`` instead of ``minimum``/``maximum``."""

    def __init__(self, *, ge: int, le: int) -> None:
        self.ge, self.le = ge, le

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        bounded = core_schema.int_schema(ge=self.ge, le=self.le)
        return core_schema.no_info_before_validator_function(_whole_float_as_int, bounded)


def _id_as_text(value: Any) -> Any:
    """Item ids are strings; whole numbers from 0 to :data:`MAX_INT_ID` are accepted and turned into
    their decimal text (ML-100K ids look like numbers). Everything else goes to the strict ``str`` check."""
    value = _whole_float_as_int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_INT_ID:
            raise PydanticCustomError(
                "item_id_range",
                "whole-number item ids must be between 0 and {limit}; send other ids as strings",
                {"limit": MAX_INT_ID},
            )
        return str(value)
    return value


class _StringOrWholeNumber:
    """JSON Schema of an item id: the string schema, or a whole number (what :func:`_id_as_text` takes)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [handler(schema), {"type": "integer", "minimum": 0, "maximum": MAX_INT_ID}]}


ItemId = Annotated[
    str,
    _Text(MAX_ID_CHARS, min_length=1),
    BeforeValidator(_id_as_text),  # after _Text in this list, so it runs before _Text's checks
    _StringOrWholeNumber(),
    Field(
        description="catalogue item id: a string, or a whole number read as its decimal text",
        examples=["50"],
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class HistoryItem(_Strict):
    """One past interaction, oldest first in the history list."""

    item_id: ItemId
    rating: float | None = Field(None, ge=0, le=10, description="explicit rating (1-5 stars on ML-100K)")
    ts: Annotated[int, _Whole(ge=0, le=MAX_TS)] | None = Field(
        None, description="when it happened, in seconds since the epoch (not ms)"
    )


class UserProfile(_Strict):
    age: Annotated[int, _Whole(ge=0, le=130)] | None = None
    gender: Annotated[str, _Text(32)] | None = Field(None, description="'M'/'F' (or 'male'/'female')")
    occupation: Annotated[str, _Text(100)] | None = None

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
TopK = Annotated[int, _Whole(ge=1, le=MAX_K), Field(description=f"number of items to return (1 to {MAX_K})")]


class RecommendRequest(_Strict):
    model_config = ConfigDict(title="recommend request")

    history: History = Field(default_factory=list)
    query: Annotated[str, _Text(MAX_QUERY_CHARS, min_length=1)] | None = Field(
        None, description='free text, e.g. "something like Alien but funnier"'
    )
    profile: UserProfile | None = None
    k: TopK = 10
    explain: bool = Field(False, description="add an explanation to every item")
    exclude_seen: bool = Field(True, description="never return items already in the history")
    rerank: Annotated[int, _Whole(ge=0, le=MAX_CANDIDATES)] = Field(
        DEFAULT_RERANK,
        description="how many retrieved items the CTR ranker re-scores (history-only requests); "
        "0 = retrieval scores only",
    )

    # ``_history_or_query`` in JSON Schema terms. The service adds it to this model's schema in the OpenAPI
    # document it publishes; it is kept out of ``json_schema_extra`` because BentoML flattens a model-level
    # ``anyOf`` into the properties of the schemas it builds for its own client (``/schema.json``).
    openapi_rules: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["history"], "properties": {"history": {"minItems": 1}}},
            {"required": ["query"], "properties": {"query": {"type": "string"}}},
        ],
    }

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
    now_ts: Annotated[int, _Whole(ge=0, le=MAX_TS)] | None = Field(
        None, description="scoring time in seconds (default: the latest history ts)"
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


MAX_CHAT_TURNS = 40


class ChatTurn(_Strict):
    role: Literal["user", "system"] = Field(description="who said it: the user, or this service")
    text: Annotated[str, _Text(MAX_QUERY_CHARS, min_length=1)]


class ChatRequest(_Strict):
    model_config = ConfigDict(title="chat request")

    turns: Annotated[list[ChatTurn], Field(min_length=1, max_length=MAX_CHAT_TURNS)] = Field(
        description="the dialogue so far, oldest first; send the service's own replies back as system turns "
        'so that "not that one" / "something older" refer to them'
    )
    history: History = Field(default_factory=list, description="optional: what the user watched before")
    profile: UserProfile | None = None
    k: TopK = 5


class ChatUnderstood(BaseModel):
    liked: list[str] = Field(description="catalogue items the user named (used as history)")
    disliked: list[str] = Field(description="items the user named with a negation (never recommended)")
    already_offered: list[str] = Field(description="items named in system turns (not offered again)")
    constraint: Literal["older", "newer"] | None = Field(
        description="on the last user turn, relative to what the last system turn offered"
    )


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


class ChatResponse(BaseModel):
    items: list[ScoredItem]
    reply: str = Field(
        description="one or two sentences naming the top items, to show as the next system turn"
    )
    understood: ChatUnderstood
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


class ErrorDetail(BaseModel):
    """One problem of a refused request: an entry of pydantic's ``ValidationError.errors()``, as BentoML
    sends it (without ``input`` and ``ctx``), or one the service adds (:func:`request_error`)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        description="machine-readable reason: a pydantic error type ('missing', 'extra_forbidden', "
        "'string_too_long', ...), 'json_invalid' or 'unsupported_media_type', or one of the catalogue "
        "checks: " + ", ".join(f"'{kind}'" for kind in SEMANTIC_REJECTIONS)
    )
    loc: list[str | int] = Field(description="path of the offending value in the body; [] for the whole body")
    msg: str = Field(description="human-readable, names the value or the limit")
    url: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        None,
        exclude_if=lambda url: url is None,
        description="pydantic's documentation of this error type (absent for the service's own types)",
    )


class ErrorBody(BaseModel):
    """The body of every 400 (and 415) answer, and of a ``status: 400`` entry of ``/recommend_batch``."""

    model_config = ConfigDict(extra="forbid", title="ErrorBody")

    error: str = Field(description='summary, e.g. "2 validation error for rank request"')
    detail: list[ErrorDetail] = Field(min_length=1, description="every problem found, each naming its field")


class ServerError(BaseModel):
    """The body of BentoML's 429, 5xx answers: a message only (the details are in the server log)."""

    model_config = ConfigDict(extra="forbid", title="ServerError")

    error: str


class BatchItem(BaseModel):
    """One answer of ``/recommend_batch``: the response, or the 400 error body ``/recommend`` would
    have returned for this request."""

    status: Literal[200, 400]
    result: RecommendResponse | None = Field(None, description="when status is 200")
    error: ErrorBody | None = Field(None, description="when status is 400")

    @classmethod
    def from_error(cls, exc: ValidationError) -> "BatchItem":
        # The body BentoML sends for a ValidationError on the other endpoints.
        detail = exc.errors(include_context=False, include_input=False)
        return cls(
            status=400,
            error=ErrorBody(
                error=f"{exc.error_count()} validation error for {exc.title}",
                detail=json.loads(json.dumps(detail, default=str)),
            ),
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
    precision: dict[str, str] = Field(
        description="Per task (retrieval, ctr), the arithmetic it is served in (fp32 or bf16), and "
        "ctr_reason: why the CTR scorer's is what it is (M6REC_PRECISION, the bundle's bfloat16 check, "
        "the hardware)"
    )
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
