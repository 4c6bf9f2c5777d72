"""The weight folder: what is there, what is verified, and getting what is missing."""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Union

if TYPE_CHECKING:  # torch is imported by safetensors when a file is loaded, not on import
    import torch

from .catalog import CATALOG, WeightFile
from .download import download_file, manual_install_hint, part_path
from .errors import WeightIntegrityError, WeightMissingError
from .integrity import HashCache
from .loading import load_safetensors
from .location import ModelsDir, resolve_models_dir

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"


class State(str, enum.Enum):
    MISSING = "missing"
    PARTIAL = "partial download"
    PRESENT = "present (not verified yet)"
    VERIFIED = "verified"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class FileStatus:
    entry: WeightFile
    path: Path
    state: State
    detail: str = ""


class WeightStore:
    """The official weight files in one folder (see `location.resolve_models_dir`).

    `ensure(name)` returns the path of a verified file, downloading it if needed; `load(name)`
    returns its tensors. A file whose hash is wrong is never loaded. `catalog` defaults to the
    official files; tests pass entries pinning their own small files.
    """

    def __init__(self, models_dir: Union[str, os.PathLike, ModelsDir, None] = None, *,
                 allow_download: bool = True, progress: bool = True,
                 catalog: Optional[Mapping[str, WeightFile]] = None):
        self.catalog = dict(catalog if catalog is not None else CATALOG)
        self.location = models_dir if isinstance(models_dir, ModelsDir) else resolve_models_dir(models_dir)
        self.allow_download = allow_download
        self.progress = progress
        self._hashes: Optional[HashCache] = None

    @property
    def folder(self) -> Path:
        return self.location.path

    @property
    def hashes(self) -> HashCache:
        if self._hashes is None:
            self._hashes = HashCache(self.folder)
        return self._hashes

    def entry(self, name: str) -> WeightFile:
        """The catalog entry for `name`, or a ValueError listing the known files."""
        try:
            return self.catalog[name]
        except KeyError:
            known = ", ".join(self.catalog)
            raise ValueError(f"{name!r} is not a LayerDiffuse weight file; known files: {known}") from None

    def path(self, name: str) -> Path:
        return self.folder / self.entry(name).name

    def status(self, name: str, verify: bool = False) -> FileStatus:
        """State of one file. Without `verify` only a cached hash is consulted (no hashing)."""
        entry = self.entry(name)
        path = self.folder / entry.name
        if not path.is_file():
            part = part_path(path)
            if part.is_file():
                return FileStatus(entry, path, State.PARTIAL,
                                  f"{part.stat().st_size / 1e6:.0f} MB of about {entry.approx_size / 1e6:.0f} MB")
            return FileStatus(entry, path, State.MISSING)
        digest = self.hashes.sha256(path, self.progress) if verify else self.hashes.get(path)
        if digest is None:
            return FileStatus(entry, path, State.PRESENT)
        if digest == entry.sha256:
            return FileStatus(entry, path, State.VERIFIED)
        return FileStatus(entry, path, State.CORRUPT, f"SHA-256 {digest}, expected {entry.sha256}")

    def statuses(self, names: Optional[Iterable[str]] = None, verify: bool = False) -> list[FileStatus]:
        return [self.status(n, verify) for n in (names if names is not None else self.catalog)]

    def ensure(self, name: str) -> Path:
        """Path of the verified file, downloading it first when missing (if allowed).

        A present file with the wrong hash is renamed to `<name>.corrupt` (kept for inspection,
        never loaded) and downloaded again; with downloads off it raises WeightIntegrityError.
        """
        entry = self.entry(name)
        st = self.status(name, verify=True)
        if st.state is State.VERIFIED:
            return st.path
        if st.state is State.CORRUPT:
            if not self.allow_download:
                raise WeightIntegrityError(
                    f"{st.path} is corrupt: {st.detail}. Delete it and let it download again "
                    f"(downloading is switched off now). {manual_install_hint(entry.url, st.path)}")
            aside = st.path.with_name(st.path.name + CORRUPT_SUFFIX)
            os.replace(st.path, aside)
            self.hashes.forget(st.path)
            log.warning("%s failed verification (%s); moved to %s and downloading again",
                        st.path.name, st.detail, aside)
        elif not self.allow_download:
            raise WeightMissingError(
                f"LayerDiffuse weight file {entry.name} is missing from {self.folder} "
                f"(chosen by: {self.location.source}) and downloading is switched off. "
                f"{manual_install_hint(entry.url, st.path)}")
        download_file(entry.url, st.path, entry.sha256, entry.approx_size, progress=self.progress)
        self.hashes.put(st.path, entry.sha256)
        return st.path

    def load(self, name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors of a verified official file (downloaded first if needed)."""
        return load_safetensors(self.ensure(name), device=device)
