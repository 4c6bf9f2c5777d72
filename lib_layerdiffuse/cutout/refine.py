"""Edge refinement for any cutout backend: trimaps, closed-form matting, foreground colour.

Bounded work: matting and colour estimation only run where the edge is (the bounding box of
the unknown band or of the soft alpha, plus a margin) and, inside that box, tile by tile:
matting on tiles of at most `MATTING_TILE` pixels a side (with `MATTING_MARGIN` of context;
pymatting's closed-form solver costs about 500 bytes per pixel of its input, so a tile stays
near 130 MB whatever the image size), colour estimation on tiles of `COLOR_TILE`. Time grows
with the length of the edge, memory does not grow with the image.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterator, Optional

import numpy as np

MATTING_TILE = 448
MATTING_MARGIN = 32
COLOR_TILE = 1024
COLOR_MARGIN = 48
OPAQUE = 254.5 / 255.0  # alpha that rounds to 255
TRANSPARENT = 0.5 / 255.0  # alpha that rounds to 0

Progress = Optional[Callable[[int, int], None]]


def trimap_from_alpha(alpha: np.ndarray, fg_threshold: float, bg_threshold: float, band: int) -> np.ndarray:
    """0 (background), 1 (foreground) or 0.5 (unknown) per pixel, float64.

    Sure regions are where alpha is above / below the thresholds (0..1), each eroded by `band`
    pixels so the unknown band straddles the edge; the image border counts as background.
    """
    from scipy.ndimage import binary_erosion

    fg = alpha > fg_threshold
    bg = alpha < bg_threshold
    if band > 0:
        structure = np.ones((band, band), bool)
        fg = binary_erosion(fg, structure=structure)
        bg = binary_erosion(bg, structure=structure, border_value=1)
    trimap = np.full(alpha.shape, 0.5)
    trimap[fg] = 1.0
    trimap[bg] = 0.0
    return trimap


def _bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def tiles(mask: np.ndarray, tile: int, margin: int) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """(core, context) slice pairs covering the bounding box of `mask` with tiles whose core
    holds part of the mask; context is the core grown by `margin`, clipped to the image."""
    box = _bbox(mask)
    if box is None:
        return
    y0, y1, x0, x1 = box
    h, w = mask.shape
    for ty in range(y0, y1, tile):
        for tx in range(x0, x1, tile):
            core = (slice(ty, min(ty + tile, y1)), slice(tx, min(tx + tile, x1)))
            if not mask[core].any():
                continue
            context = (slice(max(core[0].start - margin, 0), min(core[0].stop + margin, h)),
                       slice(max(core[1].start - margin, 0), min(core[1].stop + margin, w)))
            yield core, context


def _inner(core: tuple[slice, slice], context: tuple[slice, slice]) -> tuple[slice, slice]:
    """`core` in the coordinates of the `context` crop."""
    return tuple(slice(c.start - x.start, c.stop - x.start) for c, x in zip(core, context))  # type: ignore


def solve_alpha(image: np.ndarray, trimap: np.ndarray, prior: np.ndarray, progress: Progress = None) -> np.ndarray:
    """Closed-form matting (Levin et al., pymatting) in the unknown band, tile by tile.

    `image` HxWx3 float in [0,1]; `prior` is the alpha kept where a tile has no sure
    foreground or no sure background to anchor the solve. Returns HxW float32.
    """
    from pymatting import estimate_alpha_cf

    alpha = np.where(trimap == 0.5, prior, trimap).astype(np.float32)
    unknown = trimap == 0.5
    jobs = list(tiles(unknown, MATTING_TILE, MATTING_MARGIN))
    for done, (core, context) in enumerate(jobs, 1):
        sub = trimap[context]
        if (sub == 1.0).any() and (sub == 0.0).any():
            with contextlib.redirect_stdout(io.StringIO()):  # pymatting prints solver warnings
                solved = estimate_alpha_cf(image[context].astype(np.float64), sub)
            inner = _inner(core, context)
            band = unknown[core]
            alpha[core][band] = solved[inner][band]
        if progress is not None:
            progress(done, len(jobs))
    return alpha


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, background: Optional[np.ndarray] = None,
                        progress: Progress = None) -> np.ndarray:
    """The colour the subject has without the background mixed in, HxWx3 float32.

    Opaque pixels keep their colour exactly. At soft edges pymatting's multilevel estimate
    (Germer et al.) is used; where the background is known (`background`, HxWx3), the exact
    unmix `(I - (1 - a) B) / a` takes over as alpha grows (it is noisy at small alpha). Colour
    under fully transparent pixels is the subject's colour spread outwards, never the old
    background.
    """
    from pymatting import estimate_foreground_ml

    fg = image.astype(np.float32, copy=True)
    soft = (alpha > TRANSPARENT) & (alpha < OPAQUE)
    jobs = list(tiles(soft, COLOR_TILE, COLOR_MARGIN))
    for done, (core, context) in enumerate(jobs, 1):
        crop_alpha = alpha[context].astype(np.float64)
        estimate = estimate_foreground_ml(image[context].astype(np.float64), crop_alpha).astype(np.float32)
        if background is not None:
            a = crop_alpha[..., None].astype(np.float32)
            unmixed = (image[context] - (1.0 - a) * background[context]) / np.maximum(a, 1e-3)
            weight = np.clip((a - 0.3) / 0.4, 0.0, 1.0)
            estimate = weight * np.clip(unmixed, 0.0, 1.0) + (1.0 - weight) * estimate
        inner = _inner(core, context)
        band = soft[core]
        fg[core][band] = estimate[inner][band]
        if progress is not None:
            progress(done, len(jobs))
    return fill_transparent(np.clip(fg, 0.0, 1.0), alpha)


def fill_transparent(fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour under fully transparent pixels becomes the subject's colour spread outwards
    (`vae.pixels.pad_rgb`): tools that resize without premultiplying then blend edges with the
    subject's colour, not with black or the old background."""
    from ..vae.pixels import pad_rgb, to_uint8

    clear = alpha <= TRANSPARENT
    if clear.any() and not clear.all():
        rgba = np.concatenate([to_uint8(fg), to_uint8(alpha)[..., None]], axis=2)
        fg = fg.copy()
        fg[clear] = pad_rgb(rgba)[clear]
    return fg
