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

from .refine import row_strips, solve_alpha, trimap_from_alpha, unit_float

MAX_SAMPLES = 20000
NOISE_FLOOR = 0.012  # distance (0..sqrt(3)) treated as noise even on perfectly clean images
MAX_NOISE = 0.08  # border spread above this: the background is not smooth
_USE_MODEL = "choose a model such as isnet-general-use for this image"


class CutoutError(ValueError):
    """The image cannot be cut out this way; the message says why and what to do."""


def _design(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    return ys, xs


def fit_background(image: np.ndarray, strip: Optional[int] = None) -> tuple[np.ndarray, float, float]:
    """(coefficients 6x3, noise, fraction of border pixels that fit) for an HxWx3 image (uint8,
    or floats in [0, 1])."""
    h, w = image.shape[:2]
    strip = strip or max(1, min(max(2, min(h, w) // 50), (min(h, w) - 1) // 3))  # leave small images a middle
    edge = np.zeros((h, w), bool)
    edge[:strip], edge[-strip:], edge[:, :strip], edge[:, -strip:] = True, True, True, True
    iy, ix = np.nonzero(edge)
    if iy.size > MAX_SAMPLES:
        pick = np.random.default_rng(0).choice(iy.size, MAX_SAMPLES, replace=False)
        iy, ix = iy[pick], ix[pick]
    ys, xs = _grid(h, w)
    design = _design(ys[iy], xs[ix]).astype(np.float64)
    colours = unit_float(image[iy, ix])
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


class BackgroundSurface:
    """The fitted background colour surface of an HxW image, computed per crop on demand
    (`surface[rows, cols]` gives an hxwx3 float32 crop; no whole-image array is kept)."""

    def __init__(self, coef: np.ndarray, h: int, w: int):
        self.coef = coef.astype(np.float32)
        self.shape = (h, w, 3)
        self._ys, self._xs = _grid(h, w)

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        y, x = self._ys[rows][:, None, None], self._xs[cols][None, :, None]
        c = self.coef
        surface = c[0] + x * c[1] + y * c[2] + (x * x) * c[3] + (x * y) * c[4] + (y * y) * c[5]
        return np.clip(surface, 0.0, 1.0, out=surface)

    def distance(self, image: np.ndarray) -> np.ndarray:
        """HxW float32: each pixel's colour distance to the surface, computed in row strips."""
        h, w = self.shape[:2]
        out = np.empty((h, w), np.float32)
        for rows in row_strips(h, w * 3 * 4 * 3):
            diff = unit_float(image[rows], np.float32)
            diff -= self[rows, slice(None)]
            np.sqrt(np.einsum("ijc,ijc->ij", diff, diff), out=out[rows])
        return out


@dataclass
class BorderMatte:
    alpha: np.ndarray  # HxW float32
    background: BackgroundSurface  # the estimated background colour surface
    noise: float


STAGES = ("Finding the background", "Matting the edge", "Matting the edge, second pass")


def _drop_specks(mask: np.ndarray, speck: int) -> np.ndarray:
    """`mask` with its components smaller than `speck` pixels removed, except the largest one
    (a small subject in a small image is a subject, not a speck)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if not count:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = sizes >= speck
    keep[int(np.argmax(sizes))] = True
    keep[0] = False
    return keep[labels]


def border_matte(image: np.ndarray, band: int = 10, progress=None) -> BorderMatte:
    """Alpha of the subject of `image` (HxWx3 uint8, or floats in [0,1]) against its border
    background. `progress` (a `progress.Stages` holding STAGES) hears of each stage and tile."""
    from scipy import ndimage

    tick = progress.start(STAGES[0]) if progress is not None else None
    h, w = image.shape[:2]
    coef, noise, fit = fit_background(image)
    if fit < 0.5:
        raise CutoutError(f"the weight-free cutout needs a flat or smooth background, but only {fit:.0%} of "
                          f"the image border follows one smooth colour surface; {_USE_MODEL}")
    if noise > MAX_NOISE:
        raise CutoutError(f"the weight-free cutout needs a flat or smooth background, but the border varies "
                          f"by {noise:.3f} around its best smooth fit (at most {MAX_NOISE} works); {_USE_MODEL}")
    background = BackgroundSurface(coef, h, w)
    distance = background.distance(image)
    low = max(4.0 * noise, NOISE_FLOOR)
    n = h * w
    speck = max(16, n // 20000)
    subject = _drop_specks(distance >= low, speck)
    if not subject.any():
        raise CutoutError("no subject found: the whole image matches its border background")
    background_mask = ~subject
    labels, count = ndimage.label(background_mask)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        touching = np.zeros(count + 1, bool)
        for side in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            touching[side] = True
        keep = touching | (sizes >= max(speck, n // 1000))
        keep[0] = False
        background_mask = keep[labels]
    del labels
    subject = ~background_mask
    inside = ndimage.distance_transform_cdt(subject, metric="taxicab")
    sure = inside > max(band, 1)
    if not sure.any():
        sure = inside >= inside.max()  # thin subjects: anchor on their core
    del inside
    trimap = np.full((h, w), 0.5, np.float32)
    trimap[sure] = 1.0
    trimap[ndimage.binary_erosion(background_mask, iterations=1, border_value=1)] = 0.0
    del background_mask, subject
    typical = float(np.median(distance[sure]))
    del sure
    prior = distance  # reused in place: distance / the subject's typical distance, clipped
    prior /= max(typical, low)
    np.clip(prior, 0.0, 1.0, out=prior)
    if tick is not None:
        tick(1, 1)
    alpha = solve_alpha(image, trimap, prior, progress.start(STAGES[1]) if progress is not None else None)
    del trimap, prior
    # second pass: sure regions from the first alpha, so edges softer than the band are solved too
    alpha = solve_alpha(image, trimap_from_alpha(alpha, 0.95, 0.02, max(band, 1)), alpha,
                        progress.start(STAGES[2]) if progress is not None else None)
    return BorderMatte(alpha=alpha, background=background, noise=noise)
