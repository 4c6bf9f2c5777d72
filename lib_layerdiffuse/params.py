"""LayerDiffuse settings: one ordered dataclass shared by the UI, the API and the infotext.

The field order is the reference extension's `ui()` order, which is also the positional order
of `alwayson_scripts["LayerDiffuse"]["args"]`; fields added by this project come after the
reference's twelve so positional payloads written for the reference keep working. Each field's
metadata gives its UI label, its infotext key (the reference's `layerdiffusion_*` keys, so old
images paste back) and other names accepted in a dict of named values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from .methods import Family, Method
from .settings import Settings, setting


class ResizeMode(str, enum.Enum):
    """How a condition image is fitted to the generation size (values are the UI strings)."""

    RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"

    @property
    def int_value(self) -> int:
        """0, 1 or 2: the number WebUI uses for the same mode."""
        return list(ResizeMode).index(self)

    @classmethod
    def parse(cls, value: Union[str, int, "ResizeMode"]) -> "ResizeMode":
        """Accept the UI string, the member name (any case) or WebUI's 0/1/2."""
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            raise TypeError(f"resize_mode must be a resize mode name, got {value!r}")
        if isinstance(value, (int, np.integer)):
            if 0 <= int(value) < len(cls):
                return list(cls)[int(value)]
            raise ValueError(f"resize_mode must be 0, 1 or 2, got {value}")
        if not isinstance(value, str):
            raise TypeError(f"resize_mode must be a resize mode name, got {type(value).__name__}")
        key = " ".join(value.split()).casefold()
        for mode in cls:
            if key in (mode.value.casefold(), mode.name.casefold(), str(mode.int_value)):
                return mode
        valid = ", ".join(f"{m.value!r}" for m in cls)
        raise ValueError(f"unknown resize_mode {value!r}; valid values are {valid} (or 0, 1, 2)")


@dataclass(frozen=True, eq=False)
class LayerDiffuseParams(Settings):
    """All LayerDiffuse settings of one generation, validated and normalised.

    Build it with `from_script_args` (UI or API values), `from_infotext` (pasted parameters) or
    directly; images are HxWx4 uint8 arrays (straight alpha) or None.
    """

    GROUP = "LayerDiffuse"

    enabled: bool = setting(False, "Enabled", "layerdiffusion_enabled", kind="bool")
    method: Method = setting(Method.FG_ONLY_ATTN, "Method", "layerdiffusion_method", kind="choice",
                             parse=Method.parse)
    weight: float = setting(1.0, "Weight", "layerdiffusion_weight", kind="number", lo=0.0, hi=2.0)
    stop_at: float = setting(1.0, "Stop At", "layerdiffusion_ending_step", "ending_step",
                             kind="number", lo=0.0, hi=1.0)
    fg_image: Optional[np.ndarray] = setting(None, "Foreground", "layerdiffusion_fg_image",
                                             "foreground", "fg", kind="image")
    bg_image: Optional[np.ndarray] = setting(None, "Background", "layerdiffusion_bg_image",
                                             "background", "bg", kind="image")
    blend_image: Optional[np.ndarray] = setting(None, "Blending", "layerdiffusion_blend_image",
                                                "blending", "blend", kind="image")
    resize_mode: ResizeMode = setting(ResizeMode.CROP_AND_RESIZE, "Resize Mode", "layerdiffusion_resize_mode",
                                      kind="choice", parse=ResizeMode.parse)
    output_origin: bool = setting(False, "Output original mat for img2img", "layerdiffusion_output_origin",
                                  kind="bool", omit_default=True)
    fg_prompt: str = setting("", "Foreground Additional Prompt", "layerdiffusion_fg_additional_prompt",
                             "fg_additional_prompt", kind="text")
    bg_prompt: str = setting("", "Background Additional Prompt", "layerdiffusion_bg_additional_prompt",
                             "bg_additional_prompt", kind="text")
    blend_prompt: str = setting("", "Blended Additional Prompt", "layerdiffusion_blend_additional_prompt",
                                "blend_additional_prompt", kind="text")

    @classmethod
    def from_script_args(cls, *args: Any, family: Union[Family, str, None] = None) -> "LayerDiffuseParams":
        """Build from the values a Forge script receives, positional or named.

        Positional: the reference's twelve values in its order (enabled, method, weight,
        stop_at, fg, bg, blend, resize_mode, output_origin, fg_prompt, bg_prompt,
        blend_prompt), then this project's additions; missing trailing values take their
        defaults and None stands for "default" (JSON null). Named: a dict as the first value
        (the only way named values get through Forge's API, which copies a list's first
        element unchanged); the host's defaults that follow it are ignored. Named values
        imply `enabled=True` unless given.
        `family` (the loaded model's) disambiguates pre-2024 method names shared by SD1.5
        and SDXL.
        """
        named = cls.script_values(args)
        if family is not None and isinstance(named.get("method"), str):
            named["method"] = Method.parse(named["method"], family=family)
        return cls(**{k: v for k, v in named.items() if v is not None})

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any], family: Union[Family, str, None] = None) -> "LayerDiffuseParams":
        """Read settings back from parsed infotext (`{key: value-string}`).

        Only this extension's keys are looked at; a missing `layerdiffusion_enabled` means off,
        so pasting an ordinary image's parameters switches LayerDiffuse off. Images cannot be
        carried by infotext (only whether one was given), so they come back as None.
        """
        values = cls.infotext_values(params)
        values.setdefault("enabled", False)
        return cls.from_script_args(values, family=family)

    def layer_image(self, layer: str) -> Optional[np.ndarray]:
        """The condition image of a layer ("fg", "bg" or "blend"), or None."""
        return getattr(self, f"{layer}_image")

    def condition_images(self) -> list[np.ndarray]:
        """The method's condition images in its order (checked to be present)."""
        self.require_condition_images()
        return [self.layer_image(n) for n in self.method.spec.conditions]

    def require_condition_images(self) -> None:
        """Raise ValueError naming the condition images the method needs but did not get."""
        spec = self.method.spec
        missing = [n for n in spec.conditions if self.layer_image(n) is None]
        if missing:
            labels = {"fg": "Foreground", "bg": "Background", "blend": "Blending"}
            raise ValueError(f"{self.method.value} needs a {' and a '.join(labels[n] for n in missing)} "
                             f"image ({', '.join(n for n in missing)}=...)")

    def frame_prompts(self, prompt: str) -> list[Optional[str]]:
        """Per frame of the method, "<additional prompt>, <prompt>" where the frame has an
        additional prompt, else None (the frame uses the prompt itself)."""
        spec = self.method.spec
        extras = [getattr(self, f"{frame}_prompt") if frame in spec.prompts else "" for frame in spec.frames]
        return [f"{extra}, {prompt}" if extra else None for extra in extras]
