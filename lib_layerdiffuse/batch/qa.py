"""Alpha checks for generated transparent images, and trimming to the subject.

The failures users meet in batch runs, each found from the alpha channel alone:
- "empty": nothing is opaque (the decoder saw no subject);
- "opaque": nothing is transparent, the "pink hue / no transparency" result of a checkpoint the
  patch does not suit;
- "cut": the subject runs into the frame, so the asset is cropped;
- "noise": the alpha is speckle rather than a shape (many small islands, no dominant one);
and the two that users report for native-RGBA decoders (Qwen-Image-2.1), off by default:
- "specks": many pixels of alpha 1..SPECK_ALPHA, invisible over white, plain over a dark layer;
- "grid": alpha steps along the decoder's 16-px tile lines in the near-transparent background.
`engine.qwen.clean_alpha` (the alpha floor) clears both where they stay under the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

CHECKS = ("empty", "opaque", "cut", "noise", "specks", "grid")
DEFAULT_CHECKS = CHECKS[:4]
SOLID = 128  # alpha at or above this counts as subject
EMPTY_FRACTION = 0.002  # less subject than this is "empty"
OPAQUE_ALPHA, OPAQUE_FRACTION = 250, 0.995  # this share of pixels at least this opaque: "opaque"
CUT_FRACTION = 0.25  # subject along more than this share of one side: "cut"
NOISE_ISLANDS, NOISE_LARGEST = 40, 0.5  # more islands than this and the largest under this share: "noise"
SPECK_ALPHA, SPECK_FRACTION = 5, 0.01  # more than this share of pixels at alpha 1..5: "specks"
GRID_PERIOD, GRID_BACKGROUND = 16, 64  # the RGBA decoder's tile, in pixels; alpha under this is background
GRID_RATIO, GRID_STEP = 2.0, 0.5  # tile-line steps this many times the others, and at least this large: "grid"


@dataclass(frozen=True)
class AlphaReport:
    flags: tuple[str, ...]
    coverage: float  # share of the image that is subject
    bbox: Optional[tuple[int, int, int, int]]  # (left, top, right, bottom) of the subject, exclusive
    specks: float = 0.0  # share of pixels at alpha 1..SPECK_ALPHA
    grid: float = 0.0  # alpha steps on GRID_PERIOD tile lines against the others, in the background

    @property
    def passed(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict:
        return {"flags": list(self.flags), "coverage": round(self.coverage, 4),
                "bbox": list(self.bbox) if self.bbox else None, "specks": round(self.specks, 4),
                "grid": round(self.grid, 2)}


def check_alpha(alpha: np.ndarray, checks: tuple[str, ...] = DEFAULT_CHECKS) -> AlphaReport:
    """Run `checks` on an HxW uint8 alpha channel."""
    solid = alpha >= SOLID
    coverage = float(solid.mean())
    flags = []
    if "empty" in checks and coverage < EMPTY_FRACTION:
        flags.append("empty")
    if "opaque" in checks and float((alpha >= OPAQUE_ALPHA).mean()) >= OPAQUE_FRACTION:
        flags.append("opaque")
    if "cut" in checks and not flags and _cut(solid):
        flags.append("cut")
    if "noise" in checks and not flags and _speckled(solid):
        flags.append("noise")
    specks = float(((alpha > 0) & (alpha <= SPECK_ALPHA)).mean())
    if "specks" in checks and specks > SPECK_FRACTION:
        flags.append("specks")
    grid, step = grid_strength(alpha)
    if "grid" in checks and grid > GRID_RATIO and step >= GRID_STEP:
        flags.append("grid")
    return AlphaReport(tuple(flags), coverage, _bbox(alpha > 0), specks, grid)


def grid_strength(alpha: np.ndarray, period: int = GRID_PERIOD) -> tuple[float, float]:
    """(ratio, mean step): how much larger the alpha steps across the `period`-pixel tile lines
    are than those across the other pixel lines, in the near-transparent background, and the
    mean step on the tile lines (alpha units). 0 where there is no background to measure."""
    a = alpha.astype(np.float32)
    on, off = [], []
    for steps, high in ((np.abs(np.diff(a, axis=1)), np.maximum(a[:, 1:], a[:, :-1])),
                        (np.abs(np.diff(a, axis=0)).T, np.maximum(a[1:], a[:-1]).T)):
        background = high < GRID_BACKGROUND  # both pixels near-transparent: no subject edge counted
        lines = (np.arange(steps.shape[1]) + 1) % period == 0
        on.append(steps[:, lines][background[:, lines]])
        off.append(steps[:, ~lines][background[:, ~lines]])
    on_steps, off_steps = np.concatenate(on), np.concatenate(off)
    if on_steps.size == 0 or off_steps.size == 0:
        return 0.0, 0.0
    step = float(on_steps.mean())
    return step / (float(off_steps.mean()) + 0.05), step


def _cut(solid: np.ndarray) -> bool:
    sides = (solid[0], solid[-1], solid[:, 0], solid[:, -1])
    return any(float(side.mean()) > CUT_FRACTION for side in sides)


def _speckled(solid: np.ndarray) -> bool:
    from scipy import ndimage

    labels, count = ndimage.label(solid)
    if count <= NOISE_ISLANDS:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes.max()) < NOISE_LARGEST * float(sizes.sum())


def _bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def trim(image: Image.Image, padding: int) -> Image.Image:
    """An RGBA image cropped to its non-transparent pixels plus `padding` (kept inside the image);
    a fully transparent image is returned as it is."""
    if image.mode != "RGBA":
        return image
    box = _bbox(np.asarray(image)[..., 3] > 0)
    if box is None:
        return image
    left, top, right, bottom = box
    w, h = image.size
    return image.crop((max(0, left - padding), max(0, top - padding), min(w, right + padding), min(h, bottom + padding)))
