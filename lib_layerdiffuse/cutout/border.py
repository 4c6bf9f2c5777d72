"""The weight-free cutout: a subject on a flat or smooth background, no model, no download.

1. The background is estimated from the image border: a quadratic colour surface per channel
   (flat colours and gradients) fitted robustly to a strip of border pixels, so a subject that
   touches the border is rejected as outliers. The border's spread around the fit is the noise.
2. Every pixel's distance to that surface marks sure background (within the noise; specks of
   a few pixels are absorbed, enclosed holes are kept only when they are not tiny); sure
   foreground is what lies more than the edge band inside the subject; the rest is unknown.
3. Closed-form matting solves alpha in the unknown band (`refine.solve_alpha`), starting from
   a first guess of alpha = distance / the subject's typical distance; a second solve takes
   its sure regions from the first alpha, which covers edges softer than the band.
The result carries the background estimate, so colour estimation can unmix it exactly.
A background that is not smooth (texture, a scene) gives a CutoutError suggesting a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .refine import Progress, solve_alpha, trimap_from_alpha

MAX_SAMPLES = 20000
NOISE_FLOOR = 0.012  # distance (0..sqrt(3)) treated as noise even on perfectly clean images
MAX_NOISE = 0.08  # border spread above this: the background is not smooth
_USE_MODEL = "choose a model such as isnet-general-use for this image"


class CutoutError(ValueError):
    """The image cannot be cut out this way; the message says why and what to do."""


@dataclass
class BorderMatte:
    alpha: np.ndarray  # HxW float32
    background: np.ndarray  # HxWx3 float32, the estimated background colour surface
    noise: float


def _design(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    return ys, xs


def fit_background(image: np.ndarray, strip: Optional[int] = None) -> tuple[np.ndarray, float, float]:
    """(coefficients 6x3, noise, fraction of border pixels that fit) for an HxWx3 float image."""
    h, w = image.shape[:2]
    strip = strip or max(2, min(h, w) // 50)
    edge = np.zeros((h, w), bool)
    edge[:strip], edge[-strip:], edge[:, :strip], edge[:, -strip:] = True, True, True, True
    iy, ix = np.nonzero(edge)
    if iy.size > MAX_SAMPLES:
        pick = np.random.default_rng(0).choice(iy.size, MAX_SAMPLES, replace=False)
        iy, ix = iy[pick], ix[pick]
    ys, xs = _grid(h, w)
    design = _design(ys[iy], xs[ix]).astype(np.float64)
    colours = image[iy, ix].astype(np.float64)
    keep = np.ones(iy.size, bool)
    noise = NOISE_FLOOR
    for _ in range(6):
        coef, *_ = np.linalg.lstsq(design[keep], colours[keep], rcond=None)
        resid = np.linalg.norm(colours - design @ coef, axis=1)
        noise = max(1.4826 * float(np.median(resid[keep])), NOISE_FLOOR / 3)
        new_keep = resid < max(3.0 * noise, NOISE_FLOOR)
        if new_keep.sum() < 0.25 * iy.size or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef.astype(np.float32), noise, float(keep.mean())


def background_surface(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    """HxWx3 float32 colours of the fitted surface (built term by term: no HxWx6 array)."""
    ys, xs = _grid(h, w)
    y, x = ys[:, None, None], xs[None, :, None]
    c = coef.astype(np.float32)
    surface = c[0] + x * c[1] + y * c[2] + (x * x) * c[3] + (x * y) * c[4] + (y * y) * c[5]
    return np.clip(surface, 0.0, 1.0, out=surface)


def border_matte(image: np.ndarray, band: int = 10, progress: Progress = None) -> BorderMatte:
    """Alpha of the subject of `image` (HxWx3 float in [0,1]) against its border background."""
    from scipy import ndimage

    h, w = image.shape[:2]
    coef, noise, fit = fit_background(image)
    if fit < 0.5:
        raise CutoutError(f"the weight-free cutout needs a flat or smooth background, but only {fit:.0%} of "
                          f"the image border follows one smooth colour surface; {_USE_MODEL}")
    if noise > MAX_NOISE:
        raise CutoutError(f"the weight-free cutout needs a flat or smooth background, but the border varies "
                          f"by {noise:.3f} around its best smooth fit (at most {MAX_NOISE} works); {_USE_MODEL}")
    background = background_surface(coef, h, w)
    distance = np.linalg.norm(image - background, axis=2)
    low = max(4.0 * noise, NOISE_FLOOR)
    background_mask = distance < low
    n = h * w
    speck = max(16, n // 20000)
    labels, count = ndimage.label(~background_mask)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        background_mask |= (sizes < speck)[labels] & (labels > 0)
    labels, count = ndimage.label(background_mask)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        touching = np.zeros(count + 1, bool)
        for side in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            touching[side] = True
        keep = touching | (sizes >= max(speck, n // 1000))
        keep[0] = False
        background_mask = keep[labels]
    subject = ~background_mask
    if not subject.any():
        raise CutoutError("no subject found: the whole image matches its border background")
    inside = ndimage.distance_transform_cdt(subject, metric="taxicab")
    trimap = np.full((h, w), 0.5)
    trimap[inside > max(band, 1)] = 1.0
    trimap[ndimage.binary_erosion(background_mask, iterations=1, border_value=1)] = 0.0
    if not (trimap == 1.0).any():
        trimap[inside >= inside.max()] = 1.0  # thin subjects: anchor on their core
    typical = float(np.median(distance[trimap == 1.0]))
    prior = np.clip(distance / max(typical, low), 0.0, 1.0)
    alpha = solve_alpha(image, trimap, prior, progress)
    # second pass: sure regions from the first alpha, so edges softer than the band are solved too
    alpha = solve_alpha(image, trimap_from_alpha(alpha, 0.95, 0.02, max(band, 1)), alpha, progress)
    return BorderMatte(alpha=alpha, background=background, noise=noise)
