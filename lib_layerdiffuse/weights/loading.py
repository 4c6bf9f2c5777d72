"""Reading weight files: safetensors only, never pickle, with readable errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # torch is imported by safetensors when a file is loaded, not on import
    import torch

from .errors import WeightFormatError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def load_safetensors(path: Union[str, Path], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a .safetensors file.

    Anything that is not a complete safetensors file (a pickle, a truncated download, an HTML
    error page saved under the right name) raises WeightFormatError naming the file and the fix.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightFormatError(
            f"Refusing to load {path}: only .safetensors files are loaded, because pickle-based "
            "files can run arbitrary code. Use the official .safetensors release of this file.")
    if not path.is_file():
        raise WeightFormatError(f"Weight file {path} does not exist or is not a file.")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightFormatError(
            f"{path} is not a readable safetensors file ({exc}). It is probably truncated or "
            "corrupt: delete it and download it again.") from None
