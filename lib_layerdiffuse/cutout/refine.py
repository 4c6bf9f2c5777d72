"""Edge refinement for any cutout backend: trimaps, closed-form matting, foreground colour.

Bounded work: matting and colour estimation only run where the edge is (the bounding box of
the unknown band or of the soft alpha, plus a margin) and, inside that box, tile by tile:
matting on tiles of at most `MATTING_TILE` pixels a side (with `MATTING_MARGIN` of context;
pymatting's closed-form solver costs about 500 bytes per pixel of its input, so a tile stays
near 130 MB whatever the image size, and a tile whose context had to grow to reach both kinds
of anchor near 250 MB), colour estimation on tiles of `COLOR_TILE`. Time grows
with the length of the edge. Whole-image arrays stay small: the image stays uint8 (tiles are
converted to float as they are solved), trimaps and alpha are float32, colours uint8, and the
colour under transparent pixels is computed at most `FILL_PIXELS` large and scaled up in strips.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Iterator, Optional

import numpy as np

from ..progress import TileProgress as Progress
from ..vae.pixels import to_uint8

MATTING_TILE = 448
MATTING_MARGIN = 32
MATTING_GROWTH = 16  # a context lacking an anchor grows to at most this many margins (512 px: a jacket cut
# by the frame runs that far from its sure part at 2048 px; 4 margins left man_crop worse than the key)
COLOR_TILE = 1024
COLOR_MARGIN = 48
FILL_PIXELS = 1 << 20  # the transparent-colour fill runs at most this large, then is scaled up
STRIP_BYTES = 1 << 25  # float work per row strip of whole-image passes (32 MB)
OPAQUE = 254.5 / 255.0  # alpha that rounds to 255
TRANSPARENT = 0.5 / 255.0  # alpha that rounds to 0


def unit_float(pixels: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Pixels (uint8, or floats in [0, 1]) as floats in [0, 1]."""
    if pixels.dtype == np.uint8:
        out = pixels.astype(dtype)
        out *= 1.0 / 255.0
        return out
    return pixels.astype(dtype, copy=False)


def row_strips(height: int, row_bytes: int) -> Iterator[slice]:
    """Row slices whose float work of `row_bytes` per row stays near STRIP_BYTES."""
    step = max(1, STRIP_BYTES // max(row_bytes, 1))
    for start in range(0, height, step):
        yield slice(start, min(start + step, height))


def trimap_from_alpha(alpha: np.ndarray, fg_threshold: float, bg_threshold: float, band: int) -> np.ndarray:
    """0 (background), 1 (foreground) or 0.5 (unknown) per pixel, float32.

    Sure regions are where alpha is above / below the thresholds (0..1), each eroded by `band`
    pixels so the unknown band straddles the edge. The frame says nothing either way: a
    subject cut by it stays sure foreground up to the frame (with the frame counted as
    background, a band along it became unknown, and matting there had no background in reach).
    """
    fg = alpha > fg_threshold
    bg = alpha < bg_threshold
    if band > 0:
        fg = _erode_square(fg, band, border_value=1)
        bg = _erode_square(bg, band, border_value=1)
    trimap = np.full(alpha.shape, 0.5, np.float32)
    trimap[fg] = 1.0
    trimap[bg] = 0.0
    return trimap


def _erode_square(mask: np.ndarray, side: int, border_value: int) -> np.ndarray:
    """`mask` eroded by a `side` x `side` square, as a column then a row erosion: the same
    result as the square (pixels outside the image count as `border_value` in both), in time
    that grows with the side instead of its square (the weight-free band grows with the image)."""
    from scipy.ndimage import binary_erosion

    column = binary_erosion(mask, structure=np.ones((side, 1), bool), border_value=border_value)
    return binary_erosion(column, structure=np.ones((1, side), bool), border_value=border_value)


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
            yield core, _grown(core, margin, (h, w))


def _grown(core: tuple[slice, slice], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """`core` grown by `margin` on every side, clipped to an image of `shape`."""
    return tuple(slice(max(c.start - margin, 0), min(c.stop + margin, size))  # type: ignore
                 for c, size in zip(core, shape))


def _inner(core: tuple[slice, slice], context: tuple[slice, slice]) -> tuple[slice, slice]:
    """`core` in the coordinates of the `context` crop."""
    return tuple(slice(c.start - x.start, c.stop - x.start) for c, x in zip(core, context))  # type: ignore


def solve_alpha(image: np.ndarray, trimap: np.ndarray, prior: np.ndarray, progress: Progress = None,
                pulled: Optional[np.ndarray] = None, pull: float = 0.0) -> np.ndarray:
    """Closed-form matting (Levin et al., pymatting) in the unknown band, tile by tile, giving
    what one solve of the whole image would give.

    `image` HxWx3 (uint8, or floats in [0,1]); `trimap` 0 / 0.5 / 1; `prior` is kept where an
    unknown region touches no sure pixel at all (the solve has no answer there). Where the HxW
    bool mask `pulled` is set, a soft term draws alpha towards `prior`: the solve minimises the
    closed-form energy plus `pull * (alpha - prior)^2` over those pixels. Returns HxW float32.

    A tile is not the whole image, and three things keep that from showing:
    - an unknown region that touches only sure foreground (or only sure background) is set to 1
      (or 0) whole, which is the whole-image solution (constants cost no matting energy); before,
      a tile of such a region that saw no background kept the prior, a hard-edged rectangle of
      alpha 0.5 inside a subject cut by the frame;
    - a tile whose context lacks one kind of anchor is grown (up to `MATTING_GROWTH` times the
      margin) until it holds both;
    - overlapping tiles are blended with weights that fall to zero over the margin towards each
      inner edge of the context, so neighbouring solutions meet without a step.
    """
    unknown = trimap == 0.5
    alpha = np.where(unknown, prior, trimap).astype(np.float32, copy=False)
    if pulled is not None and pull > 0:
        pulled = pulled & unknown
    else:
        pulled = None
    solve, settled = _one_sided(alpha, trimap, unknown, pulled)
    del unknown
    jobs = list(tiles(solve, MATTING_TILE, MATTING_MARGIN))
    box = _bbox(solve)
    if box is None:
        if progress is not None:
            progress(1, 1)
        return alpha
    y0, y1, x0, x1 = box
    total = np.zeros((y1 - y0, x1 - x0), np.float32)
    weight = np.zeros_like(total)
    for done, (core, context) in enumerate(jobs, 1):
        context, sub = _anchored_context(core, trimap, alpha, settled, pulled)
        weights = None if pulled is None or not pulled[context].any() else pulled[context] * pull
        fg, bg = (sub == 1.0).any(), (sub == 0.0).any()
        if weights is not None or (fg and bg):
            solved = _solve_tile(unit_float(image[context]), sub, prior[context], weights)
        elif fg or bg:  # one kind of anchor in reach: matting gives its value
            solved = np.where(sub == 0.5, 1.0 if fg else 0.0, sub)
        else:
            solved = None
        if solved is not None:
            _blend(total, weight, solved, _ramp(context, trimap.shape), context, solve, (y0, x0))
        if progress is not None:
            progress(done, len(jobs))
    inside = solve[y0:y1, x0:x1] & (weight > 0)
    alpha[y0:y1, x0:x1][inside] = total[inside] / weight[inside]
    return alpha


def _one_sided(alpha: np.ndarray, trimap: np.ndarray, unknown: np.ndarray,
               pulled: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(to solve, settled): unknown regions coupled (closer than the 3x3 matting windows reach)
    to sure foreground only get alpha 1, to sure background only 0 (written into `alpha`);
    regions with both, or with pulled pixels, are left to matting; regions with neither keep
    the prior."""
    from scipy import ndimage

    square = np.ones((3, 3), bool)
    labels, count = ndimage.label(ndimage.binary_dilation(unknown, square), square)
    labels[~unknown] = 0
    near_fg = ndimage.binary_dilation(trimap == 1.0, square, iterations=2)
    has_fg = np.bincount(labels[near_fg], minlength=count + 1) > 0
    del near_fg
    near_bg = ndimage.binary_dilation(trimap == 0.0, square, iterations=2)
    has_bg = np.bincount(labels[near_bg], minlength=count + 1) > 0
    del near_bg
    has_pull = np.zeros(count + 1, bool) if pulled is None else np.bincount(labels[pulled], minlength=count + 1) > 0
    has_fg[0] = has_bg[0] = has_pull[0] = False
    both = (has_fg & has_bg) | has_pull
    only_fg, only_bg = has_fg & ~both, has_bg & ~both
    alpha[only_fg[labels]] = 1.0
    alpha[only_bg[labels]] = 0.0
    settled = (only_fg | only_bg)[labels]
    return both[labels], settled


def _anchored_context(core: tuple[slice, slice], trimap: np.ndarray, alpha: np.ndarray, settled: np.ndarray,
                      pulled: Optional[np.ndarray]) -> tuple[tuple[slice, slice], np.ndarray]:
    """(context, trimap crop as float64): the context of `core`, grown until it holds sure
    foreground and sure background (regions settled by `_one_sided` count as sure) or pulled
    pixels, or until it is MATTING_GROWTH margins wide."""
    h, w = trimap.shape
    margin = MATTING_MARGIN
    while True:
        context = _grown(core, margin, (h, w))
        sub = trimap[context].astype(np.float64)
        fixed = settled[context]
        sub[fixed] = alpha[context][fixed]
        anchored = (sub == 1.0).any() and (sub == 0.0).any()
        if anchored or (pulled is not None and pulled[context].any()) or margin >= MATTING_MARGIN * MATTING_GROWTH \
                or context == (slice(0, h), slice(0, w)):
            return context, sub
        margin *= 2


def _ramp(context: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """Blending weights over a context crop: 1 in the middle, falling linearly to near 0 over
    MATTING_MARGIN pixels towards each side that is inside the image (not at the frame)."""
    def side(s: slice, size: int) -> np.ndarray:
        n = s.stop - s.start
        up = np.arange(n, dtype=np.float32) + 0.5
        down = up[::-1]
        ramp = np.ones(n, np.float32)
        if s.start > 0:
            ramp = np.minimum(ramp, up / MATTING_MARGIN)
        if s.stop < size:
            ramp = np.minimum(ramp, down / MATTING_MARGIN)
        return ramp

    return np.outer(side(context[0], shape[0]), side(context[1], shape[1]))


def _blend(total: np.ndarray, weight: np.ndarray, solved: np.ndarray, ramp: np.ndarray,
           context: tuple[slice, slice], solve: np.ndarray, origin: tuple[int, int]) -> None:
    """Add one tile's solution, weighted by `ramp`, where `solve` is set (within the box whose
    top-left corner is `origin`)."""
    rows = slice(max(context[0].start, origin[0]), min(context[0].stop, origin[0] + total.shape[0]))
    cols = slice(max(context[1].start, origin[1]), min(context[1].stop, origin[1] + total.shape[1]))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    crop = (slice(rows.start - context[0].start, rows.stop - context[0].start),
            slice(cols.start - context[1].start, cols.stop - context[1].start))
    target = (slice(rows.start - origin[0], rows.stop - origin[0]), slice(cols.start - origin[1], cols.stop - origin[1]))
    w = ramp[crop] * solve[rows, cols]
    total[target] += w * solved[crop]
    weight[target] += w


def _solve_tile(image: np.ndarray, trimap: np.ndarray, prior: np.ndarray, pull: Optional[np.ndarray]) -> np.ndarray:
    """Alpha of one crop: pymatting's closed-form solve, or with `pull` (per-pixel weights) its
    linear system (the unknown rows of the matting Laplacian, known pixels moved to the
    right-hand side) plus the weights on the diagonal and `pull * prior` on the right."""
    from pymatting import cf_laplacian, cg, estimate_alpha_cf, ichol
    from scipy.sparse import diags

    with contextlib.redirect_stdout(io.StringIO()):  # pymatting prints solver warnings
        if pull is None:
            return estimate_alpha_cf(image, trimap)
        unknown = (trimap == 0.5).ravel()
        known = ~unknown
        laplacian = cf_laplacian(image)
        system = laplacian[unknown][:, unknown].tocsr()
        weights = pull.ravel()[unknown]
        system = system + diags(weights, format="csr")
        rhs = weights * prior.ravel()[unknown].astype(np.float64)
        if known.any():
            rhs -= laplacian[unknown][:, known] @ (trimap.ravel()[known] == 1.0).astype(np.float64)
        out = trimap.astype(np.float64).ravel()
        out[unknown] = cg(system, rhs, M=ichol(system.tocsc()))
    return np.clip(out, 0.0, 1.0).reshape(trimap.shape)


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, background=None,
                        progress: Progress = None) -> np.ndarray:
    """The colour the subject has without the background mixed in, HxWx3 uint8.

    Opaque pixels keep their colour exactly. At soft edges pymatting's multilevel estimate
    (Germer et al.) is used; where the background is known (`background`: anything that gives
    an HxWx3 float crop for `background[rows, cols]`), the exact unmix `(I - (1 - a) B) / a`
    takes over as alpha grows (it is noisy at small alpha). Colour under fully transparent
    pixels is left as it is: `fill_transparent` sets it.
    """
    from pymatting import estimate_foreground_ml

    colour = image.copy() if image.dtype == np.uint8 else to_uint8(image)
    soft = (alpha > TRANSPARENT) & (alpha < OPAQUE)
    jobs = list(tiles(soft, COLOR_TILE, COLOR_MARGIN))
    for done, (core, context) in enumerate(jobs, 1):
        crop = unit_float(image[context])
        crop_alpha = alpha[context].astype(np.float64)
        estimate = estimate_foreground_ml(crop, crop_alpha).astype(np.float32)
        if background is not None:
            a = crop_alpha[..., None].astype(np.float32)
            unmixed = (crop.astype(np.float32) - (1.0 - a) * background[context]) / np.maximum(a, 1e-3)
            weight = np.clip((a - 0.3) / 0.4, 0.0, 1.0)
            estimate = weight * np.clip(unmixed, 0.0, 1.0) + (1.0 - weight) * estimate
        inner = _inner(core, context)
        band = soft[core]
        colour[core][band] = to_uint8(estimate[inner][band])
        if progress is not None:
            progress(done, len(jobs))
    return colour


def fill_transparent(colour: np.ndarray, alpha: np.ndarray, progress: Progress = None) -> np.ndarray:
    """Colour (HxWx3 uint8, changed in place and returned) under fully transparent pixels
    becomes the subject's colour spread outwards (`vae.pixels.pad_rgb`): tools that resize
    without premultiplying then blend edges with the subject's colour, not with black or the
    old background. Images larger than FILL_PIXELS are shrunk by block averages of the
    premultiplied colour first and the fill is scaled back up bilinearly: the colour under
    transparent pixels is then the subject's averaged over a few pixels."""
    from ..vae.pixels import pad_rgb

    clear = alpha <= TRANSPARENT
    if not clear.any() or clear.all():
        return colour
    h, w = alpha.shape
    factor = max(1, math.ceil(math.sqrt(h * w / FILL_PIXELS)))
    fill = pad_rgb(_shrink_premultiplied(colour, alpha, factor))
    if progress is not None:
        progress(1, 2)
    for rows in row_strips(h, w * 3 * 4 * 3):
        strip = clear[rows]
        if strip.any():
            colour[rows][strip] = to_uint8(_upsample_rows(fill, rows, w, factor))[strip]
    if progress is not None:
        progress(2, 2)
    return colour


def _shrink_premultiplied(colour: np.ndarray, alpha: np.ndarray, factor: int) -> np.ndarray:
    """RGBA uint8 of `factor` x `factor` block means (colour weighted by alpha); factor 1 is
    the image itself."""
    a8 = to_uint8(alpha)
    if factor == 1:
        return np.concatenate([colour, a8[..., None]], axis=2)
    h, w = alpha.shape
    starts = np.arange(0, w, factor)
    counts_w = np.diff(np.append(starts, w)).astype(np.float32)
    out = np.empty((math.ceil(h / factor), starts.size, 4), np.uint8)
    for i, top in enumerate(range(0, h, factor)):
        a = a8[top:top + factor].astype(np.float32) / 255.0
        premult = colour[top:top + factor].astype(np.float32) / 255.0 * a[..., None]
        n = counts_w * a.shape[0]
        mean_a = np.add.reduceat(a.sum(0), starts) / n
        mean_c = np.add.reduceat(premult.sum(0), starts, axis=0) / n[:, None]
        straight = mean_c / np.maximum(mean_a, 1e-6)[:, None]
        out[i, :, :3] = to_uint8(straight)
        out[i, :, 3] = to_uint8(mean_a)
    return out


def _upsample_rows(fill: np.ndarray, rows: slice, width: int, factor: int) -> np.ndarray:
    """Rows `rows` of `fill` (small HxWx3 float) scaled up by `factor` with bilinear weights,
    pixel centres aligned, cropped to `width` columns."""
    if factor == 1:
        return fill[rows]

    def taps(positions: np.ndarray, size: int):
        src = np.clip((positions + 0.5) / factor - 0.5, 0, size - 1)
        left = np.floor(src).astype(np.intp)
        return left, np.minimum(left + 1, size - 1), (src - left).astype(np.float32)

    top, bottom, fy = taps(np.arange(rows.start, rows.stop, dtype=np.float64), fill.shape[0])
    left, right, fx = taps(np.arange(width, dtype=np.float64), fill.shape[1])
    vertical = fill[top] * (1 - fy)[:, None, None] + fill[bottom] * fy[:, None, None]
    return vertical[:, left] * (1 - fx)[None, :, None] + vertical[:, right] * fx[None, :, None]
