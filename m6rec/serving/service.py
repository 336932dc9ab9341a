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

Every request body is a strict pydantic model (:mod:`m6rec.serving.schemas`); every client mistake,
including ids the catalogue does not have, is an HTTP 400 naming the field. The request handling lives
in :class:`~m6rec.serving.engine.Engine` (no BentoML involved); :class:`M6Rec` only wires it to BentoML.

The OpenAPI document (``/docs.json``, and ``apis/openapi.yaml`` in a built Bento) is
:func:`openapi_document`: BentoML's own leaves out what the service really answers (its 400 schema has a
string ``detail``, the 415 is missing, nullable fields and the "history or query" rule are lost), so a
client generated from it, or a contract test, would be misled.
"""

import gc
import inspect
import logging
import os
import typing
from typing import Any

import attrs
import bentoml
import pydantic
import torch
from bentoml._internal.service.openapi.specification import Components, OpenAPISpecification, PathItem

from m6rec.serving.engine import Engine, default_threads, default_workers, env_int
from m6rec.serving.middleware import NOT_JSON_MEDIA_TYPES, JsonBodyGuard
from m6rec.serving.packaging import DEFAULT_MODEL_TAG, MODEL_TAG_ENV
from m6rec.serving.schemas import (
    MAX_BATCH,
    SEMANTIC_REJECTIONS,
    BatchItem,
    ChatRequest,
    ChatResponse,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    ModelInfo,
    RankRequest,
    RankResponse,
    RecommendBatch,
    RecommendRequest,
    RecommendResponse,
    ServerError,
    SimilarItemsRequest,
    SimilarItemsResponse,
)

logger = logging.getLogger(__name__)

TIMEOUT_S = 120  # traffic.timeout: BentoML answers 504 after it

# Per endpoint, the 400s a schema-valid body can still get (types of SEMANTIC_REJECTIONS): the checks that
# need the catalogue. /recommend_batch answers them per request (``status: 400`` entries of a 200).
SEMANTIC_400: dict[str, tuple[str, ...]] = {
    "recommend": ("unknown_item", "k_too_large"),
    "recommend_batch": (),
    "rank": ("unknown_item",),
    "explain": ("unknown_item", "no_language_model"),
    "similar_items": ("unknown_item", "k_too_large"),
    "chat": ("unknown_item", "k_too_large"),
    "model_info": (),
}


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


WORKERS = env_int("M6REC_WORKERS", default_workers())

# --------------------------------------------------------------------------------------------------
# The OpenAPI document

OPENAPI_VERSION = "3.1.0"  # its schemas are JSON Schema 2020-12: pydantic's own, with nothing converted
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"


def _models(*types: Any) -> dict[str, type[pydantic.BaseModel]]:
    """Every pydantic model reachable from ``types`` (through type arguments and model fields), by name."""
    found: dict[str, type[pydantic.BaseModel]] = {}
    todo = list(types)
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            if tp.__name__ not in found:
                found[tp.__name__] = tp
                todo.extend(field.annotation for field in tp.model_fields.values())
        else:
            todo.extend(typing.get_args(tp))
    return found


def _json_schema(
    tp: Any, mode: typing.Literal["validation", "serialization"], components: dict[str, Any]
) -> dict[str, Any]:
    """The JSON Schema pydantic validates (or serialises) ``tp`` with; named models go to ``components``
    and are referenced from there. A model's ``openapi_rules`` class attribute (a rule its validators
    enforce, written as JSON Schema) is added to its component."""
    schema = pydantic.TypeAdapter(tp).json_schema(ref_template=REF_TEMPLATE, mode=mode)
    defs = schema.pop("$defs", {})
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        defs[tp.__name__] = schema
        schema = {"$ref": REF_TEMPLATE.format(model=tp.__name__)}
    models = _models(tp)
    for name, sub in defs.items():
        sub = {**sub, **getattr(models.get(name), "openapi_rules", {})}
        if components.setdefault(name, sub) != sub:
            raise ValueError(f"two different schemas are both named {name!r} in the OpenAPI document")
    return schema


def _signature(func: Any) -> tuple[Any | None, Any]:
    """(request body type or None, response type) of an API function, from its annotations."""
    hints = typing.get_type_hints(func, include_extras=True)
    params = [name for name in inspect.signature(func).parameters if name != "self"]
    return (hints[params[0]] if params else None), hints["return"]


def _answer(description: str, model: Any, components: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": _json_schema(model, "serialization", components)}},
    }


def _semantic(name: str) -> str:
    """The 400s a schema-valid body can still get from this endpoint, in words."""
    return "; ".join(f"`{kind}`: {SEMANTIC_REJECTIONS[kind]}" for kind in SEMANTIC_400[name])


def _responses(name: str, api: Any, response: Any, components: dict[str, Any]) -> dict[str, Any]:
    bad_request = (
        "The body breaks the request schema: malformed JSON, a wrong type (no string-to-number "
        "coercion), a missing or unknown property, a value out of range, a blank text. `detail` lists every "
        "problem with the path of its field (`loc`)."
    )
    if SEMANTIC_400[name]:
        bad_request += f" Also for schema-valid bodies the served catalogue cannot answer: {_semantic(name)}."
    answers = {
        "200": _answer("Successful Response", response, components),
        "400": _answer(bad_request, ErrorBody, components),
        "415": _answer(
            f"A Content-Type BentoML would not read as JSON ({', '.join(sorted(NOT_JSON_MEDIA_TYPES))}); "
            "every endpoint takes a JSON body.",
            ErrorBody,
            components,
        ),
        "429": _answer(  # BentoML's MaxConcurrencyMiddleware
            "More requests in flight than this worker admits (traffic.max_concurrency); retry later.",
            ServerError,
            components,
        ),
        "500": _answer(
            "A server fault, never a client mistake; the server log has the traceback.",
            ServerError,
            components,
        ),
        "504": _answer(f"Not answered within {TIMEOUT_S} s (traffic.timeout).", ServerError, components),
    }
    if api.batchable:
        answers["503"] = _answer(
            "The adaptive batcher is overloaded and refused the request; retry later.",
            ServerError,
            components,
        )
    return dict(sorted(answers.items()))


def openapi_document(svc: "bentoml.Service[Any]", base: OpenAPISpecification) -> OpenAPISpecification:
    """``base`` (BentoML's document: info, tags, the health and metrics routes) with every API operation
    described as the service really behaves, as OpenAPI 3.1.

    Per operation: the request body is the JSON Schema pydantic validates it with (``additionalProperties:
    false`` from ``extra="forbid"``, lengths, ranges, nullability, RecommendRequest's "history or query"
    rule), required unless the endpoint takes no input; the 200 body is the response model's schema; and
    every status the service answers is listed with its body: 400 (schema violations, and this
    endpoint's semantic rejections, :data:`SEMANTIC_400`, which the description names too), 415 (not JSON,
    :class:`~m6rec.serving.middleware.JsonBodyGuard`), 429, 500 and 504 (BentoML's traffic limits and
    server faults; 503 too on a batchable endpoint, whose batcher refuses work when overloaded).
    tests/serving/test_openapi_contract.py holds the service to it."""
    components: dict[str, Any] = {}
    routes = {api.route for api in svc.apis.values()}
    paths = {route: item for route, item in base.paths.items() if route not in routes}
    for name, api in svc.apis.items():
        if api.is_task:
            raise TypeError(f"{name}: task endpoints (/submit, /status, /get) are not described here")
        request, response = _signature(api.func)
        if request is None:
            body = {
                "required": False,
                "description": "no input: send `{}` or no body (properties are ignored)",
                "content": {JSON: {"schema": {"type": "object"}}},
            }
        else:
            body = {
                "required": True,
                "content": {JSON: {"schema": _json_schema(request, "validation", components)}},
            }
        description = inspect.cleandoc(api.doc or "")
        if SEMANTIC_400[name]:
            description += (
                f"\n\nSemantic 400s (schema-valid bodies the catalogue checks refuse): {_semantic(name)}."
            )
        paths[api.route] = PathItem(
            post={
                "tags": ["Service APIs"],
                "x-bentoml-name": name,
                "operationId": f"{svc.name}__{name}",
                "description": description,
                "requestBody": body,
                "responses": _responses(name, api, response, components),
            }
        )
    return attrs.evolve(
        base,
        openapi=OPENAPI_VERSION,
        paths=paths,
        components=Components(schemas=dict(sorted(components.items()))),
    )


class DocumentedService(bentoml.Service):
    """A BentoML service whose OpenAPI document is :func:`openapi_document`. ``service_class=`` of
    ``@bentoml.service`` is BentoML 1.4's hook for this, and ``openapi_spec`` is what both ``/docs.json``
    and the ``apis/openapi.yaml`` of a built Bento are made from."""

    @property
    def openapi_spec(self) -> OpenAPISpecification:
        return openapi_document(self, super().openapi_spec)


@bentoml.service(
    name="m6rec",
    service_class=DocumentedService,
    traffic={"timeout": TIMEOUT_S, "max_concurrency": 64},
    # Worker processes, each with the whole model (M6REC_WORKERS, default: one per CPU core, at most 4;
    # torch threads per worker: M6REC_TORCH_THREADS, default: the cores shared among the workers).
    # docs/benchmarks.md has latency figures for 1 and 2 workers on 2 cores.
    workers=WORKERS,
)
class M6Rec:
    """m6rec recommendations over HTTP (see the module docstring for the endpoints)."""

    bundle = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV) or DEFAULT_MODEL_TAG)

    def __init__(self) -> None:
        torch.set_num_threads(env_int("M6REC_TORCH_THREADS", default_threads(WORKERS)))
        stored = _packaged_model() or self.bundle  # resolved from the model store once, here
        device = _pick_device()
        self.engine = Engine(
            stored.path, device=device, model_tag=str(stored.tag), model_labels=dict(stored.info.labels)
        )
        # The loaded catalogue is Python objects by the million (item texts, id and title maps) that
        # live as long as the worker: moved out of the garbage collector's reach, or each of its full
        # passes over them stalls every request in flight (longer the larger the catalogue).
        gc.collect()
        gc.freeze()
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
    def chat(self, request: ChatRequest, /) -> ChatResponse:
        """Conversational recommendation: the dialogue so far (user and system turns) in, the top items and
        a one- or two-sentence reply naming them out."""
        return self.engine.chat(request)

    @bentoml.api
    def similar_items(self, request: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """The k catalogue items closest to one item (retriever item vectors, cosine)."""
        return self.engine.similar_items(request)

    @bentoml.api
    def model_info(self) -> ModelInfo:
        """The served model: tag, manifest metrics and configs, explainer status, versions, limits."""
        return self.engine.model_info()


M6Rec.add_asgi_middleware(
    JsonBodyGuard,
    paths=frozenset(api.route for api in M6Rec.apis.values()),
    json_paths=frozenset(api.route for api in M6Rec.apis.values() if api.batchable),
)
