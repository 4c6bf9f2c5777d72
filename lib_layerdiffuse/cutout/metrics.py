"""Matting quality metrics against a known alpha and foreground colour.

The usual definitions (Rhemann et al. 2009; the Deep Image Matting evaluation): SAD and the
gradient and connectivity errors are reported divided by 1000, MSE as is (papers often scale it
by 1e3). Alphas are HxW floats in [0, 1]; colours HxWx3 floats in [0, 1].
"""

from __future__ import annotations

import numpy as np

SOFT = (0.05, 0.95)


def sad(alpha: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(alpha.astype(np.float64) - truth).sum() / 1000.0)


def mse(alpha: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((alpha.astype(np.float64) - truth) ** 2))


def gradient_error(alpha: np.ndarray, truth: np.ndarray, sigma: float = 1.4) -> float:
    """Sum of squared differences of gradient magnitudes (first-order Gaussian derivatives)."""
    from scipy.ndimage import gaussian_filter

    def magnitude(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        return np.hypot(gaussian_filter(a, sigma, order=(0, 1)), gaussian_filter(a, sigma, order=(1, 0)))

    return float(((magnitude(alpha) - magnitude(truth)) ** 2).sum() / 1000.0)


def connectivity_error(alpha: np.ndarray, truth: np.ndarray, step: float = 0.1) -> float:
    """Penalises alpha that is disconnected from the largest region both mattes agree is opaque."""
    from scipy.ndimage import label

    alpha = alpha.astype(np.float64)
    truth = truth.astype(np.float64)
    levels = np.arange(0.0, 1.0 + step / 2, step)
    reach = np.full(alpha.shape, -1.0)
    four = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    for lower, level in zip(levels[:-1], levels[1:]):
        labels, count = label((alpha >= level) & (truth >= level), structure=four)
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            omega = labels == int(sizes.argmax())
        else:
            omega = np.zeros(alpha.shape, bool)
        reach[(reach == -1) & ~omega] = lower
    reach[reach == -1] = 1.0
    d_alpha, d_truth = alpha - reach, truth - reach
    phi_alpha = 1.0 - d_alpha * (d_alpha >= 0.15)
    phi_truth = 1.0 - d_truth * (d_truth >= 0.15)
    return float(np.abs(phi_alpha - phi_truth).sum() / 1000.0)


def edge_color_error(foreground: np.ndarray, truth_fg: np.ndarray, truth_alpha: np.ndarray) -> float:
    """Mean absolute colour error (0..255) of the foreground where the true alpha is soft
    (0.05..0.95): the rim of old background colour a cutout leaves, or does not."""
    soft = (truth_alpha > SOFT[0]) & (truth_alpha < SOFT[1])
    if not soft.any():
        return 0.0
    return float(np.abs(foreground[soft].astype(np.float64) - truth_fg[soft]).mean() * 255.0)


def all_metrics(alpha: np.ndarray, foreground: np.ndarray, truth_alpha: np.ndarray, truth_fg: np.ndarray) -> dict:
    return {"SAD": sad(alpha, truth_alpha), "MSE": mse(alpha, truth_alpha),
            "Grad": gradient_error(alpha, truth_alpha), "Conn": connectivity_error(alpha, truth_alpha),
            "FG err": edge_color_error(foreground, truth_fg, truth_alpha)}


def straight_seams(alpha: np.ndarray, truth: np.ndarray, jump: float = 0.1, shortest: int = 24) -> tuple[int, int]:
    """(lines, longest run): seams in `alpha` that `truth` does not have. A seam is a run of at
    least `shortest` neighbouring pixel pairs along one row or column boundary where alpha
    steps by more than `jump` and the true alpha by less than half of that: the straight edge
    of a tile or a region decided whole, which no subject draws. `lines` counts the row and
    column boundaries holding one; `longest` is the longest such run anywhere (0: none)."""
    lines, longest = 0, 0
    a, t = alpha.astype(np.float32), truth.astype(np.float32)
    for axis in (0, 1):
        false = (np.abs(np.diff(a, axis=axis)) > jump) & (np.abs(np.diff(t, axis=axis)) < jump / 2)
        runs = _longest_runs(false if axis == 0 else false.T)
        lines += int((runs >= shortest).sum())
        longest = max(longest, int(runs.max(initial=0)))
    return lines, (longest if longest >= shortest else 0)


def _longest_runs(mask: np.ndarray) -> np.ndarray:
    """The longest run of True along each row of a 2-D bool array."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    runs = np.zeros(mask.shape[0], np.int64)
    np.maximum.at(runs, rows, ends - starts)
    return runs
