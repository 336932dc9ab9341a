"""Atomic writes: whatever is stored stays whole when a run dies half-way.

One way to write anything that must never be seen half-written: build it under a temporary name beside
its final path, then swap it in with a rename (:func:`staged`, :func:`write_atomic`,
:func:`replace_folder`). Every artefact m6rec writes goes through here: bundles, checkpoints, segment
caches, token rankers, the pipeline's artefact store.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_folder(tmp: Path, final: Path) -> None:
    """Swap the fully written folder ``tmp`` into ``final``; the previous one is removed only after
    the new one is in place (a stale ``<final>.old`` from a killed swap is cleared first)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def staged(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``final``; write a file or a folder there. When the block ends
    without an error it replaces ``final`` in one rename (a folder through :func:`replace_folder`);
    when it raises, the temporary file or folder is removed and ``final`` is left as it was.

    The temporary name is unique (``<name>.tmp-<random>``), so two writers never share one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        if tmp.is_dir():
            replace_folder(tmp, final)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with staged(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)
