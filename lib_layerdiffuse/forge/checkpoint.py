"""The family of the user's checkpoint, found without loading anything.

Current Forge and Forge Neo load a checkpoint only at the next generation (choosing one in the
dropdown only records it), and early Forge's `shared.sd_model` loads one when read. So the
selected checkpoint's file is looked at first (its safetensors header: names and shapes, no
weights), then the model the WebUI has already loaded (read without triggering a load).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

from ..engine.family import family_of_checkpoint_file, family_of_forge_model
from ..methods import Family

_by_file: dict[tuple[str, float], Optional[Family]] = {}


def selected_title() -> str:
    """The checkpoint chosen in the WebUI (its title), or ""."""
    opts = getattr(sys.modules.get("modules.shared"), "opts", None)
    data = getattr(opts, "data", None)
    return str(data.get("sd_model_checkpoint") or "") if isinstance(data, dict) else ""


def checkpoint_file(title: str) -> Optional[Path]:
    """The file of the checkpoint with this title, or None."""
    sd_models = sys.modules.get("modules.sd_models")
    find = getattr(sd_models, "get_closet_checkpoint_match", None)
    if not title or find is None:
        return None
    try:
        info = find(title)
    except Exception:
        return None
    filename = getattr(info, "filename", None)
    return Path(filename) if filename else None


def loaded_model() -> Any:
    """The model the WebUI has loaded, or None (current Forge and Neo hold a placeholder until
    the first generation; early Forge None). Never loads one."""
    model = getattr(getattr(sys.modules.get("modules.sd_models"), "model_data", None), "sd_model", None)
    if model is None or type(model).__name__ == "FakeInitialModel":
        return None
    return model


def family_of_file(path: Path) -> Optional[Family]:
    """The family of a checkpoint file (cached by path and modification time); None when it is
    none of ours (SD3, a GGUF file, an unreadable file)."""
    try:
        key = (str(path), os.path.getmtime(path))
    except OSError:
        return None
    if key not in _by_file:
        try:
            _by_file[key] = family_of_checkpoint_file(path)
        except Exception:  # another model family, GGUF, a damaged file: not ours to judge here
            _by_file[key] = None
    return _by_file[key]


def family_of_loaded() -> Optional[Family]:
    model = loaded_model()
    try:
        return family_of_forge_model(model.forge_objects.unet.model.diffusion_model) if model is not None else None
    except Exception:
        return None


def checkpoint_family(title: Optional[str] = None) -> Optional[Family]:
    """The family of the checkpoint `title`; without a title, of the selected checkpoint, else of
    the loaded model. None when they do not tell."""
    path = checkpoint_file(selected_title() if title is None else title)
    family = family_of_file(path) if path is not None else None
    return family if family is not None or title is not None else family_of_loaded()
