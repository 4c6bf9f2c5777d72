"""The background of a subject on a smooth backdrop: a colour surface fitted robustly.

The surface is a polynomial in the pixel coordinates per colour channel, fitted either to the
colours (flat colours, linear gradients) or to their logarithm (vignettes, which multiply a
colour by a radial falloff: a degree-4 polynomial of the log follows a strong cos^4 falloff to
within 1%, where one of the colours is off by 12%); whichever fits the background better is used.

`fit_border` makes the first estimate from a strip along the image border: a plane chosen by
least quantile of squares (so a subject covering up to 70% of the border cannot pull it), then
a quadratic refitted on the plane's inliers. The border pixels it rejects are the subject where
it touches the frame. `fit_surface` refits on every background pixel of the image once a first
subject mask is known, which is what finds the bright middle of a vignette behind the subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .refine import row_strips, unit_float

NOISE_FLOOR = 0.012  # distance (0..sqrt(3)) treated as noise even on perfectly clean images
LOG_OFFSET = 0.02  # log(colour + this), so black stays finite
BORDER_SAMPLES = 20000
SURFACE_SAMPLES = 40000
PLANE_TRIALS = 300
# the plane is chosen by its 30% quantile of residuals (least quantile of squares), so a subject
# covering up to 70% of the border (cut by the frame at the bottom and both sides) cannot pull it
BORDER_QUANTILE = 0.3
SEED_WIDTH = 2.0  # the quadratic fit starts from the samples within this many quantiles of the plane


def _exponents(degree: int) -> list[tuple[int, int]]:
    return [(i, total - i) for total in range(degree + 1) for i in range(total + 1)]


def _design(y: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([(x ** i) * (y ** j) for i, j in _exponents(degree)], axis=-1)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres scaled to -1..1 along each side."""
    return (np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1


class BackgroundSurface:
    """The fitted background colour of an HxW image, computed per crop on demand
    (`surface[rows, cols]` gives an hxwx3 float32 crop; no whole-image array is kept)."""

    def __init__(self, coef: np.ndarray, degree: int, h: int, w: int, log: bool = False):
        self.coef, self.degree, self.log = np.asarray(coef, np.float64), degree, log
        self.shape = (h, w, 3)
        self._ys, self._xs = _grid(h, w)

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        y, x = np.meshgrid(self._ys[rows], self._xs[cols], indexing="ij")
        values = _design(y, x, self.degree) @ self.coef
        if self.log:
            values = np.exp(values) - LOG_OFFSET
        return np.clip(values, 0.0, 1.0).astype(np.float32)

    def _strips(self):
        h, w = self.shape[:2]
        return row_strips(h, w * (len(_exponents(self.degree)) + 6) * 8 * 2)

    def distance(self, image: np.ndarray) -> np.ndarray:
        """HxW float32: each pixel's colour distance to the surface."""
        out = np.empty(self.shape[:2], np.float32)
        for rows in self._strips():
            diff = unit_float(image[rows], np.float32) - self[rows, slice(None)]
            np.sqrt(np.einsum("ijc,ijc->ij", diff, diff), out=out[rows])
        return out

    def least_alpha(self, image: np.ndarray) -> np.ndarray:
        """HxW float32: the smallest alpha that explains each pixel as the background mixed with
        some foreground colour inside the RGB cube. A lower bound of the true alpha; close to it
        for light see-through material (glass) over a darker backdrop."""
        out = np.empty(self.shape[:2], np.float32)
        for rows in self._strips():
            background = self[rows, slice(None)]
            diff = unit_float(image[rows], np.float32) - background
            room = np.where(diff > 0, 1.0 - background, background)
            np.max(np.abs(diff) / np.maximum(room, 1e-3), axis=-1, out=out[rows])
        return np.clip(out, 0.0, 1.0, out=out)


def _fit(y: np.ndarray, x: np.ndarray, colours: np.ndarray, degree: int, keep: np.ndarray, log: bool = False,
         rounds: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients, residual distance of every sample, inliers): least squares on the inliers,
    which are re-chosen each round as the samples within twice the inliers' 90th percentile."""
    design = _design(y, x, degree)
    target = np.log(colours + LOG_OFFSET) if log else colours
    for _ in range(rounds):
        coef, *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
        predicted = design @ coef
        if log:
            predicted = np.exp(predicted) - LOG_OFFSET
        resid = np.linalg.norm(colours - predicted, axis=1)
        scale = max(float(np.percentile(resid[keep], 90)), NOISE_FLOOR / 2)
        new_keep = resid < max(2.0 * scale, NOISE_FLOOR)
        if np.array_equal(new_keep, keep) or new_keep.sum() < 0.2 * keep.size:
            break
        keep = new_keep
    return coef, resid, keep


@dataclass
class BorderFit:
    surface: BackgroundSurface
    noise: float  # 99th percentile of the inliers' distance to the surface
    spread: float  # robust standard deviation of that distance: large on textured borders
    fraction: float  # share of border pixels that follow the surface
    outliers: np.ndarray  # HxW bool: border pixels the fit rejected (the subject at the frame)


def _border_pixels(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    strip = max(1, min(max(2, min(h, w) // 50), (min(h, w) - 1) // 3))  # leave small images a middle
    edge = np.zeros((h, w), bool)
    edge[:strip], edge[-strip:], edge[:, :strip], edge[:, -strip:] = True, True, True, True
    iy, ix = np.nonzero(edge)
    if iy.size > BORDER_SAMPLES:
        pick = rng.choice(iy.size, BORDER_SAMPLES, replace=False)
        iy, ix = iy[pick], ix[pick]
    return iy, ix


def _least_quantile_plane(y, x, colours, rng) -> tuple[np.ndarray, float]:
    """(plane, quantile): the plane whose BORDER_QUANTILE quantile of residuals is smallest, and
    that quantile."""
    design = _design(y, x, 1)
    best, best_q = None, np.inf
    for _ in range(PLANE_TRIALS):
        pick = rng.choice(y.size, 3, replace=False)
        try:
            coef = np.linalg.solve(design[pick], colours[pick])
        except np.linalg.LinAlgError:
            continue
        q = float(np.quantile(np.linalg.norm(colours - design @ coef, axis=1), BORDER_QUANTILE))
        if q < best_q:
            best, best_q = coef, q
    if best is None:  # every trial was degenerate (tiny images): the mean colour
        best = np.zeros((3, 3))
        best[0] = np.median(colours, axis=0)
        best_q = float(np.quantile(np.linalg.norm(colours - best[0], axis=1), BORDER_QUANTILE))
    return best, best_q


def fit_border(image: np.ndarray) -> BorderFit:
    """The background from the image border (HxWx3 uint8, or floats in [0, 1])."""
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    iy, ix = _border_pixels(h, w, rng)
    ys, xs = _grid(h, w)
    y, x, colours = ys[iy], xs[ix], unit_float(image[iy, ix])
    plane, quantile = _least_quantile_plane(y, x, colours, rng)
    resid = np.linalg.norm(colours - _design(y, x, 1) @ plane, axis=1)
    # a narrow seed: with 36% of the border background, the quantile lies in the background's
    # upper tail (curvature), and a wider seed took in fur, which the refits then kept;
    # the refits widen it as far as the background's own spread
    keep = resid < max(SEED_WIDTH * quantile, NOISE_FLOOR)
    degree = 2 if keep.sum() > 12 else 0
    coef, resid, keep = _fit(y, x, colours, degree, keep)
    outliers = np.zeros((h, w), bool)
    outliers[iy[~keep], ix[~keep]] = True
    return BorderFit(BackgroundSurface(coef, degree, h, w), noise=float(np.percentile(resid[keep], 99)),
                     spread=1.4826 * float(np.median(resid[keep])), fraction=float(keep.mean()), outliers=outliers)


def fit_surface(image: np.ndarray, background: np.ndarray, degree: int = 4,
                rng: Optional[np.random.Generator] = None) -> tuple[BackgroundSurface, float]:
    """(surface, noise) refitted on the pixels of `image` where `background` (HxW bool) is true,
    in colour and in log space, keeping the better fit."""
    rng = rng or np.random.default_rng(0)
    h, w = background.shape
    iy, ix = np.nonzero(background)
    if iy.size > SURFACE_SAMPLES:
        pick = rng.choice(iy.size, SURFACE_SAMPLES, replace=False)
        iy, ix = iy[pick], ix[pick]
    while degree and iy.size < 4 * len(_exponents(degree)):
        degree //= 2
    ys, xs = _grid(h, w)
    y, x, colours = ys[iy], xs[ix], unit_float(image[iy, ix])
    best = None
    for log in (False, True):
        coef, resid, keep = _fit(y, x, colours, degree, np.ones(iy.size, bool), log=log)
        typical = float(np.median(resid))
        if best is None or typical < best[0]:
            best = (typical, BackgroundSurface(coef, degree, h, w, log), float(np.percentile(resid[keep], 99)))
    return best[1], best[2]
