"""The pipeline's ArtifactStore resource: keys stay inside its folder, every write is atomic."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.defs.resources import ArtifactStore


def test_write_read_replace_remove(tmp_path: Path) -> None:
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    store.write("candidate/evaluation.json", '{"validation": {"auc": 0.5}}')
    assert store.read_json("candidate/evaluation.json") == {"validation": {"auc": 0.5}}
    with store.replace("champion") as tmp:
        tmp.mkdir()
        (tmp / "manifest.json").write_text("{}")
    assert store.exists("champion/manifest.json") and store.path("champion").is_dir()
    with pytest.raises(RuntimeError), store.replace("champion") as tmp:
        tmp.mkdir()
        raise RuntimeError("killed mid-copy")
    assert store.read_text("champion/manifest.json") == "{}"  # the previous champion stays whole
    store.remove("champion")
    store.remove("never-written")
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["candidate"]


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "candidate/../../outside"])
def test_keys_cannot_leave_the_store(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="relative path inside the store"):
        ArtifactStore(root=str(tmp_path)).path(key)
