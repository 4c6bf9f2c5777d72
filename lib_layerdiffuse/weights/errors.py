"""Errors about weight files; each message says which file, where, and how to fix it."""

from __future__ import annotations


class WeightError(RuntimeError):
    """Base class: something is wrong with a LayerDiffuse weight file."""


class WeightMissingError(WeightError):
    """The file is not on disk and downloading is switched off."""


class WeightDownloadError(WeightError):
    """The file could not be downloaded (offline, host unreachable, HTTP error)."""


class WeightIntegrityError(WeightError):
    """The file's SHA-256 is not the pinned one."""


class WeightFormatError(WeightError):
    """The file is not a readable safetensors file (truncated, garbage, or a pickle)."""
