"""Where the weight files live.

First match wins: an explicit folder; `LAYERDIFFUSE_MODELS_DIR`; inside Forge the
`--layerdiffuse-models-dir` flag, then the folder in Settings -> LayerDiffuse, else
`<webui>/models/layer_model/` (where the reference extension keeps them, so its users download
nothing twice); else this project's `models/`.

Forge is detected only through modules the host has already imported, never by importing
`modules` ourselves (outside Forge that name can belong to anything).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

ENV_VAR = "LAYERDIFFUSE_MODELS_DIR"
FORGE_FLAG = "layerdiffuse_models_dir"
FORGE_SETTING = "layerdiffuse_models_dir"  # the same name in Forge's settings (shared.opts)
PROJECT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class ModelsDir:
    """A resolved weight folder and the rule that chose it (shown to users)."""

    path: Path
    source: str


def forge_models_root() -> Optional[Path]:
    """The running Forge's `models/` folder, or None outside Forge."""
    paths = sys.modules.get("modules.paths")
    models_path = getattr(paths, "models_path", None)
    return Path(models_path) if models_path else None


def _forge_models_dir() -> Optional[ModelsDir]:
    shared = sys.modules.get("modules.shared")
    cmd_opts = getattr(shared, "cmd_opts", None)
    flag = getattr(cmd_opts, FORGE_FLAG, None)
    if flag:
        return ModelsDir(Path(flag).expanduser(), "Forge flag --layerdiffuse-models-dir")
    data = getattr(getattr(shared, "opts", None), "data", None)
    setting = str(data.get(FORGE_SETTING) or "").strip() if isinstance(data, dict) else ""
    if setting:
        return ModelsDir(Path(setting).expanduser(), "Forge setting LayerDiffuse -> weights folder")
    root = forge_models_root()
    if root is not None:
        return ModelsDir(root / "layer_model", "Forge models/layer_model")
    return None


def resolve_models_dir(explicit: Union[str, os.PathLike, None] = None) -> ModelsDir:
    """The folder to read weights from and download them to (not created here)."""
    if explicit:
        return ModelsDir(Path(explicit).expanduser(), "explicit folder")
    env = os.environ.get(ENV_VAR)
    if env:
        return ModelsDir(Path(env).expanduser(), f"environment variable {ENV_VAR}")
    forge = _forge_models_dir()
    if forge is not None:
        return forge
    return ModelsDir(PROJECT_MODELS_DIR, "project models/ folder")
