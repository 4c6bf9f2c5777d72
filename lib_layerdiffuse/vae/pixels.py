"""Pixel conventions of LayerDiffuse: grey flattening, RGB padding, outputs and previews."""

from __future__ import annotations

import numpy as np

PYRAMID_FACTOR = 1.2
CHECKER_CELL = 64
CHECKER_GREYS = (0.45, 0.55)


def flatten_over_grey(rgba: np.ndarray) -> np.ndarray:
    """HxWx4 uint8 (straight alpha) -> HxWx3 float32 in [0,1], composited over 50% grey.

    This is what the ordinary SD VAE sees of a transparent image (condition images, img2img).
    """
    x = rgba.astype(np.float32) / 255.0
    return 0.5 + (x[..., :3] - 0.5) * x[..., 3:4]


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Exact area-average weights (out x in) for shrinking n_in samples to n_out."""
    scale = n_in / n_out
    edges = np.arange(n_out + 1, dtype=np.float64) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return (overlap / scale).astype(np.float32)


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear weights (out x in), pixel centres aligned (half-pixel), edges clamped."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    left = np.floor(src).astype(int)
    right = np.minimum(left + 1, n_in - 1)
    frac = src - left
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, left), 1 - frac)
    np.add.at(m, (rows, right), frac)
    return m.astype(np.float32)


def _resize(img: np.ndarray, h: int, w: int, matrix) -> np.ndarray:
    rows = matrix(img.shape[0], h)
    cols = matrix(img.shape[1], w)
    return np.einsum("ij,jkc,lk->ilc", rows, img, cols, optimize=True)


def pad_rgb(rgba: np.ndarray) -> np.ndarray:
    """Opaque float32 HxWx3 RGB that extends object colours into transparent areas.

    An alpha pyramid of (premultiplied colour, alpha) is built by shrinking 1.2x per level
    (area averaging) until the short side is 1; starting from the alpha-weighted mean colour
    it is walked coarse to fine, `fill = resize_linear(fill); fill = premult + fill * (1 - a)`.
    Opaque pixels keep their colour exactly; an all-transparent image gives flat grey.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"pad_rgb expects an HxWx4 RGBA array, got shape {tuple(rgba.shape)}")
    x = rgba.astype(np.float32) / 255.0
    colour, alpha = x[..., :3], x[..., 3:]
    levels = [(colour * alpha, alpha)]
    while min(levels[-1][1].shape[:2]) > 1:
        h, w = levels[-1][1].shape[:2]
        nh, nw = max(int(h / PYRAMID_FACTOR), 1), max(int(w / PYRAMID_FACTOR), 1)
        levels.append(tuple(_resize(t, nh, nw, _area_matrix) for t in levels[-1]))
    total = float(alpha.sum())
    seed = (levels[0][0].reshape(-1, 3).sum(0) / total) if total > 0 else np.full(3, 0.5, np.float32)
    fill = np.broadcast_to(seed.astype(np.float32), levels[-1][0].shape).copy()
    for premult, a in reversed(levels):
        fill = _resize(fill, a.shape[0], a.shape[1], _linear_matrix)
        fill = premult + fill * (1.0 - a)
    return np.clip(fill, 0.0, 1.0).astype(np.float32)


def checkerboard(height: int, width: int, greys: tuple[float, float] = CHECKER_GREYS) -> np.ndarray:
    """HxW float32 of 64-px cells in two greys (default 0.45 / 0.55, the preview background)."""
    yy, xx = np.indices((height, width))
    cells = ((yy // CHECKER_CELL) + (xx // CHECKER_CELL)) % 2
    return np.where(cells == 0, greys[0], greys[1]).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
