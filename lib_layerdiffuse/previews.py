"""How a transparent result is shown where a viewer cannot show alpha: over a checkerboard (the
reference's mid greys, a dark or a light one), over one colour, or not at all."""

from __future__ import annotations

import enum
from typing import Any, Optional, Sequence

import numpy as np

from .vae.pixels import CHECKER_GREYS, checkerboard

_GREYS = {"checkerboard": CHECKER_GREYS, "dark checkerboard": (0.12, 0.2), "light checkerboard": (0.8, 0.94)}


class PreviewStyle(str, enum.Enum):
    """The background of the preview image (values are the UI strings)."""

    CHECKERBOARD = "checkerboard"
    DARK = "dark checkerboard"
    LIGHT = "light checkerboard"
    COLOUR = "colour"
    NONE = "none"

    @classmethod
    def parse(cls, value: Any) -> "PreviewStyle":
        if isinstance(value, cls):
            return value
        key = " ".join(str(value).replace("_", " ").split()).casefold()
        for style in cls:
            if key in (style.value, style.name.casefold(), style.name.casefold().replace("colour", "color")):
                return style
        if key == "color":
            return cls.COLOUR
        valid = ", ".join(repr(s.value) for s in cls)
        raise ValueError(f"unknown preview background {value!r}; valid values are {valid}")


def preview(rgba: np.ndarray, style: PreviewStyle = PreviewStyle.CHECKERBOARD,
            colour: Sequence[int] = (255, 255, 255)) -> Optional[np.ndarray]:
    """HxWx3 uint8: the straight-alpha HxWx4 uint8 `rgba` over the style's background, or None
    for `PreviewStyle.NONE`. Made in float32 once per image (previews are screen-sized)."""
    style = PreviewStyle.parse(style)
    if style is PreviewStyle.NONE:
        return None
    h, w = rgba.shape[:2]
    if style is PreviewStyle.COLOUR:
        back = np.broadcast_to(np.asarray(colour[:3], np.float32) / 255.0, (h, w, 3))
    else:
        back = checkerboard(h, w, _GREYS[style.value])[..., None]
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    mixed = rgba[..., :3].astype(np.float32) / 255.0 * alpha + back * (1.0 - alpha)
    return np.round(np.clip(mixed, 0.0, 1.0) * 255.0).astype(np.uint8)
