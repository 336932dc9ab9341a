"""Packaging: a model bundle -> the BentoML model store -> a Bento (``bentoml build``).

* :func:`import_bundle` copies a bundle folder (written by :func:`m6rec.serving.bundle.save_bundle`, plus
  any model card / evaluation files the pipeline put beside the artefacts) into the BentoML model store
  as ``m6rec:<version>``; the model's metadata holds the manifest's metrics and a summary of the bundle.
* :func:`build_bento` runs ``bentoml build`` on the repository's ``bentofile.yaml`` in a subprocess
  (so the service module is imported fresh, with ``$M6REC_MODEL_TAG`` naming the model to package) and
  returns the Bento tag. ``bentofile.yaml`` sets ``lock_packages: false``, so nothing is resolved
  against a package index: the build works offline.
* :func:`bento_contents` lists what a Bento ships: its own files (``src/``, ``env/docker/Dockerfile``,
  ``bento.yaml``, ...) and the files of the models it references (``models/<name>/<version>/...``, as
  ``bentoml export`` and ``bentoml containerize`` lay them out — BentoML keeps them in the model store,
  not inside the Bento folder).

Everything honours ``$BENTOML_HOME`` (the store lives there; default ``~/bentoml``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REQUIRED_BUNDLE_FILES = (
    "manifest.json",
    "items.parquet",
    "segments.pt",
    "retriever.pt",
    "ranker.pt",
    "encoder",
)
RESERVED_NAMES = ("model.yaml",)  # BentoML's own file in a model folder
MODEL_TAG_ENV = "M6REC_MODEL_TAG"  # the model the service loads and `bentoml build` packages
DEFAULT_MODEL_TAG = "m6rec:latest"


class BundleError(ValueError):
    """The folder is not a complete m6rec bundle."""


def _bentoml() -> Any:
    """``import bentoml``, with its stores pointed at the current ``$BENTOML_HOME``.

    BentoML resolves ``$BENTOML_HOME`` once per process (cached providers), so a process that changes
    the variable later (tests with a temporary home, a pipeline run with its own store) would keep
    using the first one; here the providers are re-pointed when the variable no longer matches."""
    import bentoml
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    wanted = os.environ.get("BENTOML_HOME") or os.path.join(os.path.expanduser("~"), "bentoml")
    home = os.path.realpath(os.path.expanduser(wanted))
    if os.path.realpath(BentoMLContainer.bentoml_home.get()) == home:
        return bentoml
    dirs = {sub: os.path.join(home, sub) for sub in ("bentos", "models", "envs", "tmp")}
    for folder in dirs.values():
        os.makedirs(folder, exist_ok=True)
    container = BentoMLContainer
    container.bentoml_home.set(home)
    container.bento_store_dir.set(dirs["bentos"])
    container.model_store_dir.set(dirs["models"])
    container.env_store_dir.set(dirs["envs"])
    container.tmp_bento_store_dir.set(dirs["tmp"])
    container.bento_store.set(BentoStore(dirs["bentos"]))
    container.model_store.set(ModelStore(dirs["models"]))
    container.tmp_bento_store.set(BentoStore(dirs["tmp"]))
    return bentoml


def _clean_metadata(value: Any) -> Any:
    """BentoML metadata takes str/int/float/bool (and dicts/lists of them), never None."""
    if isinstance(value, Mapping):
        return {str(k): _clean_metadata(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean_metadata(v) for v in value if v is not None]
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # numpy scalars
        return _clean_metadata(value.item())
    return str(value)


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's ``manifest.json``, after checking that every required artefact is present."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"{bundle} is not a folder")
    missing = [name for name in REQUIRED_BUNDLE_FILES if not (bundle / name).exists()]
    if missing:
        raise BundleError(f"{bundle} is not an m6rec bundle: missing {', '.join(missing)}")
    clashes = [name for name in RESERVED_NAMES if (bundle / name).exists()]
    if clashes:
        raise BundleError(f"{bundle} holds {', '.join(clashes)}, a name BentoML reserves in a model folder")
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def import_bundle(
    bundle_dir: str | Path,
    name: str = "m6rec",
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Copy the whole bundle folder into the BentoML model store as a new version of ``name`` and
    return its tag (``"m6rec:<version>"``).

    Model metadata: ``metrics`` (the manifest's metrics) and ``bundle`` (format, creation time,
    encoder, item count, explainer), then ``metadata`` on top. Labels: ``encoder``, ``explainer``,
    ``bundle_format``, then ``labels`` on top. Every file in the bundle is kept (model card,
    evaluation summary, plots)."""
    bentoml = _bentoml()
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    meta: dict[str, Any] = {
        "metrics": manifest.get("metrics") or {},
        "bundle": {
            "format": manifest.get("format"),
            "created_at": manifest.get("created_at"),
            "encoder": manifest.get("encoder"),
            "n_items": manifest.get("n_items"),
            "explainer": bool(manifest.get("explainer")),
            "files": sorted(p.name for p in bundle.iterdir()),
        },
    }
    meta.update(metadata or {})
    all_labels = {
        "encoder": str(manifest.get("encoder", "")),
        "explainer": str(bool(manifest.get("explainer"))).lower(),
        "bundle_format": str(manifest.get("format", "")),
    }
    all_labels.update({str(k): str(v) for k, v in (labels or {}).items()})
    with bentoml.models.create(name, labels=all_labels, metadata=_clean_metadata(meta)) as model:
        shutil.copytree(bundle, model.path, dirs_exist_ok=True)
    return str(model.tag)


def build_bento(
    project_dir: str | Path,
    model_tag: str,
    version: str | None = None,
    *,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> str:
    """``bentoml build`` of ``project_dir/bentofile.yaml`` packaging the model ``model_tag`` (e.g.
    ``"m6rec:latest"`` or ``"m6rec:abc123"``); returns the Bento tag (``"m6rec:<version>"``).

    Runs the BentoML CLI of this interpreter in a subprocess, with the current ``$BENTOML_HOME``,
    ``HF_HUB_OFFLINE=1`` and ``$M6REC_MODEL_TAG`` set to the resolved tag (the service reads it when
    its module is imported), on a temporary copy of ``bentofile.yaml`` whose ``models`` entry for that
    model is the resolved tag — so the Bento ships exactly this version and no other. Raises
    ``RuntimeError`` with BentoML's output when the build fails."""
    bentoml = _bentoml()
    project = Path(project_dir).resolve()
    if not (project / "bentofile.yaml").is_file():
        raise FileNotFoundError(f"{project} has no bentofile.yaml")
    resolved = str(bentoml.models.get(model_tag).tag)  # fail early, naming the model, if it is missing
    config = yaml.safe_load((project / "bentofile.yaml").read_text(encoding="utf-8")) or {}
    model_name = resolved.split(":", 1)[0]
    others = [m for m in config.get("models") or [] if _model_name(m) != model_name]
    config["models"] = [*others, resolved]
    with tempfile.TemporaryDirectory(prefix="m6rec-bentofile-") as tmp:
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "bentoml",
            "build",
            str(project),
            "-f",
            str(bentofile),
            "--output",
            "tag",
        ]
        if version:
            cmd += ["--version", version]
        child_env = {**os.environ, MODEL_TAG_ENV: resolved, "HF_HUB_OFFLINE": "1", **(env or {})}
        # the venv's bin first, so BentoML finds `uv` when it needs it
        child_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{child_env.get('PATH', '')}"
        proc = subprocess.run(
            cmd, cwd=project, env=child_env, capture_output=True, text=True, timeout=timeout, check=False
        )
    match = re.search(r"__tag__:(\S+)", proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(
            f"bentoml build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return match.group(1)


def bento_dir(tag: str) -> Path:
    """The folder of a Bento in the store (``$BENTOML_HOME/bentos/<name>/<version>``)."""
    return Path(_bentoml().get(tag).path)


def _model_name(spec: Any) -> str:
    tag = spec.get("tag", "") if isinstance(spec, Mapping) else str(spec)
    return tag.split(":", 1)[0]


def bento_contents(tag: str) -> list[str]:
    """Every file a Bento ships, as sorted relative paths: the Bento folder's own files (``bento.yaml``,
    ``src/...``, ``env/docker/Dockerfile``, ``env/python/requirements.txt``, ``apis/openapi.yaml``, ...)
    and, under ``models/<name>/<version>/``, the files of each model it references."""
    bentoml = _bentoml()
    bento = bentoml.get(tag)
    root = Path(bento.path)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for info in bento.info.all_models:
        model = bentoml.models.get(info.tag)
        model_root = Path(model.path)
        prefix = f"models/{info.tag.name}/{info.tag.version}"
        files.update(
            f"{prefix}/{p.relative_to(model_root).as_posix()}" for p in model_root.rglob("*") if p.is_file()
        )
    return sorted(files)
