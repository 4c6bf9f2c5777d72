"""One cutout: backend (a rembg model or the weight-free border matte), then edge refinement."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..images import to_rgba_uint8
from ..progress import ProgressBar, ProgressCallback, Stages
from ..vae.pixels import flatten_over_grey, to_uint8
from .border import STAGES as BORDER_STAGES
from .border import CutoutError, border_matte
from .model_matting import matting_after_model
from .models import WEIGHT_FREE
from .options import CutoutSettings, Refine
from .refine import estimate_foreground, fill_transparent, row_strips
from .result import CutoutResult

NO_SUBJECT = 0.5  # an alpha that never reaches this holds no subject
OWN_ALPHA = "the image's own alpha"
MATTING_STAGE = "Refining the edge by matting"
COLOUR_STAGE = "Estimating edge colours"
FILL_STAGE = "Filling colour under transparent pixels"


def stage_names(settings: CutoutSettings) -> list[str]:
    """The stages a cutout with `settings` goes through, in order."""
    names = list(BORDER_STAGES) if settings.model == WEIGHT_FREE else [f"Finding the subject with {settings.model}"]
    if settings.refine is Refine.MATTING:
        names.append(MATTING_STAGE)
    if settings.refine is not Refine.NONE:
        names.append(COLOUR_STAGE)
    return names + [FILL_STAGE]


def cut_out(image: Any, settings: Optional[CutoutSettings] = None, *, providers: Optional[Sequence[str]] = None,
            models_dir: Union[str, os.PathLike, None] = None, allow_download: bool = True,
            progress: bool = False, on_progress: Optional[ProgressCallback] = None,
            **overrides: Any) -> CutoutResult:
    """Cut the subject out of `image` (anything `images.to_rgba_uint8` reads).

    `settings` (or keyword overrides such as `model="weight-free"`, `refine="alpha matting"`)
    choose the model, refinement and output; `providers` the onnxruntime execution providers
    (default: CUDA or ROCm when present, else CPU); `models_dir` rembg's model folder.
    `on_progress(stage, done, total)` hears of every stage and tile (`total` is the number of
    stages); `progress=True` shows one console bar instead.
    An image that already has alpha is cut out from its grey-flattened colours and keeps its
    own transparency too. Raises CutoutError when there is no subject to cut out.
    """
    if overrides:
        base = (settings or CutoutSettings()).to_dict()
        base.update(overrides)
        settings = CutoutSettings(**{k: v for k, v in base.items() if v is not None or k == "background"})
    settings = settings or CutoutSettings()
    rgba = to_rgba_uint8(image, "image")
    if rgba is None:
        raise ValueError("image: no image was given")
    bar = ProgressBar() if progress and on_progress is None else None
    stages = Stages(stage_names(settings), on_progress or bar)
    try:
        return _cut(rgba, settings, stages, providers, models_dir, allow_download)
    finally:
        if bar is not None:
            bar.close()


def from_own_alpha(image: Any, settings: Optional[CutoutSettings] = None) -> CutoutResult:
    """The result for an image that is transparent already (an RGBA upload, a native-RGBA
    model's output): nothing is cut, its own alpha makes the outputs (the mask, over a colour)."""
    rgba = to_rgba_uint8(image, "image")
    if rgba is None:
        raise ValueError("image: no image was given")
    rgb = np.ascontiguousarray(rgba[..., :3])
    return CutoutResult(image=rgb, alpha=rgba[..., 3].astype(np.float32) / 255.0, colour=rgb,
                        settings=settings or CutoutSettings(), model=OWN_ALPHA)


def _flattened(rgba: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: `rgba` over 50% grey, in row strips (no full-size float arrays)."""
    h, w = rgba.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    for rows in row_strips(h, w * 4 * 4 * 3):
        out[rows] = to_uint8(flatten_over_grey(rgba[rows]))
    return out


def _cut(rgba: np.ndarray, settings: CutoutSettings, stages: Stages, providers, models_dir,
         allow_download: bool) -> CutoutResult:
    has_alpha = int(rgba[..., 3].min()) < 255
    rgb = _flattened(rgba) if has_alpha else rgba[..., :3]
    notes: list[str] = []
    background = None
    if settings.model == WEIGHT_FREE:
        matte = border_matte(rgb, band=settings.edge_band, progress=stages)
        alpha, background, model = matte.alpha, matte.background, WEIGHT_FREE
    else:
        from .rembg_backend import get_session

        tick = stages.start(stage_names(settings)[0])
        session = get_session(settings.model, settings.model_path, providers, models_dir, allow_download)
        alpha, model = session.predict(rgb), session.describe()
        notes.extend(session.notes)
        if tick is not None:
            tick(1, 1)
    if float(alpha.max()) < NO_SUBJECT:
        raise CutoutError(f"no subject found: {model} sees nothing but background in this image")
    if settings.refine is Refine.MATTING:
        alpha = matting_after_model(rgb, alpha, settings.fg_threshold / 255.0, settings.bg_threshold / 255.0,
                                    settings.edge_band, stages.start(MATTING_STAGE))
    if settings.refine is Refine.NONE:
        colour = rgb.copy()  # the fill below writes into it
    else:
        colour = estimate_foreground(rgb, alpha, background, stages.start(COLOUR_STAGE))
    fill_transparent(colour, alpha, stages.start(FILL_STAGE))
    np.clip(alpha, 0.0, 1.0, out=alpha)
    if has_alpha:
        alpha *= rgba[..., 3].astype(np.float32) / 255.0
    stages.finish()
    return CutoutResult(image=rgb, alpha=alpha.astype(np.float32, copy=False), colour=colour,
                        settings=settings, model=model, notes=notes)
