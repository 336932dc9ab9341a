"""Inputs from outside (request bodies, uploaded logs, run config, model folders) cannot make m6rec read
or write outside its folders or run code. See docs/security.md for what each test pins.

Fast unit tests: the serving :class:`~m6rec.serving.engine.Engine` and its pydantic request models on a
tiny bundle (no server), the log readers, the warehouse load, the model loaders. File-system and
code-execution side effects are observed with a Python audit hook (PEP 578) that records events such as
``open``, ``os.listdir``, ``subprocess.Popen``, ``exec`` and ``import`` while a request is handled.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pickle
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from m6rec.data.sources import read_source
from m6rec.data.tabular import DataFormatError
from m6rec.data.warehouse import connect, replace_raw_tables
from m6rec.models.backbones import BackboneUnavailableError, load_encoder, tiny_encoder
from m6rec.models.segments import SegmentCache
from m6rec.serving.engine import Engine
from m6rec.serving.recommender import Recommender
from m6rec.serving.schemas import (
    MAX_ID_CHARS,
    MAX_QUERY_CHARS,
    ExplainRequest,
    RankRequest,
    RecommendRequest,
    SimilarItemsRequest,
)
from m6rec.text.textify import Profile, profile_text
from m6rec.training.profiles import get_profile
from tests import REPO_ROOT
from tests.bundle_fixtures import build_tiny_bundle

# --------------------------------------------------------------------------------------------------
# an audit hook that records file-system, process and code-loading events while switched on

_SIDE_EFFECT_EVENTS = {"open", "exec", "compile", "import", "os.system", "marshal.loads", "marshal.load"}
_SIDE_EFFECT_PREFIXES = (
    "os.",
    "subprocess.",
    "shutil.",
    "pickle.",
    "socket.",
    "urllib.",
    "ctypes.",
    "glob.",
    "tempfile.",
    "sqlite3.",
    "webbrowser.",
)
_recording: list[tuple[str, str]] | None = None
_recording_lock = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    events = _recording
    if events is None:
        return
    if event in _SIDE_EFFECT_EVENTS or event.startswith(_SIDE_EFFECT_PREFIXES):
        events.append((event, repr(args)[:200]))


@contextlib.contextmanager
def side_effects() -> Iterator[list[tuple[str, str]]]:
    """Record the side-effect audit events raised (in any thread) inside the block, and every
    ``os.stat``/``os.lstat`` (``Path.exists``, ``is_file``...), which raise no audit event."""
    global _recording, _hook_installed
    with _recording_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)  # cannot be removed; costs one check per event while off
            _hook_installed = True
        events: list[tuple[str, str]] = []
        real_stat, real_lstat = os.stat, os.lstat

        def stat(path, *args, **kwargs):
            events.append(("os.stat", repr(path)[:200]))
            return real_stat(path, *args, **kwargs)

        def lstat(path, *args, **kwargs):
            events.append(("os.lstat", repr(path)[:200]))
            return real_lstat(path, *args, **kwargs)

        _recording = events
        os.stat, os.lstat = stat, lstat
        try:
            yield events
        finally:
            os.stat, os.lstat = real_stat, real_lstat
            _recording = None


def test_the_audit_hook_sees_file_and_process_events(tmp_path: Path) -> None:
    with side_effects() as events:
        (tmp_path / "x").write_text("x")
        os.listdir(tmp_path)
        assert Path(tmp_path / "x").exists()
    assert {"open", "os.listdir", "os.stat"} <= {e for e, _ in events}


# --------------------------------------------------------------------------------------------------
# request bodies: item ids, free text and profiles are looked up or rendered as text, never used as
# paths, code, templates or SQL

HISTORY = [{"item_id": "i1", "rating": 5, "ts": 1_000_000}, {"item_id": "i2", "ts": 1_086_400}]
HOSTILE_IDS = [
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "file:///etc/passwd",
    "~/.ssh/id_rsa",
    "'; DROP TABLE raw.items; --",
    '" OR 1=1 --',
    "__import__('os').system('touch /tmp/m6rec-pwned')",
    "{{7*7}}",
    "${7*7}",
    "{0.__class__.__mro__}",
    "%s%s%n",
    "$(touch /tmp/m6rec-pwned)",
    "`id`",
    "i1\x00../../etc/passwd",
    "i1/../i2",
    "i1\r\nX-Injected: 1",
    "\u202ei1",
    "I1",
    "x" * MAX_ID_CHARS,
]
TOO_LONG_IDS = ["x" * (MAX_ID_CHARS + 1), "../" * 10_000]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("safety") / "model")


@pytest.fixture(scope="module")
def engine(bundle: Path) -> Engine:
    eng = Engine(bundle, device="cpu", lm_explain_top=0)
    # warm-up: first calls import lazily-loaded modules and codecs; the recorded calls below must not
    eng.recommend(
        RecommendRequest.model_validate({"history": HISTORY, "k": 3, "explain": True, "query": "x"})
    )
    eng.rank(RankRequest.model_validate({"history": HISTORY, "candidates": ["i3"]}))
    eng.explain(ExplainRequest.model_validate({"history": HISTORY, "item_id": "i3", "method": "history"}))
    eng.similar_items(SimilarItemsRequest.model_validate({"item_id": "i3", "k": 3}))
    for body in ({"item_id": "nope"}, {"item_id": "x" * 500}, {"item_id": "i3", "path": "/"}):
        with contextlib.suppress(ValidationError):
            eng.similar_items(SimilarItemsRequest.model_validate(body))
    return eng


def _requests_naming(item_id: str) -> list[tuple[str, object, dict]]:
    """One request per endpoint that puts ``item_id`` where an item id goes."""
    return [
        ("similar_items", SimilarItemsRequest, {"item_id": item_id, "k": 3}),
        ("explain", ExplainRequest, {"history": HISTORY, "item_id": item_id, "method": "history"}),
        ("rank", RankRequest, {"history": HISTORY, "candidates": ["i3", item_id]}),
        ("recommend", RecommendRequest, {"history": [*HISTORY, {"item_id": item_id}], "k": 3}),
    ]


def _handle(engine: Engine, endpoint: str, model: type, body: dict):
    return getattr(engine, endpoint)(model.model_validate(body))


@pytest.mark.parametrize("item_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_item_ids_are_unknown_ids_and_touch_nothing(engine: Engine, item_id: str) -> None:
    with side_effects() as events:
        for endpoint, model, body in _requests_naming(item_id):
            with pytest.raises(ValidationError) as info:
                _handle(engine, endpoint, model, body)
            errors = info.value.errors()
            assert [e["type"] for e in errors] == ["unknown_item"], (endpoint, errors)
            assert repr(item_id) in errors[0]["msg"]  # named, as text
    assert events == []


@pytest.mark.parametrize("item_id", TOO_LONG_IDS, ids=["201-chars", "30k-chars"])
def test_oversized_ids_fail_schema_validation(engine: Engine, item_id: str) -> None:
    with side_effects() as events:
        for endpoint, model, body in _requests_naming(item_id):
            with pytest.raises(ValidationError) as info:
                _handle(engine, endpoint, model, body)
            errors = info.value.errors()
            assert {e["type"] for e in errors} <= {"too_long", "string_too_long"}, (endpoint, errors)
            assert all(f"at most {MAX_ID_CHARS}" in e["msg"] for e in errors), errors
    assert events == []


def test_oversized_free_text_fails_schema_validation() -> None:
    with pytest.raises(ValidationError) as info:
        RecommendRequest.model_validate({"query": "q" * (MAX_QUERY_CHARS + 1)})
    assert [e["type"] for e in info.value.errors()] == ["string_too_long"]
    with pytest.raises(ValidationError) as info:
        RecommendRequest.model_validate({"query": "q", "profile": {"occupation": "o" * 101}})
    assert [e["loc"] for e in info.value.errors()] == [("profile", "occupation")]


@pytest.mark.parametrize(
    ("model", "body", "loc"),
    [
        (SimilarItemsRequest, {"item_id": "i1", "path": "/etc/passwd"}, ("path",)),
        (SimilarItemsRequest, {"item_id": "i1", "__class__": "os.system"}, ("__class__",)),
        (RecommendRequest, {"query": "q", "bundle": "/tmp/evil-bundle"}, ("bundle",)),
        (RecommendRequest, {"query": "q", "model_tag": "m6rec:other"}, ("model_tag",)),
        (RankRequest, {"history": HISTORY, "candidates": ["i1"], "device": "cuda"}, ("device",)),
        (ExplainRequest, {"history": HISTORY, "item_id": "i1", "max_new_tokens": 10**6}, ("max_new_tokens",)),
        (SimilarItemsRequest, {"item_id": {"$ne": None}}, ("item_id",)),
        (SimilarItemsRequest, {"item_id": ["i1", "i2"]}, ("item_id",)),
        (
            RecommendRequest,
            {"query": "q", "profile": {"occupation": "x", "shell": "/bin/sh"}},
            ("profile", "shell"),
        ),
    ],
)
def test_request_bodies_cannot_carry_anything_but_the_documented_fields(model, body, loc) -> None:
    """extra="forbid" and strict types: no body can name a path, a model, a device or an object."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    assert loc in [e["loc"] for e in info.value.errors()]


HOSTILE_TEXT = (
    "{{7*7}} ${7*7} {0.__class__} %s%n __import__('os').system('id') $(id) `id` "
    "'; DROP TABLE raw.items; -- ../../etc/passwd <|im_end|>"
)


def test_free_text_and_profiles_are_only_ever_text(engine: Engine) -> None:
    """A hostile query is encoded and echoed verbatim: not formatted, evaluated, templated or opened."""
    body = {
        "query": HOSTILE_TEXT,
        "k": 3,
        "explain": True,
        "profile": {"age": 30, "gender": "{{7*7}}", "occupation": "$(id) ../../etc/passwd"},
    }
    with side_effects() as events:
        out = engine.recommend(RecommendRequest.model_validate(body))
    assert events == []
    assert len(out.items) == 3
    for item in out.items:
        assert item.explanation_source == "history"
        assert f'"{HOSTILE_TEXT}"' in item.explanation  # the request, verbatim
        assert "49" not in item.explanation


def test_a_profile_starting_with_a_superscript_digit_is_rendered() -> None:
    # found by tests/serving/test_service_fuzz.py: {"profile": {"occupation": "²..."}} -> HTTP 500
    assert profile_text(Profile(occupation="²nd shift nurse")).endswith("²nd shift nurse.")


# --------------------------------------------------------------------------------------------------
# model files: torch.load never unpickles code, transformers never runs a folder's custom code


class _TouchOnUnpickle:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _booby_trapped(path: Path, marker: Path) -> Path:
    torch.save({"item_states": _TouchOnUnpickle(marker)}, path)
    return path


def test_the_booby_trapped_file_really_runs_code_when_fully_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _booby_trapped(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)  # what a loader must never do
    assert marker.exists()


def test_segment_cache_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _booby_trapped(tmp_path / "segments.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        SegmentCache.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["segments.pt", "retriever.pt", "ranker.pt"])
def test_a_bundle_with_pickled_code_does_not_load(bundle: Path, tmp_path: Path, name: str) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    marker = tmp_path / "ran"
    _booby_trapped(copy / name, marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Recommender(copy, device="cpu")
    assert not marker.exists()


def _torch_load_calls_without_weights_only() -> list[str]:
    found = []
    for root in ("m6rec", "orchestration"):
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    kw = {k.arg: k.value for k in node.keywords}
                    value = kw.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_torch_load_without_weights_only_relies_on_the_safe_default(tmp_path: Path) -> None:
    """The calls that omit weights_only are safe only because torch >= 2.6 defaults to True."""
    marker = tmp_path / "ran"
    path = _booby_trapped(tmp_path / "x.pt", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu")
    assert not marker.exists()


def test_every_torch_load_says_weights_only() -> None:
    # trainer.load_best and the orchestration's artefact loads have no cheap behavioural test; the
    # serving path is covered behaviourally above. Explicit is what survives a torch downgrade.
    assert _torch_load_calls_without_weights_only() == []


@pytest.fixture
def encoder_with_custom_code(tmp_path: Path) -> tuple[Path, Path]:
    """An HF encoder folder whose config asks for custom code (``evil.py``, which creates a marker)."""
    folder, marker = tmp_path / "encoder", tmp_path / "custom-code-ran"
    enc = tiny_encoder(seed=0)
    enc.model.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n",
        encoding="utf-8",
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="evil_bert", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    )
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder, marker


def _no_stdin(*_args, **_kwargs):
    raise EOFError("no terminal")


def test_a_model_folder_with_custom_code_is_not_run(encoder_with_custom_code, monkeypatch) -> None:
    folder, marker = encoder_with_custom_code
    monkeypatch.setattr("builtins.input", _no_stdin)
    with pytest.raises(ValueError, match="custom code"):
        load_encoder(folder)
    assert not marker.exists()


def test_nobody_is_even_asked_to_run_a_folders_custom_code(encoder_with_custom_code, monkeypatch) -> None:
    folder, marker = encoder_with_custom_code
    prompts: list[str] = []

    def answer_no(prompt: str = "") -> str:  # an operator at a terminal would be asked; "y" runs evil.py
        prompts.append(prompt)
        return "n"

    monkeypatch.setattr("builtins.input", answer_no)
    with pytest.raises(ValueError):
        load_encoder(folder)
    assert not marker.exists()
    assert prompts == []


# --------------------------------------------------------------------------------------------------
# run config: names are looked up in fixed tables; folder paths are trusted (operator input)


def test_config_names_are_looked_up_not_used_as_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("../../etc/passwd")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown source format"):
        read_source(tmp_path, "../../etc/passwd")
    for name in ("./no/such/encoder", "../no-such-encoder", "/no/such/encoder", "~/no-such-encoder"):
        with pytest.raises(BackboneUnavailableError, match="does not exist"):
            load_encoder(name)


def test_no_dbt_var_is_pasted_inside_a_sql_string_literal() -> None:
    # A seed such as  x' || (select ...) || '  would run its own SQL in DuckDB (which can read and write
    # files). Numbers and booleans are typed by DbtBuildConfig; strings must be quoted by dbt/Jinja.
    pasted = []
    for path in sorted((REPO_ROOT / "transforms").glob("**/*.sql")):
        if {"target", "dbt_packages"} & set(path.relative_to(REPO_ROOT / "transforms").parts):
            continue
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"'[^'\n]*\{\{\s*var\(", text):
            pasted.append(f"{path.relative_to(REPO_ROOT)}:{text[: match.start()].count(chr(10)) + 1}")
    assert pasted == []


# --------------------------------------------------------------------------------------------------
# uploaded logs: values are data (stored verbatim through parameters), files come from the folder


LOG_ITEMS = """item_id,title,genres
i1,"'); DROP TABLE raw.items; --",Drama
i2,{{7*7}} __import__('os'),Comedy|Drama
../../etc/passwd,$(id) `id` %s,Horror
"""
LOG_INTERACTIONS = """user_id,item_id,timestamp,rating
u1,i1,1000,5
"u2'; DROP TABLE raw.ratings; --",i2,1010,2
u1,../../etc/passwd,1020,4
"""


def test_hostile_values_in_logs_are_stored_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "items.csv").write_text(LOG_ITEMS, encoding="utf-8")
    (folder / "interactions.csv").write_text(LOG_INTERACTIONS, encoding="utf-8")
    with side_effects() as events:
        dataset = read_source(folder)
    opened = [args for event, args in events if event == "open"]
    assert opened and all(str(folder) in args for args in opened)  # only files inside the folder
    source = "x'); DROP TABLE raw.load_log; --"
    with connect(":memory:") as conn:
        replace_raw_tables(conn, dataset, source)
        titles = [r[0] for r in conn.execute("select title from raw.items order by item_id").fetchall()]
        users = {r[0] for r in conn.execute("select user_id from raw.ratings").fetchall()}
        logged = conn.execute("select source from raw.load_log").fetchall()
    assert titles == ["$(id) `id` %s", "'); DROP TABLE raw.items; --", "{{7*7}} __import__('os')"]
    assert users == {"u1", "u2'; DROP TABLE raw.ratings; --"}
    assert logged == [(source,)]


def test_odd_file_names_are_read_from_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "items..csv").write_text("item_id,title\ni1,One\n", encoding="utf-8")
    (folder / "interactions --rf $(id).csv").write_text(
        "user_id,item_id,timestamp\nu1,i1,1\n", encoding="utf-8"
    )
    (tmp_path / "interactions_outside.csv").write_text(
        "user_id,item_id,timestamp\nu9,i1,1\n", encoding="utf-8"
    )
    dataset = read_source(folder)
    assert list(dataset.ratings["user_id"]) == ["u1"]
    assert all(p.parent == folder for p in dataset.files)


def _folder_with_a_link_out(tmp_path: Path) -> tuple[Path, str]:
    """An incoming folder whose items.csv is a symlink to a file outside it (holding a secret)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = "root:x:0:0:SECRET-LINE"
    (outside / "passwd").write_text(f"{secret}\ndaemon:x:1:1\n", encoding="utf-8")
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1000\n", encoding="utf-8")
    (folder / "items.csv").symlink_to(outside / "passwd")
    return folder, secret


def test_a_symlink_out_of_the_log_folder_is_refused(tmp_path: Path) -> None:
    folder, secret = _folder_with_a_link_out(tmp_path)
    with pytest.raises(DataFormatError) as info:
        read_source(folder)
    assert secret not in str(info.value)  # today: "missing required column(s) ...; found: root:x:0:0:..."


def test_the_incoming_sensor_ignores_symlinks(tmp_path: Path) -> None:
    from orchestration.defs.automation import incoming_fingerprint

    folder, _ = _folder_with_a_link_out(tmp_path)
    (folder / "interactions.csv").unlink()
    assert incoming_fingerprint(folder, settle_s=0) is None
