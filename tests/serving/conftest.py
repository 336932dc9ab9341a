"""Fixtures of the serving tier: a temporary BentoML store holding a tiny model, and the service served
from the repository (module-scoped: each test module starts its own server)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from m6rec.serving.packaging import import_bundle
from tests import REPO_ROOT
from tests.bundle_fixtures import build_tiny_bundle
from tests.serving import bentoml_serve


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """$BENTOML_HOME -> a temp folder holding the tiny bundle (with a tiny explainer LM) as m6rec:<v>."""
    root = tmp_path_factory.mktemp("bentoml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(root / "home"))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        mp.setenv("HF_HUB_OFFLINE", "1")
        bundle = build_tiny_bundle(root / "bundle", explainer=True)
        tag = import_bundle(bundle, labels={"stage": "test"})
        yield {"home": root / "home", "tag": tag, "bundle": bundle, "tmp": root}


@pytest.fixture(scope="module")
def client(store: dict) -> Iterator[httpx.Client]:
    """The service served from the repository (``bentoml serve m6rec.serving.service:M6Rec``)."""
    extra = {"BENTOML_HOME": str(store["home"]), "M6REC_MODEL_TAG": store["tag"], "M6REC_LM_EXPLAIN_TOP": "2"}
    with bentoml_serve(
        "m6rec.serving.service:M6Rec", cwd=REPO_ROOT, log=store["tmp"] / "serve.log", extra_env=extra
    ) as c:
        yield c
