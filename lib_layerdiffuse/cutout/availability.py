"""Which cutout models can run here, now: installed, downloaded, or downloadable.

The app's dropdown labels and the default model of the app and the `cutout` command come from
here, so a machine without network (or without rembg) starts on a model that works
(`weight-free`) instead of failing its first cutout on a download. The download host is asked
once, quickly (`reachability.probe`), and only when some model is missing.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ..reachability import Reach, probe
from .models import (
    DEFAULT_MODEL,
    LOCAL_FILE,
    RELEASE_URL,
    REMBG_MODELS,
    WEIGHT_FREE,
    local_name,
    model_choices,
    model_label,
)
from .rembg_backend import downloaded_model_file, model_target, models_home, not_downloadable


@dataclass(frozen=True)
class Availability:
    """One model here: `usable` (present, or can be downloaded now), with the file's path
    (where it is, or where it goes) and, when it is not usable, why in plain words."""

    model: str
    usable: bool
    state: str  # "no download", "downloaded", "downloads on first use", "not downloaded", "not installed",
    #             "in the models folder", "an ONNX file of yours", "not found"
    path: Optional[Path] = None
    reason: str = ""


class CutoutModels:
    """What each cutout model needs on this machine, for one models folder and download policy."""

    def __init__(self, folder: Union[str, os.PathLike, None] = None, allow_download: bool = True,
                 reach: Optional[Callable[[str], Reach]] = None):
        self.folder = models_home(folder)
        self.allow_download = allow_download
        self._reach = reach
        self._answer: Optional[Reach] = None

    def _download_host(self) -> Reach:
        if self._answer is None:
            self._answer = (self._reach or probe)(RELEASE_URL)
        return self._answer

    @staticmethod
    def packages_missing(needed: tuple[str, ...] = ("onnxruntime", "rembg")) -> Optional[str]:
        absent = [name for name in needed if importlib.util.find_spec(name) is None]
        if not absent:
            return None
        return f"{' and '.join(absent)} not installed (pip install -e \".[cutout]\")"

    def of(self, model: str) -> Availability:
        if model == WEIGHT_FREE:
            return Availability(model, True, "no download")
        local = model == LOCAL_FILE or bool(local_name(model))
        missing = self.packages_missing(("onnxruntime",) if local else ("onnxruntime", "rembg"))
        if missing:
            return Availability(model, False, "not installed", reason=missing)
        if model == LOCAL_FILE:
            return Availability(model, True, "an ONNX file of yours")
        if local:
            path = self.folder / local_name(model)
            if path.is_file():
                return Availability(model, True, "in the models folder", path)
            return Availability(model, False, "not found", path, f"{path.name} is not in the cutout models folder "
                                                                f"{self.folder}")
        present = downloaded_model_file(model, self.folder)
        if present is not None:
            return Availability(model, True, "downloaded", present)
        target = model_target(model, self.folder)
        if not self.allow_download:
            return Availability(model, False, "not downloaded", target,
                                not_downloadable(model, target, "downloads are off"))
        host = self._download_host()
        if not host.ok:
            return Availability(model, False, "not downloaded", target,
                                not_downloadable(model, target, f"{host.host} cannot be reached: {host.reason}"))
        return Availability(model, True, "downloads on first use", target)

    def default(self) -> tuple[str, str]:
        """(the default model, a note when it is not the usual one and why)."""
        found = self.of(DEFAULT_MODEL)
        if found.usable:
            return DEFAULT_MODEL, ""
        return WEIGHT_FREE, f"using the weight-free cutout: {found.reason}"

    def label(self, model: str) -> str:
        """`model · its state`, e.g. "isnet-general-use · downloaded" (for dropdowns)."""
        found = self.of(model)
        size = f", {REMBG_MODELS[model].approx_mb} MB" if model in REMBG_MODELS and found.state != "downloaded" else ""
        if found.state == "not downloaded":
            state = "not downloaded, no download here" if self.allow_download else "not downloaded (offline)"
        else:
            state = found.state
        return f"{model} · {state}{size}"

    def describe(self, model: str) -> str:
        """Markdown under the dropdown: what the model is, and whether and where it is here."""
        found = self.of(model)
        where = f" `{found.path}`" if found.path is not None else ""
        if found.state == "downloaded":
            state = f"Downloaded:{where}."
        elif found.state == "downloads on first use":
            state = f"Not downloaded yet: it downloads on first use to{where}."
        elif found.state == "in the models folder":
            state = f"Found:{where}."
        elif found.reason:
            state = found.reason[0].upper() + found.reason[1:] + "."
        else:
            state = ""
        return f"{model_label(model)}. {state}".strip()

    def choices(self, include_local_file: bool = True) -> list[tuple[str, str]]:
        """(label, value) for every model: MODEL_CHOICES, with the ONNX files found in the models
        folder before "local file"."""
        return [(self.label(m), m) for m in model_choices(self.folder) if include_local_file or m != LOCAL_FILE]
