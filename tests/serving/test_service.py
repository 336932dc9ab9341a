"""The BentoML service for real: a tiny bundle imported into a temporary BentoML store, ``bentoml serve``
on a free localhost port, every endpoint and every kind of bad input over HTTP; then ``bentoml build``
and ``bentoml serve`` of the built Bento.

Only localhost traffic; every wait is bounded (generously: nothing here checks speed)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from m6rec.serving.bundle import BUNDLE_FORMAT
from m6rec.serving.packaging import bento_contents, bento_dir, build_bento, import_bundle
from m6rec.serving.schemas import MAX_HISTORY
from tests import REPO_ROOT
from tests.bundle_fixtures import TINY_METRICS
from tests.serving import bentoml_serve, post

pytestmark = pytest.mark.slow

HISTORY = [
    {"item_id": "i1", "rating": 5, "ts": 1_000_000},  # Comedy, liked
    {"item_id": "i5", "rating": 2, "ts": 1_086_400},  # Comedy, disliked
    {"item_id": "i2", "ts": 1_172_800},  # Drama, unrated
]


# --------------------------------------------------------------------------------------------------
# endpoints


def test_health_and_model_info(client: httpx.Client, store: dict) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    info = post(client, "/model_info", {}).json()
    assert info["model"] == store["tag"] and info["n_items"] == 40 and info["device"] == "cpu"
    assert info["metrics"] == TINY_METRICS
    assert info["labels"]["stage"] == "test" and info["labels"]["explainer"] == "true"
    assert info["explainer"]["status"] == "loaded" and info["manifest"]["format"] == BUNDLE_FORMAT
    assert info["explainer"]["check"]["decoding"] == "grounded"  # what the bundle says, the service does
    assert {"bentoml", "torch", "transformers", "python"} <= set(info["versions"])
    assert info["limits"]["max_history"] == MAX_HISTORY and info["limits"]["max_k"] == 40


def test_recommend_from_history_and_from_text(client: httpx.Client, store: dict) -> None:
    body = {"history": HISTORY, "k": 5, "profile": {"age": 30, "gender": "F", "occupation": "engineer"}}
    r = post(client, "/recommend", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mode"] == "history" and out["model"] == store["tag"] and len(out["items"]) == 5
    ids = [i["item_id"] for i in out["items"]]
    assert len(set(ids)) == 5 and not set(ids) & {h["item_id"] for h in HISTORY}
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(
        i["title"] == f"Movie number {i['item_id'][1:]}" and i["explanation"] is None for i in out["items"]
    )

    text = post(client, "/recommend", {"query": "something like Movie number 3 but funnier", "k": 3}).json()
    assert text["mode"] == "query" and len(text["items"]) == 3
    both = post(client, "/recommend", {"history": HISTORY, "query": "a comedy", "k": 4}).json()
    assert both["mode"] == "history+query" and len(both["items"]) == 4


def test_recommend_with_explanations(client: httpx.Client) -> None:
    out = post(client, "/recommend", {"history": HISTORY, "k": 4, "explain": True}).json()
    sources = [i["explanation_source"] for i in out["items"]]
    assert sources == ["language_model", "language_model", "history", "history"]  # M6REC_LM_EXPLAIN_TOP=2
    for item in out["items"]:
        assert item["explanation"].startswith(f"They will like Movie number {item['item_id'][1:]} (")
        assert " because " in item["explanation"]


def test_recommend_batch_over_http_with_adaptive_batching(client: httpx.Client) -> None:
    """A JSON array in, one answer per request in order; a bad request is its own 400 entry. Concurrent
    one-element calls (what the dispatcher merges) each get their own answer back."""
    good = {"history": HISTORY, "k": 3}
    r = post(
        client, "/recommend_batch", [good, {"history": [{"item_id": "nope"}]}, {"query": "Movie", "k": 2}]
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["status"] for o in out] == [200, 400, 200]
    alone = post(client, "/recommend", good).json()
    assert [i["item_id"] for i in out[0]["result"]["items"]] == [i["item_id"] for i in alone["items"]]
    assert "'nope'" in out[1]["error"]["detail"][0]["msg"] and out[2]["result"]["mode"] == "query"
    bodies = [[{"history": [{"item_id": f"i{i}", "rating": 5}], "k": 1 + i % 3}] for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: post(client, "/recommend_batch", b), bodies))
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        [item] = answer.json()
        assert item["status"] == 200 and len(item["result"]["items"]) == body[0]["k"]
    assert post(client, "/recommend_batch", {"history": HISTORY}).status_code == 400  # not an array
    empty, too_many = post(client, "/recommend_batch", []), post(client, "/recommend_batch", [good] * 65)
    assert (empty.status_code, too_many.status_code) == (400, 400), (empty.text, too_many.text)


def test_rank_keeps_the_candidates_order(client: httpx.Client) -> None:
    body = {"history": HISTORY, "candidates": ["i9", "i3", "i20", "i9"], "now_ts": 1_300_000}
    out = post(client, "/rank", body).json()
    assert [i["item_id"] for i in out["items"]] == ["i9", "i3", "i20", "i9"]
    scores = [i["score"] for i in out["items"]]
    assert all(0 < s < 1 for s in scores) and scores[0] == scores[3]
    assert out["items"][2]["title"] == "Movie number 20"


def test_explain_from_history_and_from_the_language_model(client: httpx.Client) -> None:
    base = {"history": HISTORY, "item_id": "i13", "profile": {"gender": "M"}}
    hist = post(client, "/explain", {**base, "method": "history"}).json()
    assert hist["source"] == "history" and hist["title"] == "Movie number 13"
    assert hist["explanation"].startswith(
        "He will like Movie number 13 (1993) because he liked Movie number 1"
    )
    assert "Movie number 5" not in hist["explanation"]  # rated 2 stars: not a reason
    assert hist["behaviour_text"].startswith("A male user.") and hist["behaviour_text"].endswith("?")
    assert "Will he like Movie number 13" in hist["behaviour_text"]
    lm = post(client, "/explain", base).json()  # method "auto": the bundle has an explainer
    assert lm["source"] == "language_model"
    assert lm["explanation"].startswith("He will like Movie number 13") and " because" in lm["explanation"]
    assert lm["behaviour_text"] == hist["behaviour_text"]


def test_similar_items(client: httpx.Client) -> None:
    out = post(client, "/similar_items", {"item_id": "i3", "k": 4}).json()
    assert (
        out["item_id"] == "i3" and len(out["items"]) == 4 and "i3" not in {i["item_id"] for i in out["items"]}
    )
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)


# --------------------------------------------------------------------------------------------------
# bad input: always 4xx, with the field and value named


BAD = [
    (
        "/recommend",
        {"history": [{"item_id": "i1"}, {"item_id": "nope"}]},
        ["history", 1, "item_id"],
        "'nope'",
    ),
    ("/rank", {"history": HISTORY, "candidates": ["i2", "ghost"]}, ["candidates", 1], "'ghost'"),
    ("/explain", {"history": HISTORY, "item_id": "ghost"}, ["item_id"], "'ghost'"),
    ("/similar_items", {"item_id": "ghost"}, ["item_id"], "unknown item id 'ghost'"),
    ("/recommend", {"history": []}, [], "history is empty and no query"),
    ("/recommend", {}, [], "history is empty and no query"),
    ("/rank", {"history": [], "candidates": ["i1"]}, ["history"], "at least 1"),
    (
        "/recommend",
        {"history": [{"item_id": "i1"}] * (MAX_HISTORY + 1)},
        ["history"],
        f"at most {MAX_HISTORY}",
    ),
    ("/recommend", {"history": "i1"}, ["history"], "valid array"),
    (
        "/recommend",
        {"history": [{"item_id": "i1", "rating": "five"}]},
        ["history", 0, "rating"],
        "valid number",
    ),
    ("/recommend", {"history": [{"item_id": "i1"}], "k": "ten"}, ["k"], "valid integer"),
    ("/recommend", {"history": [{"item_id": "i1"}], "explain": "yes"}, ["explain"], "valid boolean"),
    ("/recommend", {"history": [{"item_id": "i1"}], "k": 0}, ["k"], "greater than or equal to 1"),
    ("/recommend", {"history": [{"item_id": "i1"}], "k": 10**6}, ["k"], "less than or equal to 1000"),
    ("/recommend", {"history": [{"item_id": "i1"}], "k": 41}, ["k"], "larger than the catalogue (40 items)"),
    ("/similar_items", {"item_id": "i1", "k": 40}, ["k"], "larger than the rest of the catalogue"),
    (
        "/recommend",
        {"history": [{"item_id": "i1", "ts": 1_700_000_000_000}]},
        ["history", 0, "ts"],
        "less than",
    ),
    ("/recommend", {"histroy": [{"item_id": "i1"}]}, ["histroy"], "Extra inputs are not permitted"),
    ("/recommend", '{"history": [{"item_id": "i1"}', [], "Invalid JSON"),
    ("/rank", "not json at all", [], "Invalid JSON"),
    ("/similar_items", "[1, 2, 3]", [], "object"),
]


@pytest.mark.parametrize(
    ("route", "body", "loc", "fragment"), BAD, ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD)]
)
def test_bad_input_is_a_4xx_naming_the_problem(client: httpx.Client, route: str, body, loc, fragment) -> None:
    r = post(client, route, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    out = r.json()
    assert "validation error" in out["error"]
    assert any(d["loc"] == loc and fragment in d["msg"] for d in out["detail"]), out


def test_odd_requests_never_cause_a_5xx(client: httpx.Client) -> None:
    """A bounded sweep of wrong types and shapes for every field of every endpoint."""
    odd_values = [
        None,
        True,
        -1,
        1e308,
        "",
        "x" * 300,
        [],
        {},
        [None],
        [{"item_id": None}],
        {"item_id": "i1"},
    ]
    fields = {
        "/recommend": ["history", "query", "profile", "k", "explain", "exclude_seen"],
        "/rank": ["history", "candidates", "profile", "now_ts"],
        "/explain": ["history", "item_id", "profile", "method"],
        "/similar_items": ["item_id", "k"],
    }
    valid = {
        "/recommend": {"history": HISTORY, "k": 3},
        "/rank": {"history": HISTORY, "candidates": ["i3"]},
        "/explain": {"history": HISTORY, "item_id": "i3", "method": "history"},
        "/similar_items": {"item_id": "i3", "k": 3},
    }
    statuses = []
    for route, names in fields.items():
        for name in names:
            for value in odd_values:
                r = post(client, route, {**valid[route], name: value})
                statuses.append((route, name, value, r.status_code))
    assert len(statuses) == 16 * len(odd_values)
    assert not [s for s in statuses if s[3] >= 500], [s for s in statuses if s[3] >= 500]
    assert post(client, "/recommend", b"").status_code == 400  # empty body: {} -> no history, no query


# --------------------------------------------------------------------------------------------------
# bentoml build, and serving the built Bento


@pytest.fixture(scope="module")
def bento(store: dict) -> dict:
    tag = build_bento(REPO_ROOT, store["tag"])
    return {"tag": tag, "files": bento_contents(tag)}


def test_bentoml_build_packages_code_model_and_dockerfile(bento: dict, store: dict) -> None:
    files = set(bento["files"])
    model_version = store["tag"].split(":")[1]
    code = {"service", "engine", "schemas", "middleware", "recommender", "bundle"}
    assert {f"src/m6rec/serving/{name}.py" for name in code} | {"src/m6rec/text/textify.py"} <= files
    assert {"env/docker/Dockerfile", "env/python/requirements.txt", "bento.yaml", "README.md"} <= files
    assert "src/bentofile.yaml" in files and not [f for f in files if f.startswith("src/tests/")]
    model = f"models/m6rec/{model_version}"
    assert {f"{model}/manifest.json", f"{model}/MODEL_CARD.md", f"{model}/evaluation.json"} <= files
    assert any(f.startswith(f"{model}/explainer/") for f in files)
    assert {tuple(f.split("/")[1:3]) for f in files if f.startswith("models/")} == {("m6rec", model_version)}

    root = bento_dir(bento["tag"])
    requirements = (root / "env/python/requirements.txt").read_text().split()
    assert "torch==2.13.0" in requirements and any(r.startswith("bentoml==") for r in requirements)
    assert "ENTRYPOINT" in (root / "env/docker/Dockerfile").read_text()
    info = (root / "bento.yaml").read_text()
    assert f"tag: {store['tag']}" in info and "service: m6rec.serving.service:M6Rec" in info
    # the Bento's OpenAPI document is the service's own (m6rec.serving.service.openapi_document)
    openapi = yaml.safe_load((root / "apis/openapi.yaml").read_text())
    assert openapi["openapi"] == "3.1.0" and "ErrorBody" in openapi["components"]["schemas"]
    assert {"400", "415"} <= set(openapi["paths"]["/recommend"]["post"]["responses"])


def test_the_built_bento_serves_the_model_it_packaged(bento: dict, store: dict) -> None:
    # a newer model in the store must not replace the one the Bento was built with
    newer = import_bundle(store["bundle"], labels={"stage": "newer"})
    assert newer != store["tag"]
    extra = {"BENTOML_HOME": str(store["home"])}
    with bentoml_serve(
        bento["tag"], cwd=store["tmp"], log=store["tmp"] / "serve-bento.log", extra_env=extra
    ) as c:
        info = post(c, "/model_info", {}).json()
        assert info["model"] == store["tag"] and info["labels"]["stage"] == "test"
        r = post(c, "/recommend", {"history": HISTORY, "k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        assert post(c, "/recommend", {"history": HISTORY, "k": 0}).status_code == 400
        built_doc = c.get("/docs.json").json()
        assert (
            built_doc["paths"]
            == yaml.safe_load((bento_dir(bento["tag"]) / "apis/openapi.yaml").read_text())["paths"]
        )
