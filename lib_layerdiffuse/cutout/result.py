"""A finished cutout and the outputs made from it: straight-alpha RGBA, mask, or composites.

Colours are the estimated foreground (or the image's own with refinement "none"), kept as
uint8; composites are `alpha * F + (1 - alpha) * B` at full resolution (in row strips, so a
large image needs no full-size float arrays), so no edge is darkened or tinted by the old
background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..vae.pixels import checkerboard, to_uint8
from .options import CutoutSettings, Output
from .refine import row_strips


@dataclass
class CutoutResult:
    image: np.ndarray  # HxWx3 uint8, the input (flattened over grey when it had alpha)
    alpha: np.ndarray  # HxW float32 in [0, 1]
    colour: np.ndarray  # HxWx3 uint8, the subject's colour (estimated at soft edges, spread under alpha 0)
    settings: CutoutSettings
    model: str  # what ran, e.g. "isnet-general-use on CPUExecutionProvider"
    notes: list[str] = field(default_factory=list)

    @property
    def foreground(self) -> np.ndarray:
        """The subject's colour as HxWx3 float32 in [0, 1] (a new full-size array)."""
        return self.colour.astype(np.float32) / 255.0

    def rgba(self) -> np.ndarray:
        """HxWx4 uint8, straight alpha."""
        return np.concatenate([self.colour, self.mask()[..., None]], axis=2)

    def mask(self) -> np.ndarray:
        return to_uint8(self.alpha)

    def over(self, background: Union[Sequence[int], np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 composite over an (r, g, b) colour or an image (fitted to cover the cutout,
        centred; an image's own alpha is flattened over the settings' colour), made in row strips."""
        h, w = self.alpha.shape
        arr = np.asarray(background)
        backdrop = arr[:3].astype(np.float32)[None, None] if arr.ndim == 1 else fit_cover(arr, w, h, self.settings.rgb)
        out = np.empty((h, w, 3), np.uint8)
        for rows in row_strips(h, w * 3 * 4 * 4):
            a = self.alpha[rows][..., None]
            back = np.broadcast_to(backdrop, (h, w, 3))[rows].astype(np.float32)
            mixed = a * self.colour[rows].astype(np.float32) + (1.0 - a) * back
            out[rows] = np.round(np.clip(mixed, 0.0, 255.0)).astype(np.uint8)
        return out

    def preview(self) -> np.ndarray:
        """HxWx3 uint8 over the checkerboard used for transparent previews."""
        h, w = self.alpha.shape
        return self.over(to_uint8(np.repeat(checkerboard(h, w)[..., None], 3, axis=2)))

    def render(self) -> Image.Image:
        """The output the settings ask for."""
        out = self.settings.output
        if out is Output.RGBA:
            return Image.fromarray(self.rgba(), "RGBA")
        if out is Output.MASK:
            return Image.fromarray(self.mask(), "L")
        if out is Output.COLOR:
            return Image.fromarray(self.over(self.settings.rgb), "RGB")
        if self.settings.background is None:
            raise ValueError("cutout output 'over an image' needs a background image (background=...)")
        return Image.fromarray(self.over(self.settings.background), "RGB")

    def parameters(self) -> str:
        """`infotext()` as one line of `key: value` pairs (the PNG "parameters" text)."""
        return ", ".join(f"{k}: {v}" for k, v in self.infotext().items())

    def infotext(self) -> dict:
        """The settings as `layerdiffusion_cutout_*` keys, with the model that ran."""
        info = self.settings.to_infotext()
        info.pop(CutoutSettings.__dataclass_fields__["enabled"].metadata["infotext"], None)
        return {"layerdiffusion_cutout": self.model, **info}


def fit_cover(image: np.ndarray, width: int, height: int, matte: Optional[Sequence[int]] = None) -> np.ndarray:
    """HxWx3 uint8: `image` (RGB or RGBA uint8) scaled to cover width x height and centre-cropped;
    RGBA is flattened over `matte` first."""
    pil = Image.fromarray(image)
    if pil.mode == "RGBA":
        base = Image.new("RGBA", pil.size, tuple(matte or (255, 255, 255)) + (255,))
        pil = Image.alpha_composite(base, pil)
    pil = pil.convert("RGB")
    scale = max(width / pil.width, height / pil.height)
    size = (max(width, round(pil.width * scale)), max(height, round(pil.height * scale)))
    pil = pil.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(pil.crop((left, top, left + width, top + height)))
