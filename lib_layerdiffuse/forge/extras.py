"""The Extras tab's "LayerDiffuse cutout": the panel's cutout as a WebUI postprocessing script.

Extras runs it on a single image, a batch upload and a batch from a directory (also reached
through `POST /layerdiffuse/v1/cutout` with `input_dir`), after the built-in operations (some
of them convert to RGB). The result is the panel's: a transparent PNG, the mask, or the subject
over a colour or an image, with the settings and the model that ran in the PNG text. The
transparent image carries its alpha past current Forge's stealth-infotext writer the way the
panel's results do (`saving.alpha_carrier`), and gets a PNG copy when Extras saves JPEG or WebP.

Forge Neo's "Single Video" mode is left alone (its video writer takes RGB frames only). One
image that cannot be cut out never stops a batch: it is left out of the outputs, named in
the console and in the next image's parameters, and listed for the REST endpoint
(`last_run`). A single image that fails comes back unchanged, with the reason in its parameters.
The WebUI's own `/sdapi/v1/extra-*` API passes None for every argument of extension scripts:
`enable=None` means off.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..cutout.options import CutoutSettings
from ..cutout.result import CutoutResult
from ..images import has_real_alpha
from .job import CUTOUT_ERROR_KEY
from .saving import EXTRAS_ATTRIBUTE, alpha_carrier

NAME = "LayerDiffuse cutout"
ORDER = 20000  # after the built-in operations (GFPGAN, CodeFormer and focal crop convert to RGB)
SKIPPED_KEY = "layerdiffusion_cutout_skipped"


def build_ui() -> dict:
    """The Extras accordion; returns {argument name: component} (the WebUI's convention). A
    failure here would take the whole Extras tab down (the WebUI reads the result as a dict), so
    it is reported and the cutout is left out (no arguments: off)."""
    try:
        return _build_ui()
    except Exception:
        traceback.print_exc()
        _say("the Extras cutout could not be built (see the traceback above); the Extras tab works without it")
        return {}


def _build_ui() -> dict:
    import gradio as gr
    from modules import ui_components  # the WebUI

    from ..cutout.models import DEFAULT_MODEL, model_choices
    from ..cutout.rembg_backend import models_home
    from ..form import cutout_controls
    from .ui import canvas_class, image_input

    canvas = canvas_class()
    with ui_components.InputAccordion(False, label=NAME, elem_id="extras_layerdiffuse_cutout") as enable:
        gr.Markdown("Cuts the subject out of each image with the LayerDiffuse panel's models and edge "
                    "refinement. Images that are transparent already keep their own alpha.")
        controls = cutout_controls(gr, DEFAULT_MODEL, lambda name: f"extras_layerdiffuse_{name}",
                                   lambda label, visible: image_input(gr, label, canvas, visible),
                                   choices=model_choices(models_home()))
    names = CutoutSettings.field_names()[1:]
    return {"enable": enable, **dict(zip(names, controls))}


def cut_out_or_keep(image: Image.Image, settings: CutoutSettings) -> CutoutResult:
    """The cutout of `image`; an image with transparency of its own keeps it (its outputs are
    made from its alpha). Raises what `cut_out` raises."""
    from ..cutout import cut_out, from_own_alpha

    if has_real_alpha(image):
        return from_own_alpha(image, settings)
    return cut_out(np.asarray(image.convert("RGB")), settings)


@dataclass
class ExtrasRun:
    """One Extras job as far as the cutout saw it (a batch from a directory: every file)."""

    key: Any
    cut: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)

    def summary(self) -> str:
        listed = "; ".join(f"{name}: {why}" for name, why in self.failed[:20])
        more = f"; and {len(self.failed) - 20} more" if len(self.failed) > 20 else ""
        return f"{len(self.failed)} of {self.cut + len(self.failed)} images were not cut out: {listed}{more}"


_run: Optional[ExtrasRun] = None


def last_run() -> Optional[ExtrasRun]:
    return _run


def _state() -> Any:
    return getattr(sys.modules.get("modules.shared"), "state", None)


def _current_run(state: Any) -> ExtrasRun:
    global _run
    key = (getattr(state, "job_timestamp", None), getattr(state, "job_count", None))
    if _run is None or _run.key != key:
        _run = ExtrasRun(key)
    return _run


def process(pp: Any, enable: Any = None, **values: Any) -> None:
    """`ScriptPostprocessing.process`: cut `pp.image` out with the settings in `values` (the
    CutoutSettings fields after `enabled`, as the UI hands them)."""
    if not enable:
        return
    if _in_video_run():
        pp.info[SKIPPED_KEY] = "not run on video frames (Forge Neo writes video as RGB)"
        return
    state = _state()
    run = _current_run(state)
    name = os.path.basename(str(getattr(state, "textinfo", "") or "")) or "the image"  # a folder run: the path
    index, count = int(getattr(state, "job_no", 0) or 0), int(getattr(state, "job_count", 0) or 0)
    try:
        settings = CutoutSettings.from_values({**values, "enabled": True})
        result = cut_out_or_keep(pp.image, settings)
        out = result.render()
    except Exception as exc:  # one file never stops the batch, and nothing reaches the WebUI
        _failed(pp, run, state, name, exc, batch=count > 1)
        return
    run.cut += 1
    if out.mode == "RGBA":
        out = alpha_carrier(out, out.getchannel("A"))
        setattr(out, EXTRAS_ATTRIBUTE, True)
    pp.image = out
    pp.info.update(result.infotext())
    for note in result.notes:
        _say(f"Extras: {name}: {note}")
    if run.failed:
        pp.info[SKIPPED_KEY] = run.summary()
    _say(f"Extras cutout {index or 1}{f'/{count}' if count > 1 else ''}: {name} ({result.model})")
    if count > 1 and index >= count and run.failed:
        _say(f"Extras: {run.summary()}")


def _in_video_run() -> bool:
    """Forge Neo's "Single Video" mode runs the Extras scripts on every frame, then writes the
    frames with a writer that takes RGB only: an RGBA frame would end the run."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "run_postprocessing_video":
            return True
        frame = frame.f_back
    return False


def _say(line: str) -> None:
    """A console line, as the panel's messages (the server log is where batch users look)."""
    print(f"[LayerDiffuse] {line}", flush=True)


def _failed(pp: Any, run: ExtrasRun, state: Any, name: str, exc: Exception, batch: bool) -> None:
    from ..cutout import CutoutError
    from ..cutout.rembg_backend import CutoutModelError, CutoutUnavailable

    known = (CutoutError, CutoutModelError, CutoutUnavailable, ValueError, TypeError)
    why = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, known):
        traceback.print_exc()
    run.failed.append((name, why))
    _say(f"Extras: {name} was not cut out: {why}")
    pp.info[CUTOUT_ERROR_KEY] = why
    if batch and state is not None:
        state.skipped = True  # the WebUI leaves this image out of the outputs and goes on
