"""Cutout settings: model, edge refinement and output, for the panel, the API and the infotext.

Positional API order is the field order (after LayerDiffuse's own values in Forge); infotext
keys are `layerdiffusion_cutout_*`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from ..settings import Settings, setting
from .models import DEFAULT_MODEL, parse_model


class _Choice(str, enum.Enum):
    """An enum whose values are the UI strings; `parse` also takes member names (any case)."""

    @classmethod
    def parse(cls, value: Any):
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = " ".join(value.replace("_", " ").split()).casefold()
            for member in cls:
                if key in (member.value.casefold(), member.name.replace("_", " ").casefold()):
                    return member
        valid = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"unknown {cls.__name__.lower()} {value!r}; valid values are {valid}")


class Refine(_Choice):
    """How the edge of the mask is refined.

    NONE keeps the model's alpha and the image's colours; MATTING re-solves alpha in a band
    around the edge (closed-form matting) and estimates foreground colour; DECONTAMINATE keeps
    the alpha and estimates the true foreground colour at soft edges (removes the rim of old
    background colour).
    """

    NONE = "none"
    MATTING = "alpha matting"
    DECONTAMINATE = "decontaminate"


class Output(_Choice):
    """What a cutout produces."""

    RGBA = "transparent"
    MASK = "mask"
    COLOR = "over a colour"
    IMAGE = "over an image"


_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
_RGB = re.compile(r"^\(?\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)?$")
_NAMED = {"white": "#ffffff", "black": "#000000", "grey": "#808080", "gray": "#808080",
          "green": "#00ff00", "blue": "#0000ff", "red": "#ff0000"}


def parse_color(value: Union[str, tuple, list]) -> tuple[int, int, int]:
    """'#rrggbb', 'rrggbb', 'r,g,b', a few names, or a 3-tuple of 0..255."""
    if isinstance(value, (tuple, list, np.ndarray)) and len(value) in (3, 4):
        rgb = tuple(int(v) for v in value[:3])
    elif isinstance(value, str):
        text = _NAMED.get(value.strip().casefold(), value.strip())
        if (m := _HEX.match(text)) is not None:
            rgb = tuple(int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4))
        elif (m := _RGB.match(text)) is not None:
            rgb = tuple(int(g) for g in m.groups())
        else:
            rgb = ()
    else:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour must be '#rrggbb', 'r,g,b' with values 0..255 or one of "
                         f"{', '.join(_NAMED)}; got {value!r}")
    return rgb  # type: ignore[return-value]


def _color_text(value: Any) -> str:
    r, g, b = parse_color(value)
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True, eq=False)
class CutoutSettings(Settings):
    """Everything one cutout needs besides the image."""

    GROUP = "cutout"

    enabled: bool = setting(False, "Cut out every image", "layerdiffusion_cutout_enabled",
                            "cutout_enabled", "cutout", kind="bool")
    model: str = setting(DEFAULT_MODEL, "Cutout model", "layerdiffusion_cutout_model", "cutout_model",
                         kind="choice", parse=parse_model)
    model_path: str = setting("", "Local ONNX file", "layerdiffusion_cutout_model_path",
                              "cutout_model_path", kind="text")
    refine: Refine = setting(Refine.DECONTAMINATE, "Edge refinement", "layerdiffusion_cutout_refine",
                             "cutout_refine", kind="choice", parse=Refine.parse)
    fg_threshold: int = setting(240, "Foreground threshold", "layerdiffusion_cutout_fg_threshold",
                                "cutout_fg_threshold", kind="integer", lo=1, hi=255)
    bg_threshold: int = setting(10, "Background threshold", "layerdiffusion_cutout_bg_threshold",
                                "cutout_bg_threshold", kind="integer", lo=0, hi=254)
    edge_band: int = setting(10, "Edge band (px)", "layerdiffusion_cutout_edge_band", "cutout_edge_band",
                             "erode", "erode_size", kind="integer", lo=0, hi=64)
    output: Output = setting(Output.RGBA, "Cutout output", "layerdiffusion_cutout_output", "cutout_output",
                             kind="choice", parse=Output.parse)
    color: str = setting("#ffffff", "Background colour", "layerdiffusion_cutout_color", "cutout_color",
                         "bgcolor", kind="choice", parse=_color_text)
    background: Optional[np.ndarray] = setting(None, "Background image", "layerdiffusion_cutout_background",
                                               "cutout_background", kind="image")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bg_threshold >= self.fg_threshold:
            raise ValueError(f"cutout background threshold ({self.bg_threshold}) must be below the "
                             f"foreground threshold ({self.fg_threshold})")
        if self.output is Output.IMAGE and self.background is None and self.enabled:
            raise ValueError("cutout output 'over an image' needs a background image (background=...)")

    @classmethod
    def from_values(cls, *args: Any) -> "CutoutSettings":
        """Positional values in field order, or a dict of named values as the first value
        (which then implies `enabled=True` unless given); None means the default."""
        return cls(**{k: v for k, v in cls.script_values(args).items() if v is not None})

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> "CutoutSettings":
        values = cls.infotext_values(params)
        values.setdefault("enabled", False)
        return cls.from_values(values)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return parse_color(self.color)
