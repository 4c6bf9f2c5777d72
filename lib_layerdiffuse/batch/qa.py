"""Alpha checks for generated transparent images, and trimming to the subject.

The failures users meet in batch runs, each found from the alpha channel alone:
- "empty": nothing is opaque (the decoder saw no subject);
- "opaque": nothing is transparent, the "pink hue / no transparency" result of a checkpoint the
  patch does not suit;
- "cut": the subject runs into the frame, so the asset is cropped;
- "noise": the alpha is speckle rather than a shape (many small islands, no dominant one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

CHECKS = ("empty", "opaque", "cut", "noise")
SOLID = 128  # alpha at or above this counts as subject
EMPTY_FRACTION = 0.002  # less subject than this is "empty"
OPAQUE_ALPHA, OPAQUE_FRACTION = 250, 0.995  # this share of pixels at least this opaque: "opaque"
CUT_FRACTION = 0.25  # subject along more than this share of one side: "cut"
NOISE_ISLANDS, NOISE_LARGEST = 40, 0.5  # more islands than this and the largest under this share: "noise"


@dataclass(frozen=True)
class AlphaReport:
    flags: tuple[str, ...]
    coverage: float  # share of the image that is subject
    bbox: Optional[tuple[int, int, int, int]]  # (left, top, right, bottom) of the subject, exclusive

    @property
    def passed(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict:
        return {"flags": list(self.flags), "coverage": round(self.coverage, 4),
                "bbox": list(self.bbox) if self.bbox else None}


def check_alpha(alpha: np.ndarray, checks: tuple[str, ...] = CHECKS) -> AlphaReport:
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
    return AlphaReport(tuple(flags), coverage, _bbox(alpha > 0))


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
