"""SHA-256 of weight files, remembered per (path, size, mtime) so multi-GB files are hashed once."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence

from tqdm.auto import tqdm

CACHE_FILE_NAME = ".layerdiffuse-hashes.json"
RECORDED_FILE_NAME = ".layerdiffuse-recorded.json"
_CHUNK = 8 * 1024 * 1024
_PROGRESS_FROM = 64 * 1024 * 1024


def sha256_file(path: Path, progress: bool = True) -> str:
    """Hash a file in chunks; files over 64 MB show a progress bar."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"Verifying {path.name}",
        disable=not progress or size < _PROGRESS_FROM, leave=False,
    ) as bar:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class HashCache:
    """Hashes of the files in one folder, stored beside them in a small JSON file.

    An entry is valid only while the file keeps the size and modification time it had when it
    was hashed. If the folder is read-only the cache still works for this process.
    """

    def __init__(self, folder: Path):
        self.file = folder / CACHE_FILE_NAME
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = _read_json(self.file)

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def get(self, path: Path) -> Optional[str]:
        entry = self._entries.get(path.name)
        if not isinstance(entry, dict):
            return None
        try:
            size, mtime = self._stamp(path)
        except OSError:
            return None
        if entry.get("size") == size and entry.get("mtime_ns") == mtime:
            value = entry.get("sha256")
            return value if isinstance(value, str) else None
        return None

    def put(self, path: Path, sha256: str, stamp: Optional[tuple[int, int]] = None) -> None:
        """Remember `sha256` for `path` as it is now (or as it was at `stamp`)."""
        size, mtime = stamp if stamp is not None else self._stamp(path)
        with self._lock:
            self._entries[path.name] = {"size": size, "mtime_ns": mtime, "sha256": sha256}
            _write_json(self.file, self._entries)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._entries.pop(path.name, None)

    def sha256(self, path: Path, progress: bool = True) -> str:
        """The file's hash, from the cache when the file is unchanged, else computed and stored."""
        cached = self.get(path)
        if cached is not None:
            return cached
        stamp = self._stamp(path)
        digest = sha256_file(path, progress=progress)
        self.put(path, digest, stamp)
        return digest


class RecordedHashes:
    """SHA-256 of the files that have no published hash (the Flux files), recorded by name when
    they were downloaded or converted, so later changes to them are found. Kept beside them in
    `RECORDED_FILE_NAME`; a read-only folder keeps them for this process only."""

    def __init__(self, folder: Path):
        self.file = folder / RECORDED_FILE_NAME
        self._lock = threading.Lock()
        self._entries: dict[str, str] = {k: v for k, v in _read_json(self.file).items() if isinstance(v, str)}

    def get(self, name: str) -> Optional[str]:
        return self._entries.get(name)

    def put(self, name: str, sha256: str) -> None:
        with self._lock:
            self._entries[name] = sha256
            _write_json(self.file, self._entries)


def _read_json(file: Path) -> dict:
    """The JSON object in `file`, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(file: Path, data: dict) -> None:
    """Replace `file` atomically with `data` as JSON; a read-only folder leaves it as it was."""
    tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, file)
    except OSError:
        tmp.unlink(missing_ok=True)


def layout_sha256(shapes: Mapping[str, Sequence[int]]) -> str:
    """SHA-256 of a state dict's layout: every key with its shape, sorted, dtype left out (so a
    file converted to fp16 or fp8 has the layout of the original)."""
    lines = "".join(f"{key} {','.join(str(int(n)) for n in shape)}\n" for key, shape in sorted(shapes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def safetensors_layout(path: Path) -> Optional[dict[str, tuple[int, ...]]]:
    """{key: shape} from a safetensors file's header (no tensor is read), or None when the file
    does not start with a readable safetensors header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return None
            size = int.from_bytes(head, "little")
            if size <= 0 or size > min(path.stat().st_size - 8, 100 * 1024 * 1024):
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    try:
        return {k: tuple(int(n) for n in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (TypeError, KeyError, ValueError):
        return None
