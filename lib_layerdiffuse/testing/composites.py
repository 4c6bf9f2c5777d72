"""Synthetic cutout cases with exactly known alpha and foreground colour.

Foregrounds: a soft-edged disc, a body with hair-like strands, a glass-like panel (uniform
partial alpha inside an opaque frame) and, when given, real LayerDiffuse RGBA outputs.
Backgrounds: solid, gradient, textured. The composite is `round(255 * (a F + (1 - a) B))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image


@dataclass
class Case:
    name: str
    image: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray  # HxW float32
    fg: np.ndarray  # HxWx3 float32
    background: np.ndarray  # HxWx3 float32


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return yy / size, xx / size


def subject_colours(size: int) -> np.ndarray:
    """A warm, gently varying colour (so colour estimation has something to get right)."""
    yy, xx = _grid(size)
    return np.stack([0.85 + 0.1 * np.sin(xx * 9), 0.35 + 0.15 * np.cos(yy * 7), 0.15 + 0.1 * xx], -1)


def soft_disc(size: int, feather: float = 3.0) -> np.ndarray:
    yy, xx = _grid(size)
    r = np.hypot(yy - 0.5, xx - 0.5) * size
    from scipy.special import erf

    return (0.5 - 0.5 * erf((r - 0.3 * size) / (feather * np.sqrt(2)))).astype(np.float32)


def strands(size: int, count: int = 9) -> np.ndarray:
    """A disc body with thin wavy strands rising from it (1-2 px wide, partly translucent)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    body = soft_disc(size, 1.5)
    alpha = body.copy()
    rng = np.random.default_rng(7)
    for i in range(count):
        x0 = size * (0.3 + 0.4 * i / max(count - 1, 1))
        centre = x0 + size * 0.03 * np.sin(yy / (size * 0.05) + rng.uniform(0, 6))
        width = rng.uniform(0.6, 1.2)
        line = np.clip(1.0 + width - np.abs(xx - centre), 0.0, 1.0) * rng.uniform(0.6, 1.0)
        line[yy > size * 0.5] = 0.0
        line[yy < size * 0.06] = 0.0
        alpha = np.maximum(alpha, line)
    return alpha.astype(np.float32)


def glass_panel(size: int) -> np.ndarray:
    """A rectangle of 50% alpha inside an opaque 6% frame, edges anti-aliased by one pixel."""
    yy, xx = _grid(size)
    outer = (np.abs(yy - 0.5) < 0.3) & (np.abs(xx - 0.5) < 0.3)
    inner = (np.abs(yy - 0.5) < 0.24) & (np.abs(xx - 0.5) < 0.24)
    alpha = np.where(inner, 0.5, np.where(outer, 1.0, 0.0)).astype(np.float32)
    from scipy.ndimage import uniform_filter

    return uniform_filter(alpha, 2)


def solid(size: int) -> np.ndarray:
    return np.broadcast_to(np.array([0.92, 0.93, 0.95], np.float32), (size, size, 3)).copy()


def gradient(size: int) -> np.ndarray:
    yy, xx = _grid(size)
    return np.stack([0.2 + 0.6 * yy, 0.5 + 0.3 * xx, 0.8 - 0.4 * yy], -1).astype(np.float32)


def textured(size: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(3).random((size, size, 3)).astype(np.float32)
    smooth = gaussian_filter(noise, (size / 40, size / 40, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.2 + 0.6 * smooth).astype(np.float32)


FOREGROUNDS = {"disc": soft_disc, "strands": strands, "glass": glass_panel}
BACKGROUNDS = {"solid": solid, "gradient": gradient, "textured": textured}


def compose(name: str, alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> Case:
    a = alpha[..., None]
    image = np.round(np.clip(a * fg + (1 - a) * bg, 0, 1) * 255).astype(np.uint8)
    return Case(name, image, alpha.astype(np.float32), fg.astype(np.float32), bg.astype(np.float32))


def synthetic_case(foreground: str, background: str, size: int = 256) -> Case:
    return compose(f"{foreground}/{background}", FOREGROUNDS[foreground](size), subject_colours(size),
                   BACKGROUNDS[background](size))


def synthetic_cases(size: int = 256) -> Iterator[Case]:
    for fg in FOREGROUNDS:
        for bg in BACKGROUNDS:
            yield synthetic_case(fg, bg, size)


# ---- real RGBA foregrounds over seeded smooth backdrops (the weight-free cutout's benchmark) ----

BACKDROPS = ("vignette", "gradient", "cos4", "close", "jpeg")


def _unit_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return (yy + 0.5) / h * 2 - 1, (xx + 0.5) / w * 2 - 1


def vignetted(h: int, w: int, rng: np.random.Generator, strong: bool = False) -> np.ndarray:
    """A flat colour darkening towards the corners: mildly (1 - k r^2, k 0.15..0.35) or, with
    `strong`, by a lens's cos^4 falloff (corners at 25..50% of the middle), off-centre."""
    colour = rng.uniform(0.1, 0.95, 3).astype(np.float32)
    y, x = _unit_grid(h, w)
    cy, cx = rng.uniform(-0.2, 0.2, 2)
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / 2
    if strong:
        falloff = 1.0 / (1.0 + r2 / rng.uniform(0.9, 1.4) ** 2) ** 2
    else:
        falloff = 1.0 - rng.uniform(0.15, 0.35) * r2
    return colour * falloff[..., None]


def linear_gradient(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A linear blend between two colours 0.1..0.35 apart, in a random direction."""
    start = rng.uniform(0.1, 0.9, 3)
    step = rng.normal(size=3)
    step *= rng.uniform(0.1, 0.35) / np.linalg.norm(step)
    end = np.clip(start + step, 0, 1)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = _unit_grid(h, w)
    t = (np.cos(angle) * x + np.sin(angle) * y) / (2 * np.sqrt(2)) + 0.5
    return (start + (end - start) * t[..., None]).astype(np.float32)


def close_colour(h: int, w: int, rng: np.random.Generator, fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The subject's median opaque colour moved 0.08..0.15 in a random direction, mildly vignetted."""
    opaque = fg[alpha > 0.9]
    colour = np.median(opaque, axis=0) if len(opaque) else np.full(3, 0.5)
    step = rng.normal(size=3)
    colour = np.clip(colour + step / np.linalg.norm(step) * rng.uniform(0.08, 0.15), 0, 1)
    y, x = _unit_grid(h, w)
    return (colour * (1 - 0.05 * (y ** 2 + x ** 2))[..., None]).astype(np.float32)


def noisy_jpeg(image: np.ndarray, rng: np.random.Generator, quality: int = 75, noise: float = 0.02) -> np.ndarray:
    """`image` with Gaussian noise (sigma `noise` per channel) saved as a JPEG of `quality`."""
    import io

    noisy = np.clip(image / 255.0 + rng.normal(0, noise, image.shape), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.round(noisy * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as img:
        return np.asarray(img.convert("RGB"))


def load_rgba(path: Path, size: Optional[int] = None, cut: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(colour HxWx3, alpha HxW) floats of a straight-alpha PNG, resized to size x size. With
    `cut` 1 or 2, a square crop the subject runs out of first (`cut_by_frame`)."""
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
        if cut:
            rgba = rgba.crop(cut_by_frame(np.asarray(rgba)[..., 3], left=cut == 1))
        if size:
            rgba = rgba.resize((size, size), Image.LANCZOS)
        arr = np.asarray(rgba, np.float32) / 255.0
    return arr[..., :3], arr[..., 3]


def cut_by_frame(alpha: np.ndarray, left: bool = True) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a square crop that the subject (alpha over half) runs out
    of at the bottom and at the left (or right) side: 80% of the subject's larger side, its
    bottom 15% of that above the subject's lowest row, its side 10% inside the subject's."""
    h, w = alpha.shape
    rows, cols = np.nonzero(alpha > 127)
    if rows.size == 0:
        return 0, 0, w, h
    side = min(h, w, max(8, round(0.8 * max(np.ptp(rows) + 1, np.ptp(cols) + 1))))
    bottom = min(h, max(side, int(rows.max()) + 1 - round(0.15 * side)))
    if left:
        x0 = min(max(0, int(cols.min()) + round(0.1 * side)), w - side)
    else:
        x0 = max(0, min(int(cols.max()) + 1 - round(0.1 * side), w) - side)
    return x0, bottom - side, x0 + side, bottom


def backdrop_case(name: str, fg: np.ndarray, alpha: np.ndarray, backdrop: str, rng: np.random.Generator) -> Case:
    """`fg` over one of BACKDROPS, drawn from `rng`."""
    h, w = alpha.shape
    if backdrop in ("vignette", "jpeg"):
        back = vignetted(h, w, rng)
    elif backdrop == "cos4":
        back = vignetted(h, w, rng, strong=True)
    elif backdrop == "gradient":
        back = linear_gradient(h, w, rng)
    elif backdrop == "close":
        back = close_colour(h, w, rng, fg, alpha)
    else:
        raise ValueError(f"unknown backdrop {backdrop!r}; valid backdrops are {', '.join(BACKDROPS)}")
    case = compose(f"{name}/{backdrop}", alpha, fg, back)
    if backdrop == "jpeg":
        case.image = noisy_jpeg(case.image, rng)
    return case


def backdrop_cases(folder: Path, size: int = 384, seed: int = 0,
                   backdrops: tuple = ("vignette", "gradient"), cut: bool = False) -> Iterator[Case]:
    """Every RGBA PNG of `folder` over each backdrop, seeded per (seed, file, backdrop). With
    `cut`, each subject runs out of the frame (`cut_by_frame`: bottom and left for even files,
    bottom and right for odd ones) and the case is named "<file> cut"."""
    for index, path in enumerate(sorted(Path(folder).glob("*.png"))):
        fg, alpha = load_rgba(path, size, cut=(1 + index % 2) if cut else 0)
        name = path.stem.split("__")[-1] + (" cut" if cut else "")
        for backdrop in backdrops:
            rng = np.random.default_rng([seed, index, BACKDROPS.index(backdrop)] + ([1] if cut else []))
            yield backdrop_case(name, fg, alpha, backdrop, rng)
