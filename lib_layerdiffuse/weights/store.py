"""The weight folder: what is there, what is verified, and getting what is missing."""

from __future__ import annotations

import enum
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Union

if TYPE_CHECKING:  # torch is imported by safetensors when a file is loaded, not on import
    import torch

from .catalog import CATALOG, WeightFile
from .download import download_file, manual_install_hint, part_path
from .errors import WeightIntegrityError, WeightMissingError
from .integrity import HashCache, RecordedHashes, layout_sha256, safetensors_layout
from .loading import load_safetensors
from .location import ModelsDir, resolve_models_dir

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"
UNPINNED_ENV = "LAYERDIFFUSE_ALLOW_UNPINNED"
UNPINNED_FLAG = "layerdiffuse_allow_unpinned"  # Forge: --layerdiffuse-allow-unpinned (preload.py)


def unpinned_allowed() -> bool:
    """Whether the user allowed layer files that are not the official ones: the environment
    variable, or inside Forge its command-line flag (read from modules Forge has imported)."""
    if os.environ.get(UNPINNED_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    cmd_opts = getattr(sys.modules.get("modules.shared"), "cmd_opts", None)
    return bool(getattr(cmd_opts, UNPINNED_FLAG, False))


class State(str, enum.Enum):
    MISSING = "missing"
    PARTIAL = "partial download"
    PRESENT = "present (not verified yet)"
    VERIFIED = "verified"
    UNPINNED = "unpinned, allowed"  # not the official bytes, the official layout, and allowed by the user
    RECORDED = "verified (recorded hash)"  # no published hash: the one recorded at download or conversion
    NOT_OFFICIAL = "not the official file"
    CORRUPT = "corrupt"


USABLE = (State.VERIFIED, State.UNPINNED, State.RECORDED)  # states of a file that is loaded


@dataclass(frozen=True)
class FileStatus:
    entry: WeightFile
    path: Path
    state: State
    detail: str = ""


class WeightStore:
    """The official weight files in one folder (see `location.resolve_models_dir`).

    `ensure(name)` returns the path of a verified file, downloading it if needed; `load(name)`
    returns its tensors. A file whose hash is wrong is never loaded, with one exception the
    user opts into (`allow_unpinned`, default `unpinned_allowed()`): a safetensors file with
    exactly the official keys and shapes (a converted, fine-tuned or mirrored copy) is used,
    its SHA-256 logged and listed in `unpinned`. `catalog` defaults to the official files;
    tests pass entries pinning their own small files.
    """

    def __init__(self, models_dir: Union[str, os.PathLike, ModelsDir, None] = None, *,
                 allow_download: bool = True, progress: bool = True,
                 catalog: Optional[Mapping[str, WeightFile]] = None, allow_unpinned: Optional[bool] = None):
        self.catalog = dict(catalog if catalog is not None else CATALOG)
        self.location = models_dir if isinstance(models_dir, ModelsDir) else resolve_models_dir(models_dir)
        self.allow_download = allow_download
        self.progress = progress
        self.allow_unpinned = unpinned_allowed() if allow_unpinned is None else allow_unpinned
        self.unpinned: dict[str, str] = {}  # name -> SHA-256 of the unpinned file in use
        self._hashes: Optional[HashCache] = None
        self._recorded: Optional[RecordedHashes] = None

    @property
    def folder(self) -> Path:
        return self.location.path

    @property
    def hashes(self) -> HashCache:
        if self._hashes is None:
            self._hashes = HashCache(self.folder)
        return self._hashes

    @property
    def recorded(self) -> RecordedHashes:
        if self._recorded is None:
            self._recorded = RecordedHashes(self.folder)
        return self._recorded

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
        if not entry.pinned:
            return self._status_unpublished(entry, path, digest)
        if digest == entry.sha256:
            return FileStatus(entry, path, State.VERIFIED)
        hashes = f"SHA-256 {digest}, expected {entry.sha256}"
        layout = safetensors_layout(path)
        if layout is None:
            return FileStatus(entry, path, State.CORRUPT, f"{hashes}; not a readable safetensors file")
        if not entry.layout_sha256:
            return FileStatus(entry, path, State.NOT_OFFICIAL, hashes)
        if layout_sha256(layout) == entry.layout_sha256:
            state = State.UNPINNED if self.allow_unpinned else State.NOT_OFFICIAL
            return FileStatus(entry, path, state, f"{hashes}; its keys and shapes are the official ones")
        return FileStatus(entry, path, State.NOT_OFFICIAL, f"{hashes}; its keys or shapes differ from the official file")

    def _status_unpublished(self, entry: WeightFile, path: Path, digest: str) -> FileStatus:
        """A file with no published hash: its layout must be ours (where one is set) and its hash
        the one recorded for it; a file first seen here (copied in by hand) is recorded now."""
        recorded = self.recorded.get(entry.name)
        if recorded is not None and recorded != digest:
            return FileStatus(entry, path, State.NOT_OFFICIAL,
                              f"SHA-256 {digest}, but {recorded} was recorded when it was {self._made(entry)}; "
                              "it has changed since")
        if entry.layout_sha256:
            layout = safetensors_layout(path)
            if layout is None:
                return FileStatus(entry, path, State.CORRUPT, f"SHA-256 {digest}; not a readable safetensors file")
            if layout_sha256(layout) != entry.layout_sha256:
                return FileStatus(entry, path, State.NOT_OFFICIAL,
                                  f"SHA-256 {digest}; its keys or shapes are not those of the {entry.family.label} "
                                  f"{entry.role} network")
        if recorded is None:
            self.recorded.put(entry.name, digest)
            log.info("recorded SHA-256 %s for %s (no official hash is published)", digest, path)
        return FileStatus(entry, path, State.RECORDED, f"SHA-256 {digest}")

    @staticmethod
    def _made(entry: WeightFile) -> str:
        return f"converted from {entry.converted_from}" if entry.converted_from else "downloaded"

    def statuses(self, names: Optional[Iterable[str]] = None, verify: bool = False) -> list[FileStatus]:
        return [self.status(n, verify) for n in (names if names is not None else self.catalog)]

    def ensure(self, name: str) -> Path:
        """Path of the verified file, downloading it first when missing (if allowed).

        A file that is not a readable safetensors file is renamed to `<name>.corrupt` (kept for
        inspection, never loaded) and downloaded again; with downloads off it raises
        WeightIntegrityError. A readable file with another hash is someone's own file: it is
        never replaced; it is used when unpinned files are allowed and its layout is the official
        one, and otherwise refused with both hashes and what to do.
        """
        entry = self.entry(name)
        st = self.status(name, verify=True)
        if st.state is State.VERIFIED:
            return st.path
        if st.state is State.RECORDED:
            return st.path
        if st.state is State.UNPINNED:
            digest = self.hashes.get(st.path) or ""
            if self.unpinned.get(name) != digest:
                log.warning("using %s, which is not the official file (unpinned files are allowed): %s",
                            st.path, st.detail)
                self.unpinned[name] = digest
            return st.path
        if st.state is State.NOT_OFFICIAL:
            raise WeightIntegrityError(self._not_official(st))
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
        elif entry.converted_from:
            raise WeightMissingError(self._not_converted(entry))
        elif not self.allow_download:
            raise WeightMissingError(
                f"LayerDiffuse weight file {entry.name} is missing from {self.folder} "
                f"(chosen by: {self.location.source}) and downloading is switched off. "
                f"{manual_install_hint(entry.url, st.path)}")
        digest = download_file(entry.url, st.path, entry.sha256 or None, entry.approx_size, progress=self.progress)
        self.hashes.put(st.path, digest)
        if not entry.pinned:
            self.recorded.put(entry.name, digest)
        return st.path

    def _not_converted(self, entry: WeightFile) -> str:
        source = self.folder / entry.converted_from
        where = f"{source} is here" if source.is_file() else f"download it from {entry.url} to {source}"
        return (f"{entry.name} is missing from {self.folder}. It is made once from the {entry.family.label} "
                f"release's {entry.converted_from} (a pickle, which is never loaded as it is): {where}, then "
                f"run `python -m lib_layerdiffuse convert {source}` (or `python -m lib_layerdiffuse convert "
                "--download`, which also fetches it).")

    def _not_official(self, st: FileStatus) -> str:
        text = f"{st.path} is not the official {st.entry.name} ({st.detail})."
        if "official ones" in st.detail:
            return (f"{text} If it is a copy you trust (converted to fp16/fp8, fine-tuned, mirrored), allow "
                    f"it with {UNPINNED_ENV}=1 (in Forge: --layerdiffuse-allow-unpinned). Otherwise delete it "
                    f"and the official file is downloaded. {manual_install_hint(st.entry.url, st.path)}")
        return (f"{text} It cannot stand in for the official file even when unpinned files are allowed. "
                f"Delete or move it; the official file is then downloaded. "
                f"{manual_install_hint(st.entry.url, st.path)}")

    def load(self, name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors of a verified official file (downloaded first if needed)."""
        return load_safetensors(self.ensure(name), device=device)
