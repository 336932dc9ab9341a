"""The service's request schemas and its Engine, in-process (no HTTP server): what is accepted, what is
rejected and with which field named, and what the engine answers over a tiny bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import TypeAdapter, ValidationError

from m6rec.serving.engine import Engine
from m6rec.serving.packaging import BundleError, import_bundle
from m6rec.serving.schemas import (
    MAX_HISTORY,
    SEMANTIC_REJECTIONS,
    ChatRequest,
    ExplainRequest,
    RankRequest,
    RecommendBatch,
    RecommendRequest,
    SimilarItemsRequest,
)
from tests.bundle_fixtures import TINY_METRICS, build_tiny_bundle

TURNS = [{"role": "user", "text": "I liked Movie number 3; something like it?"}]
HISTORY = [
    {"item_id": "i1", "rating": 5, "ts": 1_000_000},  # Comedy, liked
    {"item_id": "i5", "rating": 2, "ts": 1_086_400},  # Comedy, disliked
    {"item_id": "i2", "ts": 1_172_800},  # Drama, unrated
]


def errors_of(model, payload) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(payload if isinstance(payload, str) else json.dumps(payload))
    return info.value.errors(include_context=False, include_input=False)


def test_valid_requests_parse() -> None:
    req = RecommendRequest.model_validate_json(
        json.dumps({"history": HISTORY, "k": 5, "profile": {"age": 30, "gender": "F"}, "explain": True})
    )
    assert [h.item_id for h in req.history] == ["i1", "i5", "i2"] and req.history[0].rating == 5.0
    assert req.k == 5 and req.explain and req.exclude_seen and req.profile.gender == "F"
    # numeric ids (ML-100K style) are accepted and become their decimal text
    assert RankRequest.model_validate({"history": [{"item_id": 50}], "candidates": [1, "2"]}).candidates == [
        "1",
        "2",
    ]
    assert RecommendRequest.model_validate({"query": "  something funny  "}).query == "something funny"
    # JSON has one number type: a whole float is that integer (ids included)
    req = RecommendRequest.model_validate_json('{"history": [{"item_id": 50.0, "ts": 1e9}], "k": 5.0}')
    assert req.history[0].item_id == "50" and req.history[0].ts == 10**9 and req.k == 5
    # whitespace is JSON Schema's (ECMA-262 \s): U+3000 is stripped, U+0085 is not whitespace there
    assert RecommendRequest.model_validate({"query": "\u3000x\ufeff"}).query == "x"
    assert RecommendRequest.model_validate({"query": "\u0085"}).query == "\u0085"
    assert SimilarItemsRequest.model_validate({"item_id": "i1"}).k == 10
    assert ExplainRequest.model_validate({"history": HISTORY, "item_id": "i3"}).method == "auto"


@pytest.mark.parametrize(
    ("model", "payload", "loc", "fragment"),
    [
        (RecommendRequest, {}, (), "history is empty and no query"),
        (RecommendRequest, {"history": [], "query": "   "}, ("query",), "at least 1 character"),
        (RecommendRequest, {"query": "\u2003\n"}, ("query",), "not whitespace"),
        (RecommendRequest, {"query": "x" * 999 + "  "}, ("query",), "at most 1000"),  # counted as sent
        (RecommendRequest, {"history": [{"item_id": -1}]}, ("history", 0, "item_id"), "between 0 and"),
        (RecommendRequest, {"history": "i1"}, ("history",), "valid array"),
        (RecommendRequest, {"history": [{"item_id": "i1"}], "k": 0}, ("k",), "greater than or equal to 1"),
        (
            RecommendRequest,
            {"history": [{"item_id": "i1"}], "k": 10**6},
            ("k",),
            "less than or equal to 1000",
        ),
        (RecommendRequest, {"history": [{"item_id": "i1"}], "k": "10"}, ("k",), "valid integer"),
        (RecommendRequest, {"history": [{"item_id": "i1"}], "k": 2.5}, ("k",), "valid integer"),
        (RecommendRequest, {"history": [{"item_id": "i1"}], "explain": "yes"}, ("explain",), "valid boolean"),
        (
            RecommendRequest,
            {"history": [{"item_id": "i1", "rating": "five"}]},
            ("history", 0, "rating"),
            "number",
        ),
        (RecommendRequest, {"history": [{"item_id": "i1", "rating": 11}]}, ("history", 0, "rating"), "10"),
        (
            RecommendRequest,
            {"history": [{"item_id": "i1", "ts": 1_700_000_000_000}]},
            ("history", 0, "ts"),
            "",
        ),
        (RecommendRequest, {"history": [{"item_id": True}]}, ("history", 0, "item_id"), "valid string"),
        (RecommendRequest, {"history": [{"item_id": ""}]}, ("history", 0, "item_id"), "at least 1"),
        (RecommendRequest, {"history": [{"id": "i1"}]}, ("history", 0, "item_id"), "Field required"),
        (RecommendRequest, {"histroy": [{"item_id": "i1"}]}, ("histroy",), "Extra inputs"),
        (RecommendRequest, {"query": "x", "profile": {"age": "old"}}, ("profile", "age"), "valid integer"),
        (RecommendRequest, {"query": "x", "profile": "F"}, ("profile",), ""),
        (RecommendRequest, {"query": "x" * 1001}, ("query",), "at most 1000"),
        (
            RecommendRequest,
            {"history": [{"item_id": "i1"}] * (MAX_HISTORY + 1)},
            ("history",),
            f"at most {MAX_HISTORY}",
        ),
        (RecommendRequest, "{bad json", (), "Invalid JSON"),
        (RecommendRequest, "[1, 2]", (), ""),
        (RankRequest, {"history": [], "candidates": ["i1"]}, ("history",), "at least 1"),
        (RankRequest, {"history": [{"item_id": "i1"}], "candidates": []}, ("candidates",), "at least 1"),
        (RankRequest, {"history": [{"item_id": "i1"}]}, ("candidates",), "Field required"),
        (ExplainRequest, {"history": [{"item_id": "i1"}]}, ("item_id",), "Field required"),
        (
            ExplainRequest,
            {"history": [{"item_id": "i1"}], "item_id": "i2", "method": "magic"},
            ("method",),
            "",
        ),
        (SimilarItemsRequest, {"item_id": "i1", "k": -3}, ("k",), "greater than or equal to 1"),
    ],
)
def test_bad_requests_name_the_field(model, payload, loc, fragment) -> None:
    errors = errors_of(model, payload)
    assert any(tuple(e["loc"]) == loc and fragment in e["msg"] for e in errors), errors


# --------------------------------------------------------------------------------------------------
# the engine over a tiny bundle (no explainer: the history explanations are deterministic)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model", explainer=False)


@pytest.fixture(scope="module")
def engine(bundle: Path) -> Engine:
    return Engine(bundle, device="cpu", model_tag="m6rec:test")


def rec_request(**kw) -> RecommendRequest:
    return RecommendRequest.model_validate({"history": HISTORY, **kw})


def domain_errors(call) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        call()
    return info.value.errors(include_context=False, include_input=False)


def test_engine_answers(engine: Engine) -> None:
    top = engine.recommend(rec_request(k=5, explain=True))
    assert len(top.items) == 5 and top.mode == "history" and top.model == "m6rec:test"
    assert not {i.item_id for i in top.items} & {h["item_id"] for h in HISTORY}
    assert all(i.explanation and i.explanation_source == "history" for i in top.items)
    by_text = engine.recommend(
        RecommendRequest.model_validate({"query": "Movie number 7", "k": 3, "explain": True})
    )
    assert by_text.mode == "query" and len(by_text.items) == 3
    assert 'matches the request "Movie number 7"' in by_text.items[0].explanation
    ranked = engine.rank(RankRequest.model_validate({"history": HISTORY, "candidates": ["i9", "i3", "i9"]}))
    assert [i.item_id for i in ranked.items] == ["i9", "i3", "i9"]
    assert ranked.items[0].score == ranked.items[2].score and 0 < ranked.items[1].score < 1
    similar = engine.similar_items(SimilarItemsRequest.model_validate({"item_id": "i3", "k": 39}))
    assert len(similar.items) == 39 and "i3" not in {i.item_id for i in similar.items}
    info = engine.model_info()
    assert (
        info.metrics == TINY_METRICS and info.n_items == 40 and info.explainer["status"].startswith("absent")
    )


def test_history_explanation_cites_liked_items_of_the_same_genre(engine: Engine) -> None:
    out = engine.explain(
        ExplainRequest.model_validate({"history": HISTORY, "item_id": "i13", "profile": {"gender": "M"}})
    )
    assert out.source == "history" and out.title == "Movie number 13"
    # i13 is a Comedy: i1 (Comedy, 5 stars) is cited, i5 (Comedy, 2 stars) is not
    assert out.explanation.startswith("He will like Movie number 13 (1993) because he liked Movie number 1")
    assert "Comedy" in out.explanation and "Movie number 5" not in out.explanation
    assert out.behaviour_text.startswith("A male user.") and out.behaviour_text.endswith("?")
    assert " i1 " not in f" {out.behaviour_text} "  # no raw ids in the text
    drama = engine.explain(
        ExplainRequest.model_validate({"history": HISTORY, "item_id": "i6", "method": "history"})
    )
    assert "watched Movie number 2 (1982)" in drama.explanation  # unrated Drama
    horror = engine.explain(ExplainRequest.model_validate({"history": HISTORY, "item_id": "i7"}))
    assert "recent history" in horror.explanation  # no Horror in the history: the fallback wording


def test_engine_rejects_what_the_catalogue_does_not_have(engine: Engine) -> None:
    errors = domain_errors(
        lambda: engine.recommend(
            RecommendRequest.model_validate(
                {"history": [{"item_id": "i1"}, {"item_id": "nope"}, {"item_id": 99}]}
            )
        )
    )
    assert [tuple(e["loc"]) for e in errors] == [("history", 1, "item_id"), ("history", 2, "item_id")]
    assert "'nope'" in errors[0]["msg"] and "'99'" in errors[1]["msg"] and "40 items" in errors[0]["msg"]
    errors = domain_errors(
        lambda: engine.rank(RankRequest.model_validate({"history": HISTORY, "candidates": ["i2", "zzz"]}))
    )
    assert tuple(errors[0]["loc"]) == ("candidates", 1) and "'zzz'" in errors[0]["msg"]
    errors = domain_errors(lambda: engine.recommend(rec_request(k=41)))
    assert (
        tuple(errors[0]["loc"]) == ("k",)
        and "k=41 is larger than the catalogue (40 items)" in errors[0]["msg"]
    )
    errors = domain_errors(
        lambda: engine.similar_items(SimilarItemsRequest.model_validate({"item_id": "i1", "k": 40}))
    )
    assert "39 items" in errors[0]["msg"]
    errors = domain_errors(lambda: engine.similar_items(SimilarItemsRequest.model_validate({"item_id": "x"})))
    assert tuple(errors[0]["loc"]) == ("item_id",)
    errors = domain_errors(
        lambda: engine.explain(
            ExplainRequest.model_validate({"history": HISTORY, "item_id": "i3", "method": "language_model"})
        )
    )
    assert tuple(errors[0]["loc"]) == ("method",) and "no language-model explainer" in errors[0]["msg"]


def test_import_bundle_follows_bentoml_home(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each import lands in the store of the $BENTOML_HOME current at call time, with the bundle's
    metrics as metadata and every bundle file kept."""
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    tags = []
    for name in ("home-a", "home-b"):
        monkeypatch.setenv("BENTOML_HOME", str(tmp_path / name))
        tags.append(import_bundle(bundle, labels={"stage": name}, metadata={"run_id": "r1"}))
    for name, tag in zip(("home-a", "home-b"), tags, strict=True):
        version = tag.split(":")[1]
        stored = tmp_path / name / "models" / "m6rec" / version
        assert (stored / "MODEL_CARD.md").is_file() and (stored / "evaluation.json").is_file()
        assert (stored / "encoder").is_dir() and (stored / "manifest.json").is_file()
        model_yaml = (stored / "model.yaml").read_text()
        assert f"stage: {name}" in model_yaml and "ndcg@10: 0.5" in model_yaml and "run_id: r1" in model_yaml
    assert not (tmp_path / "home-a" / "models" / "m6rec" / tags[1].split(":")[1]).exists()

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / "encoder")
    with pytest.raises(BundleError, match="missing encoder"):
        import_bundle(broken)


def test_a_batch_answers_each_request_as_if_alone(engine: Engine) -> None:
    """What /recommend_batch (adaptive batching) runs: good requests get the response /recommend gives,
    a bad one gets its own 400 entry with the same error body, and does not fail the others."""
    reqs = [
        rec_request(k=5),
        RecommendRequest.model_validate({"history": [{"item_id": "nope"}]}),
        RecommendRequest.model_validate({"query": "Movie number 7", "k": 3}),
        rec_request(k=41),
        rec_request(k=4, rerank=0, profile={"age": 40, "gender": "F"}),
    ]
    out = engine.recommend_many(reqs)
    assert [o.status for o in out] == [200, 400, 200, 400, 200]
    for i in (0, 2, 4):
        alone = engine.recommend(reqs[i])
        assert out[i].error is None and out[i].result.mode == alone.mode
        assert [x.item_id for x in out[i].result.items] == [x.item_id for x in alone.items]
        # one forward pass over the batch: equal up to float rounding
        assert [x.score for x in out[i].result.items] == pytest.approx(
            [x.score for x in alone.items], abs=1e-5
        )
    assert out[1].error.error == "1 validation error for recommend request"
    assert out[1].error.detail[0].loc == ["history", 0, "item_id"]
    assert "'nope'" in out[1].error.detail[0].msg
    assert out[3].error.detail[0].type == "k_too_large" and out[3].result is None
    # the JSON entry is the body /recommend sends with a 400 (no "url": null for the service's own types)
    assert out[1].model_dump(mode="json", exclude_none=True)["error"]["detail"][0] == {
        "type": "unknown_item",
        "loc": ["history", 0, "item_id"],
        "msg": out[1].error.detail[0].msg,
    }
    assert "url" not in out[1].error.detail[0].model_dump(mode="json")
    assert engine.recommend_many([]) == []


def test_bf16_scoring_is_what_m6rec_precision_says_and_close_to_full_precision(
    bundle: Path, engine: Engine, monkeypatch
) -> None:
    # the tiny bundle was written without a bfloat16 check: ``auto`` (the default) keeps float32
    assert engine.rec.precision == {
        "retrieval": "fp32",
        "ctr": "fp32",
        "ctr_reason": "the bundle has no bfloat16 check (ranker.precision)",
    }
    assert engine.model_info().precision == engine.rec.precision
    monkeypatch.setenv("M6REC_PRECISION", "bf16")
    fast = Engine(bundle, device="cpu")
    assert fast.rec.precision["ctr"] == "bf16" and "forced" in fast.rec.precision["ctr_reason"]
    req = RankRequest.model_validate({"history": HISTORY, "candidates": [f"i{i}" for i in range(6, 30)]})
    full, half = engine.rank(req), fast.rank(req)
    assert [x.score for x in half.items] == pytest.approx([x.score for x in full.items], abs=2e-2)
    assert [x.score for x in half.items] != [x.score for x in full.items]  # it really ran in bfloat16
    assert len(fast.recommend(rec_request(k=5)).items) == 5
    monkeypatch.setenv("M6REC_PRECISION", "fp8")
    with pytest.raises(ValueError, match="M6REC_PRECISION='fp8'"):
        Engine(bundle, device="cpu")


def test_the_engine_refuses_only_with_the_documented_semantic_types(engine: Engine) -> None:
    """Each catalogue check the engine makes has a type the OpenAPI document names for that endpoint
    (m6rec.serving.service.SEMANTIC_400), and every documented type is really raised somewhere."""
    from m6rec.serving.service import SEMANTIC_400

    calls = {
        "recommend": [
            lambda: engine.recommend(RecommendRequest.model_validate({"history": [{"item_id": "nope"}]})),
            lambda: engine.recommend(rec_request(k=41)),
        ],
        "rank": [lambda: engine.rank(RankRequest.model_validate({"history": HISTORY, "candidates": ["x"]}))],
        "explain": [
            lambda: engine.explain(ExplainRequest.model_validate({"history": HISTORY, "item_id": "x"})),
            lambda: engine.explain(
                ExplainRequest.model_validate(
                    {"history": HISTORY, "item_id": "i3", "method": "language_model"}
                )
            ),
        ],
        "similar_items": [
            lambda: engine.similar_items(SimilarItemsRequest.model_validate({"item_id": "x"})),
            lambda: engine.similar_items(SimilarItemsRequest.model_validate({"item_id": "i1", "k": 40})),
        ],
        "chat": [
            lambda: engine.chat(ChatRequest.model_validate({"turns": TURNS, "history": [{"item_id": "x"}]})),
            lambda: engine.chat(ChatRequest.model_validate({"turns": TURNS, "k": 41})),
        ],
    }
    raised = {name: {e["type"] for call in fns for e in domain_errors(call)} for name, fns in calls.items()}
    assert raised == {name: set(kinds) for name, kinds in SEMANTIC_400.items() if kinds}
    assert set().union(*raised.values()) == set(SEMANTIC_REJECTIONS)


# Bodies at the edges of every rule; for each, the published JSON Schema and the pydantic model must agree.
SCHEMA_EDGES: list[tuple[str, Any]] = [
    ("chat", {"turns": TURNS}),
    ("chat", {"turns": []}),
    ("chat", {"turns": [{"role": "assistant", "text": "hi"}]}),
    ("chat", {"turns": [{"role": "user", "text": "  "}]}),
    ("chat", {"turns": TURNS * 20}),
    ("chat", {"turns": TURNS * 21}),
    ("chat", {"turns": TURNS, "k": 0}),
    ("recommend", {}),
    ("recommend", {"query": "x"}),
    ("recommend", {"query": "   "}),
    ("recommend", {"query": "\u0085"}),
    ("recommend", {"query": "\u3000"}),
    ("recommend", {"query": "x" * 999 + " "}),
    ("recommend", {"query": "x" * 1000 + " "}),
    ("recommend", {"history": []}),
    ("recommend", {"history": [], "query": None}),
    ("recommend", {"history": [{"item_id": "i1"}], "query": None}),
    ("recommend", {"history": [{"item_id": 50.0}]}),
    ("recommend", {"history": [{"item_id": 50.5}]}),
    ("recommend", {"history": [{"item_id": -1}]}),
    ("recommend", {"history": [{"item_id": True}]}),
    ("recommend", {"history": [{"item_id": " "}]}),
    ("recommend", {"history": [{"item_id": "a" * 200 + " "}]}),
    ("recommend", {"history": [{"item_id": "i1", "rating": 10.5}]}),
    ("recommend", {"history": [{"item_id": "i1", "ts": 1.5}]}),
    ("recommend", {"history": [{"item_id": "i1", "extra": 1}]}),
    ("recommend", {"query": "x", "k": 5.0}),
    ("recommend", {"query": "x", "k": 2.5}),
    ("recommend", {"query": "x", "k": "5"}),
    ("recommend", {"query": "x", "k": True}),
    ("recommend", {"query": "x", "k": 1001}),
    ("recommend", {"query": "x", "rerank": 0}),
    ("recommend", {"query": "x", "profile": None}),
    ("recommend", {"query": "x", "profile": {"gender": " " * 33}}),
    ("recommend", {"query": "x", "profile": {"age": 131}}),
    ("recommend", {"query": "x", "surprise": 1}),
    ("recommend_batch", []),
    ("recommend_batch", [{}]),
    ("recommend_batch", [{"query": "x"}] * 65),
    ("recommend_batch", [{"query": "x"}, {"history": [{"item_id": 1}]}]),
    ("rank", {"history": [{"item_id": "i1"}], "candidates": []}),
    ("rank", {"history": [{"item_id": "i1"}], "candidates": [1, " 2 "], "now_ts": None}),
    ("rank", {"history": [], "candidates": ["i1"]}),
    ("explain", {"history": [{"item_id": "i1"}], "item_id": "i2", "method": "magic"}),
    ("explain", {"history": [{"item_id": "i1"}], "item_id": "i2", "method": "history"}),
    ("similar_items", {"item_id": "i1", "k": 1000}),
    ("similar_items", {"item_id": "i1", "k": 0}),
    ("similar_items", {"item_id": "i1", "k": None}),
]
REQUEST_TYPES: dict[str, Any] = {
    "recommend": RecommendRequest,
    "recommend_batch": RecommendBatch,
    "rank": RankRequest,
    "explain": ExplainRequest,
    "similar_items": SimilarItemsRequest,
    "chat": ChatRequest,
}


@pytest.fixture(scope="module")
def openapi_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The OpenAPI document the service publishes, built in-process (no server, no model)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(tmp_path_factory.mktemp("bentoml")))
        from m6rec.serving.service import M6Rec

        return M6Rec.openapi_spec.asdict()


@pytest.mark.parametrize(("endpoint", "body"), SCHEMA_EDGES, ids=lambda v: json.dumps(v)[:60])
def test_the_published_schema_accepts_what_the_model_accepts(
    openapi_doc: dict[str, Any], endpoint: str, body: Any
) -> None:
    request = openapi_doc["paths"][f"/{endpoint}"]["post"]["requestBody"]
    assert request["required"] is True
    schema = {**request["content"]["application/json"]["schema"], "components": openapi_doc["components"]}
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        TypeAdapter(REQUEST_TYPES[endpoint]).validate_json(json.dumps(body))
        by_model = True
    except ValidationError:
        by_model = False
    assert by_schema == by_model, (endpoint, body, "schema", by_schema, "model", by_model)


def test_the_published_document_is_openapi_31_with_every_error_answer(openapi_doc: dict[str, Any]) -> None:
    assert openapi_doc["openapi"] == "3.1.0"
    schemas = openapi_doc["components"]["schemas"]
    for route in REQUEST_TYPES:
        responses = openapi_doc["paths"][f"/{route}"]["post"]["responses"]
        assert {"200", "400", "415", "429", "500", "504"} <= set(responses), route
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    # every reference resolves, and BentoML's generic error schemas (a string "detail") are gone
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(openapi_doc)}
    assert refs <= set(schemas) and not {"InvalidArgument", "NotFound", "InternalServerError"} & set(schemas)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
