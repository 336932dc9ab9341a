"""Atomic writes (m6rec.files): a replaced file or folder is whole or absent, never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from m6rec.files import staged, write_atomic


def test_write_atomic_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_staged_swaps_a_whole_folder_in(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    for version in ("1", "2"):
        with staged(target) as tmp:
            tmp.mkdir()
            (tmp / "manifest.json").write_text(version)
    assert (target / "manifest.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_failed_write_keeps_the_previous_version(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "artefact"
    if kind == "file":
        write_atomic(target, "old")
    else:
        target.mkdir()
    with pytest.raises(RuntimeError), staged(target) as tmp:
        if kind == "file":
            tmp.write_text("half")
        else:
            tmp.mkdir()
            (tmp / "part").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target.read_text() == "old") if kind == "file" else not any(target.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]
