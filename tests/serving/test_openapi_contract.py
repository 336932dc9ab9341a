"""The OpenAPI document the service publishes tells the truth: ``schemathesis run --checks all`` against the
served service (the serving tier's ``client`` fixture: a tiny bundle, ``bentoml serve``) finds nothing but
the semantic rejections listed below, which the document itself names.

Schemathesis's checks (``--checks all``) include: no 5xx; every status code and body documented
(``status_code_conformance``, ``response_schema_conformance``, ``content_type_conformance``); schema-invalid
bodies refused (``negative_data_rejection``); schema-valid bodies accepted (``positive_data_acceptance``).
The last one cannot hold for the checks that need the served catalogue (an id it does not have, ``k``
larger than it): no static schema can state them, so they are documented 400s instead and allowed here by
their error ``type``, per operation, and nothing else is. The run is the exact command docs/serving.md
gives (a fixed seed, at most ``MAX_EXAMPLES`` generated requests per operation and phase: about 25 s on a
2-core machine); its ND-JSON report is read back case by case.

``test_a_document_that_lies_fails_the_check`` runs the same check against copies of the document with the
400 answers or the ``additionalProperties: false`` removed, and expects it to fail: the check can fail.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from m6rec.serving.schemas import SEMANTIC_REJECTIONS
from m6rec.serving.service import SEMANTIC_400, M6Rec

pytestmark = pytest.mark.slow

SEED = 20251201
MAX_EXAMPLES = 50
RUN_TIMEOUT_S = 300  # a hang guard; the run takes well under a minute
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")

# The only failures allowed: schema-valid bodies a catalogue check refuses, as HTTP 400 whose every
# ``detail[].type`` is one of these (per operation). Keep in step with docs/serving.md ("API contract").
ALLOWED_SEMANTIC_400: dict[str, set[str]] = {
    "POST /recommend": {"unknown_item", "k_too_large"},
    "POST /rank": {"unknown_item"},
    "POST /explain": {"unknown_item", "no_language_model"},
    "POST /similar_items": {"unknown_item", "k_too_large"},
    "POST /chat": {"unknown_item", "k_too_large"},
}
POST_OPERATIONS = {f"POST {api.route}" for api in M6Rec.apis.values()}
ERROR_STATUSES = {"400", "415", "429", "500", "504"}  # every operation; 503 too when batchable


@dataclass(frozen=True)
class Failure:
    operation: str
    check: str
    status: int | None
    body: Any

    @property
    def semantic(self) -> bool:
        """A documented semantic rejection: positive data refused with a 400 made only of allowed types."""
        allowed = ALLOWED_SEMANTIC_400.get(self.operation, set())
        detail = self.body.get("detail") if isinstance(self.body, dict) else None
        return (
            self.check == "positive_data_acceptance"
            and self.status == 400
            and bool(detail)
            and all(isinstance(d, dict) and d.get("type") in allowed for d in detail)
        )


@dataclass
class Report:
    returncode: int
    output: str
    cases: Counter  # generated requests per operation
    statuses: Counter  # (operation, status code) -> responses
    failures: list[Failure]
    errors: list[str]  # schemathesis errors (a schema it could not read, a request that failed, ...)


def run_schemathesis(location: str, base_url: str, report_dir: Path, *extra: str) -> Report:
    """``schemathesis run LOCATION --checks all`` with this module's seed and bounds; ``location`` is the
    document's URL or a file (then ``--url base_url``)."""
    ndjson = report_dir / "schemathesis.ndjson"
    cmd = [
        str(SCHEMATHESIS),
        "run",
        location,
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--continue-on-failure",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(ndjson),
        *extra,
    ]
    if not location.startswith("http"):
        cmd += ["--url", base_url]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=report_dir)
    output = proc.stdout + proc.stderr
    assert ndjson.exists(), f"schemathesis wrote no report (exit {proc.returncode}):\n{output[-4000:]}"
    report = Report(proc.returncode, output, Counter(), Counter(), [], [])
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        [(kind, data)] = event.items()
        if "Error" in kind:
            report.errors.append(json.dumps(data)[:2000])
        if kind != "ScenarioFinished" or "checks" not in data["recorder"]:
            continue
        if data["status"] == "error":
            report.errors.append(json.dumps(data)[:2000])
        recorder = data["recorder"]
        operation = recorder["label"]
        report.cases[operation] += len(recorder["cases"])
        for interaction in recorder["interactions"].values():
            if interaction.get("response"):
                report.statuses[operation, interaction["response"]["status_code"]] += 1
        for case_id, checks in recorder["checks"].items():
            response = (recorder["interactions"].get(case_id) or {}).get("response") or {}
            content = response.get("content") or {}
            raw = base64.b64decode(content["$base64"]) if "$base64" in content else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            report.failures += [
                Failure(operation, check["name"], response.get("status_code"), body)
                for check in checks
                if check["status"] == "failure"
            ]
    return report


@pytest.fixture(scope="module")
def openapi_doc(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/docs.json")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def served_report(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return run_schemathesis(
        f"{client.base_url}/docs.json", str(client.base_url), tmp_path_factory.mktemp("schemathesis")
    )


def test_the_allow_list_is_what_the_service_documents(openapi_doc: dict[str, Any]) -> None:
    """The list above, the service's SEMANTIC_400 and the published document say the same thing."""
    assert {
        f"POST /{name}": set(kinds) for name, kinds in SEMANTIC_400.items() if kinds
    } == ALLOWED_SEMANTIC_400
    assert set().union(*ALLOWED_SEMANTIC_400.values()) == set(SEMANTIC_REJECTIONS)
    for operation in POST_OPERATIONS:
        post = openapi_doc["paths"][operation.removeprefix("POST ")]["post"]
        for kind in ALLOWED_SEMANTIC_400.get(operation, ()):
            assert f"`{kind}`" in post["responses"]["400"]["description"], (operation, kind)
            assert f"`{kind}`" in post["description"], (operation, kind)


def test_every_answer_is_documented_with_its_body(openapi_doc: dict[str, Any]) -> None:
    schemas = openapi_doc["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for operation in POST_OPERATIONS:
        route = operation.removeprefix("POST ")
        post = openapi_doc["paths"][route]["post"]
        batchable = any(api.batchable for api in M6Rec.apis.values() if api.route == route)
        assert set(post["responses"]) == {"200"} | ERROR_STATUSES | ({"503"} if batchable else set())
        for status in ("400", "415"):
            assert post["responses"][status]["content"]["application/json"]["schema"] == error_ref
    detail = schemas["ErrorDetail"]
    assert set(detail["required"]) == {"type", "loc", "msg"} and detail["additionalProperties"] is False
    # strict request models are closed; /recommend states its "history or query" rule
    for name in ("RecommendRequest", "RankRequest", "ExplainRequest", "SimilarItemsRequest", "HistoryItem"):
        assert schemas[name]["additionalProperties"] is False, name
    assert {"required": ["query"], "properties": {"query": {"type": "string"}}} in schemas[
        "RecommendRequest"
    ]["anyOf"]


def test_schemathesis_finds_only_the_documented_semantic_rejections(served_report: Report) -> None:
    report = served_report
    assert not report.errors, "\n".join(report.errors[:5]) + "\n" + report.output[-4000:]
    unexpected = [f for f in report.failures if not f.semantic]
    assert not unexpected, (
        "\n".join(
            f"{f.operation} {f.check} -> {f.status}: {json.dumps(f.body)[:500]}" for f in unexpected[:10]
        )
        + f"\n({len(unexpected)} in all)\n{report.output[-4000:]}"
    )
    # every operation really ran and refused bodies, and no 5xx came back. Bodies get through where no
    # catalogue id is needed (a query, an empty input); /rank and /explain need every id to be known, which
    # random ids almost never are (test_service_fuzz.py's catalogue test covers their 200s)
    for operation in POST_OPERATIONS:
        assert report.cases[operation] >= MAX_EXAMPLES, (operation, report.cases)
        assert report.statuses[operation, 400] > 0, (operation, report.statuses)
    for operation in ("POST /recommend", "POST /recommend_batch", "POST /model_info"):
        assert report.statuses[operation, 200] > 0, (operation, report.statuses)
    assert not [key for key in report.statuses if key[1] >= 500], report.statuses
    # the allow-list was needed: random ids are (almost) never in the catalogue
    seen = {f.operation for f in report.failures if f.semantic}
    assert seen >= {"POST /recommend", "POST /rank", "POST /explain", "POST /similar_items"}, seen


def _without_400s(doc: dict[str, Any]) -> None:
    for item in doc["paths"].values():
        for op in item.values():
            op["responses"].pop("400", None)


def _open_models(doc: dict[str, Any]) -> None:
    for schema in doc["components"]["schemas"].values():
        schema.pop("additionalProperties", None)


@pytest.mark.parametrize(
    ("mutate", "check"),
    [(_without_400s, "status_code_conformance"), (_open_models, "positive_data_acceptance")],
    ids=["no 400 answers", "no additionalProperties false"],
)
def test_a_document_that_lies_fails_the_check(
    client: httpx.Client, openapi_doc: dict[str, Any], tmp_path: Path, mutate, check: str
) -> None:
    doc = copy.deepcopy(openapi_doc)
    mutate(doc)
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc))
    report = run_schemathesis(str(path), str(client.base_url), tmp_path, "--include-path", "/similar_items")
    unexpected = [f for f in report.failures if not f.semantic]
    assert any(f.check == check for f in unexpected), (
        [(f.check, f.status) for f in report.failures],
        report.output[-3000:],
    )
