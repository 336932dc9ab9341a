"""Property-based fuzzing of the live BentoML service against the OpenAPI schema it publishes.

The server comes from the serving tier's ``store`` and ``client`` fixtures (``tests/serving/conftest.py``:
a tiny bundle in a temporary BentoML store, ``bentoml serve`` on a free localhost port). The schema is read
from the running server (``/docs.json``) and handed to Schemathesis, which generates requests for every
``POST`` operation with Hypothesis, deterministically (``derandomize``) and with a bounded number of examples:

* ``test_fuzz_live_schema``: the schema as served, schema-valid and schema-violating bodies (Schemathesis's
  positive and negative generation modes). Random item ids are almost never in the catalogue, so this
  mostly exercises validation: no request may cause a 5xx, every schema-violating body must be refused
  with a 4xx, and every 4xx must carry the service's error shape
  (``{"error": str, "detail": [{"loc", "msg", "type"}, ...]}``).
* ``test_fuzz_catalogue_ids``: a copy of the schema with item ids narrowed to the catalogue's and ``k``
  below its size, valid bodies only, so the models really run (recommend with explanations, batches, rank,
  explain, similar items): still no 5xx, and every response must match the schema the service publishes.

The service publishes its real 4xx bodies (``ErrorBody``), so responses are checked against the schema
whatever their status; ``_error_shape`` restates the contract by hand as well. test_openapi_contract.py
runs Schemathesis's CLI with ``--checks all`` on the same document. Only localhost traffic; bounded
examples and timeouts.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pandas as pd
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from m6rec.serving.service import M6Rec
from tests.serving import REQUEST_TIMEOUT_S, post

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 50  # per operation and generation mode
ROUTES = sorted(api.route for api in M6Rec.apis.values())  # every endpoint the service defines
ID_ROUTES = [r for r in ROUTES if r != "/model_info"]  # the endpoints that take item ids


def _config(base_url: str) -> schemathesis.Config:
    """Where to send the requests; generation is set by ``FUZZ_SETTINGS`` (Hypothesis) below."""
    return schemathesis.Config.from_dict({"base-url": base_url, "request-timeout": REQUEST_TIMEOUT_S})


@pytest.fixture(scope="module")
def openapi_doc(client: httpx.Client) -> dict[str, Any]:
    """The OpenAPI document the running server publishes."""
    r = client.get("/docs.json")
    assert r.status_code == 200, r.text
    doc = r.json()
    posts = {path for path, ops in doc["paths"].items() if "post" in ops}
    assert posts == set(ROUTES), "the published schema and the service's endpoints differ"
    return doc


@pytest.fixture(scope="module")
def catalogue_ids(store: dict) -> list[str]:
    return sorted(pd.read_parquet(Path(store["bundle"]) / "items.parquet")["item_id"].astype(str))


@pytest.fixture(scope="module")
def http() -> requests.Session:
    """Schemathesis sends with requests; never through a proxy from the environment."""
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


@pytest.fixture(scope="module")
def live_schema(openapi_doc: dict, client: httpx.Client):
    schema = schemathesis.openapi.from_dict(openapi_doc, config=_config(str(client.base_url)))
    return schema.include(method="POST")


def _narrow_ids(node: Any, ids: list[str]) -> None:
    """In place: every item-id schema (an ``item_id`` property, the ``candidates`` items; a string or a
    whole number in requests) becomes an enum of the catalogue's ids, and ``k`` stays below the
    catalogue's size."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name, sub in props.items():
                if name == "item_id":
                    props[name] = {"type": "string", "enum": ids}
                elif name == "candidates" and isinstance(sub.get("items"), dict):
                    sub["items"] = {"type": "string", "enum": ids}
                elif name == "k" and sub.get("type") == "integer":
                    sub["maximum"] = len(ids) - 1  # similar_items: the rest of the catalogue
        for value in node.values():
            _narrow_ids(value, ids)
    elif isinstance(node, list):
        for value in node:
            _narrow_ids(value, ids)


@pytest.fixture(scope="module")
def catalogue_schema(openapi_doc: dict, catalogue_ids: list[str], client: httpx.Client):
    doc = copy.deepcopy(openapi_doc)
    _narrow_ids(doc, catalogue_ids)
    assert json.dumps(doc).count('"enum": ["i') >= 5, "item-id schemas not found in the published schema"
    schema = schemathesis.openapi.from_dict(doc, config=_config(str(client.base_url)))
    return schema.include(method="POST")


# --------------------------------------------------------------------------------------------------
# checks beyond Schemathesis's built-ins


def _error_shape(ctx, response, case) -> None:
    """A 4xx is the service's error body: an ``error`` message and the list of problems (pydantic's
    ``loc``/``msg``/``type``), whatever the published schema says."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    detail = body.get("detail")
    assert isinstance(detail, list) and detail, body
    assert all(isinstance(d, dict) and {"loc", "msg", "type"} <= set(d) for d in detail), body
    return None


LIVE_CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    _error_shape,
]
CATALOGUE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    _error_shape,
]
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same requests on every run
    database=None,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    print_blob=False,
)


def _fuzz(schema, route: str, mode: GenerationMode, session: requests.Session, checks: list) -> Counter:
    """Send ``MAX_EXAMPLES`` generated requests to one operation, validating each response; returns
    how many responses had each status code."""
    statuses: Counter = Counter()

    @FUZZ_SETTINGS
    @hypothesis.given(case=schema[route]["POST"].as_strategy(mode))
    def run(case) -> None:
        response = case.call(session=session)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks)

    run()
    print(route, mode.value, dict(statuses))
    return statuses


# Schemathesis's own pytest integration for schemas that need a fixture (``schemathesis.pytest.from_fixture``)
# does not work with pytest 9.2 (it sets ``request.node._nodeid``, which pytest 9.2 no longer has), so the
# operations are parametrised here and each one runs as a Hypothesis test over ``APIOperation.as_strategy``.


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("route", ROUTES)
def test_fuzz_live_schema(live_schema, http: requests.Session, route: str, mode: GenerationMode) -> None:
    statuses = _fuzz(live_schema, route, mode, http, LIVE_CHECKS)
    assert statuses.total() >= MAX_EXAMPLES // 2, statuses


@pytest.mark.parametrize("route", ID_ROUTES)
def test_fuzz_catalogue_ids(catalogue_schema, http: requests.Session, route: str) -> None:
    statuses = _fuzz(catalogue_schema, route, GenerationMode.POSITIVE, http, CATALOGUE_CHECKS)
    # The models really ran, not only validation. A /recommend_batch array is refused as a whole when any
    # generated element breaks the schema (e.g. neither history nor query), so fewer arrays get through.
    wanted = MAX_EXAMPLES // 10 if route == "/recommend_batch" else MAX_EXAMPLES // 4
    assert statuses[200] >= wanted, statuses


# --------------------------------------------------------------------------------------------------
# request bodies BentoML must never deserialise with pickle


class _Marker:
    """Unpickling this would create ``path``: proof that the server ran code from a request body."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_bodies_are_refused_and_never_unpickled(
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(str(marker)))
    for route in ROUTES:
        r = client.post(route, content=payload, headers={"Content-Type": "application/vnd.bentoml+pickle"})
        assert 400 <= r.status_code < 500, (route, r.status_code, r.text)
    assert not marker.exists()
    # the marker really is created by unpickling (so the assertion above can fail)
    pickle.loads(payload)
    assert marker.exists()


def test_a_json_body_naming_files_is_only_an_unknown_id(client: httpx.Client) -> None:
    for item in ("../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "__import__('os')", "{{7*7}}"):
        r = post(client, "/similar_items", {"item_id": item, "k": 3})
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert [d["type"] for d in detail] == ["unknown_item"], detail
        assert "root:" not in r.text and "49" not in r.text
