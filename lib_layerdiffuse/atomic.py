"""Writing a file so that it is either all there or not there: a batch run or an export stopped
at any point leaves no half-written file under the real name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .weights.integrity import sha256_file

TEMP_SUFFIX = ".part"

__all__ = ["TEMP_SUFFIX", "sha256_file", "write_atomic"]


def write_atomic(path: Path, write: Callable[[Path], None]) -> str:
    """Write `path` through `write(temporary path)`, then rename it into place; returns its SHA-256."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        write(temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(temp, progress=False)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    return digest
