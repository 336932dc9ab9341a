"""Packaging: the champion bundle into the BentoML model store and a built Bento, ready to serve."""

import json
import os
import time

import dagster as dg

from orchestration import settings
from orchestration.defs.resources import ArtifactStore
from orchestration.stages import BENTO_RECORD, CHAMPION, MODEL_ASSETS


# In the `duckdb` pool although it never opens the warehouse: it reads the champion that another run's
# promoted_model (also in the pool) may be replacing, and two runs at once must not build a Bento from
# one champion while recording another.
@dg.asset(group_name="packaging", deps=[MODEL_ASSETS["promoted_model"]], pool="duckdb", kinds={"bentoml"})
def bento(context: dg.AssetExecutionContext, artifacts: ArtifactStore) -> dg.MaterializeResult:
    """`bentoml build` of the champion (service code, model bundle, model card, evaluation summary, a
    generated Dockerfile). When the champion did not change, the Bento already built for it stays."""
    os.environ["BENTOML_HOME"] = str(settings.bentoml_home())  # read by the BentoML store and CLI
    from m6rec.serving.packaging import bento_contents, bento_dir, build_bento, import_bundle

    manifest = artifacts.read_json(f"{CHAMPION}/manifest.json")
    previous = artifacts.read_json(BENTO_RECORD) if artifacts.exists(BENTO_RECORD) else {}
    if previous.get("champion_created_at") == manifest["created_at"]:
        try:
            bento_dir(previous["bento_tag"])
            context.log.info(f"champion unchanged: {previous['bento_tag']} stays current")
            return dg.MaterializeResult(metadata={**previous, "rebuilt": False})
        except Exception:  # the store was wiped: build again
            pass
    start = time.perf_counter()
    model_tag = import_bundle(artifacts.path(CHAMPION), labels={"profile": str(manifest.get("profile", ""))})
    bento_tag = build_bento(settings.REPO_ROOT, model_tag)
    path = bento_dir(bento_tag)
    model_dir = settings.bentoml_home() / "models" / model_tag.replace(":", "/")
    size = sum(f.stat().st_size for d in (path, model_dir) for f in d.rglob("*") if f.is_file())
    record = {
        "bento_tag": bento_tag,
        "model_tag": model_tag,
        "champion_created_at": manifest["created_at"],
        "bento_path": str(path),
        "bentoml_home": str(settings.bentoml_home()),
    }
    artifacts.write(BENTO_RECORD, json.dumps(record))
    files = bento_contents(bento_tag)
    return dg.MaterializeResult(
        metadata={
            **record,
            "rebuilt": True,
            "size_mb_with_model": round(size / 2**20, 1),
            "build_seconds": round(time.perf_counter() - start, 1),
            "files": len(files),
            "serve_command": f"BENTOML_HOME={settings.bentoml_home()} bentoml serve {bento_tag}",
            "contents": dg.MetadataValue.md("\n".join(f"- `{f}`" for f in files[:200])),
        }
    )
