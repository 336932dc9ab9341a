"""Atomic writes: whatever is stored stays whole when a run dies half-way."""

from __future__ import annotations

import shutil
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
