"""The batch manifest: one JSON line per finished item, written as each item finishes, and the
files it names written atomically, so a run stopped at any point loses at most the item in
flight and a rerun knows what is done.

An item counts as done when its last record says so and every file it lists is there with the
recorded SHA-256; anything else (no record, a missing or changed file) is made again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..atomic import TEMP_SUFFIX, sha256_file

NAME = "manifest.jsonl"


class Manifest:
    """The records of one output folder, read once and appended to as items finish."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / NAME
        self.records: dict[str, dict] = {}
        self.unreadable = 0  # lines that were cut off or damaged (a crash while appending)
        self._cut_off = False  # the last line has no newline: the next record starts a new one
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            self._cut_off = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    self.records[record["key"]] = record
                except (ValueError, KeyError, TypeError):
                    self.unreadable += 1

    def remove_partial_files(self) -> int:
        """Delete temporary files a stopped run left behind; returns how many."""
        leftovers = list(self.folder.glob(f"*{TEMP_SUFFIX}")) if self.folder.is_dir() else []
        for path in leftovers:
            path.unlink()
        return len(leftovers)

    def done(self, key: str) -> Optional[dict]:
        """The record of `key` when the item is finished and its files are intact."""
        record = self.records.get(key)
        if record is None or record.get("status") != "done":
            return None
        for entry in record.get("files", []):
            path = self.folder / entry["name"]
            if not path.is_file() or sha256_file(path, progress=False) != entry["sha256"]:
                return None
        return record

    def append(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if self._cut_off else "") + json.dumps(record, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._cut_off = False
        self.records[record["key"]] = record
