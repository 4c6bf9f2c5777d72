"""The simple baselines and the oracle a cutout is judged against, on composites of known alpha.

- `colour_key`: a hard key against the median colour of the image border (the one-line cutout
  any user can do); a weight-free cutout must never be worse.
- `oracle_matting`: closed-form matting given a trimap made from the true alpha; what the best
  trimap can reach with the same matting solve.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

KEY_THRESHOLD = 0.12


def colour_key(image: np.ndarray, threshold: float = KEY_THRESHOLD) -> np.ndarray:
    """HxW float32 alpha: 1 where the colour is further than `threshold` (0..sqrt(3)) from the
    median colour of the image's outermost pixels, else 0."""
    f = image.astype(np.float32) / 255.0
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    return (np.linalg.norm(f - np.median(border, axis=0), axis=-1) > threshold).astype(np.float32)


def oracle_trimap(alpha: np.ndarray, band: int = 3) -> np.ndarray:
    """Sure foreground where the true alpha is over 0.95, sure background under 0.05, each eroded
    by `band` pixels; unknown elsewhere."""
    from scipy import ndimage

    trimap = np.full(alpha.shape, 0.5)
    trimap[ndimage.binary_erosion(alpha > 0.95, iterations=band, border_value=1)] = 1.0
    trimap[ndimage.binary_erosion(alpha < 0.05, iterations=band, border_value=1)] = 0.0
    return trimap


def oracle_matting(image: np.ndarray, alpha: np.ndarray, band: int = 3) -> np.ndarray:
    """HxW float32: closed-form matting (pymatting) of `image` with `oracle_trimap(alpha)`."""
    from ..cutout.refine import solve_alpha

    trimap = oracle_trimap(alpha, band).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        return solve_alpha(image, trimap, trimap)
