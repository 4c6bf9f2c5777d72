"""One cutout: backend (a rembg model or the weight-free border matte), then edge refinement."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..images import to_rgba_uint8
from ..vae.pixels import flatten_over_grey, to_uint8
from .border import CutoutError, border_matte
from .models import WEIGHT_FREE
from .options import CutoutSettings, Refine
from .refine import estimate_foreground, fill_transparent, solve_alpha, trimap_from_alpha
from .result import CutoutResult

NO_SUBJECT = 0.5  # an alpha that never reaches this holds no subject


def cut_out(image: Any, settings: Optional[CutoutSettings] = None, *, providers: Optional[Sequence[str]] = None,
            models_dir: Union[str, os.PathLike, None] = None, allow_download: bool = True,
            progress: bool = False, **overrides: Any) -> CutoutResult:
    """Cut the subject out of `image` (anything `images.to_rgba_uint8` reads).

    `settings` (or keyword overrides such as `model="weight-free"`, `refine="alpha matting"`)
    choose the model, refinement and output; `providers` the onnxruntime execution providers
    (default: CUDA or ROCm when present, else CPU); `models_dir` rembg's model folder.
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
    own_alpha = rgba[..., 3].astype(np.float32) / 255.0
    rgb = rgba[..., :3] if own_alpha.min() == 1.0 else to_uint8(flatten_over_grey(rgba))
    pixels = rgb.astype(np.float32) / 255.0
    notes: list[str] = []
    bar = _tile_progress(progress)
    background = None
    if settings.model == WEIGHT_FREE:
        matte = border_matte(pixels, band=settings.edge_band, progress=bar)
        alpha, background, model = matte.alpha, matte.background, WEIGHT_FREE
    else:
        from .rembg_backend import get_session

        session = get_session(settings.model, settings.model_path, providers, models_dir, allow_download)
        alpha, model = session.predict(rgb), session.describe()
        notes.extend(session.notes)
    if float(alpha.max()) < NO_SUBJECT:
        raise CutoutError(f"no subject found: {model} sees nothing but background in this image")
    if settings.refine is Refine.MATTING:
        trimap = trimap_from_alpha(alpha, settings.fg_threshold / 255.0, settings.bg_threshold / 255.0,
                                   settings.edge_band)
        alpha = solve_alpha(pixels, trimap, alpha, bar)
    if settings.refine is Refine.NONE:
        foreground = fill_transparent(pixels, alpha)
    else:
        foreground = estimate_foreground(pixels, alpha, background, bar)
    alpha = np.clip(alpha, 0.0, 1.0) * own_alpha
    if bar is not None:
        bar.close()
    return CutoutResult(image=rgb, alpha=alpha.astype(np.float32), foreground=foreground,
                        settings=settings, model=model, notes=notes)


class _TileBar:
    """A tqdm bar over refinement tiles, opened on the first report (only long jobs show it)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None and total > 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="refining edges", unit="tile", leave=False)
        if self.bar is not None:
            self.bar.total = max(self.bar.total, total)
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _tile_progress(enabled: bool) -> Optional[_TileBar]:
    return _TileBar() if enabled else None
