"""LayerDiffuse settings: one ordered dataclass shared by the UI, the API and the infotext.

The field order is the reference extension's `ui()` order, which is also the positional order
of `alwayson_scripts["LayerDiffuse"]["args"]`; fields added by this project come after the
reference's twelve so positional payloads written for the reference keep working. Each field's
metadata gives its UI label, its infotext key (the reference's `layerdiffusion_*` keys, so old
images paste back) and other names accepted in a dict of named values.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np

from .images import to_png_base64, to_rgba_uint8
from .methods import Family, Method


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


def _meta(label: str, infotext: str, *aliases: str, kind: str, lo: float = 0.0, hi: float = 0.0) -> dict:
    return {"label": label, "infotext": infotext, "aliases": aliases, "kind": kind, "range": (lo, hi)}


@dataclass(frozen=True, eq=False)
class LayerDiffuseParams:
    """All LayerDiffuse settings of one generation, validated and normalised.

    Build it with `from_script_args` (UI or API values), `from_infotext` (pasted parameters) or
    directly; images are HxWx4 uint8 arrays (straight alpha) or None.
    """

    enabled: bool = field(default=False, metadata=_meta(
        "Enabled", "layerdiffusion_enabled", kind="bool"))
    method: Method = field(default=Method.FG_ONLY_ATTN, metadata=_meta(
        "Method", "layerdiffusion_method", kind="method"))
    weight: float = field(default=1.0, metadata=_meta(
        "Weight", "layerdiffusion_weight", kind="number", lo=0.0, hi=2.0))
    stop_at: float = field(default=1.0, metadata=_meta(
        "Stop At", "layerdiffusion_ending_step", "ending_step", kind="number", lo=0.0, hi=1.0))
    fg_image: Optional[np.ndarray] = field(default=None, metadata=_meta(
        "Foreground", "layerdiffusion_fg_image", "foreground", "fg", kind="image"))
    bg_image: Optional[np.ndarray] = field(default=None, metadata=_meta(
        "Background", "layerdiffusion_bg_image", "background", "bg", kind="image"))
    blend_image: Optional[np.ndarray] = field(default=None, metadata=_meta(
        "Blending", "layerdiffusion_blend_image", "blending", "blend", kind="image"))
    resize_mode: ResizeMode = field(default=ResizeMode.CROP_AND_RESIZE, metadata=_meta(
        "Resize Mode", "layerdiffusion_resize_mode", kind="resize_mode"))
    output_origin: bool = field(default=False, metadata=_meta(
        "Output original mat for img2img", "layerdiffusion_output_origin", kind="bool"))
    fg_prompt: str = field(default="", metadata=_meta(
        "Foreground Additional Prompt", "layerdiffusion_fg_additional_prompt",
        "fg_additional_prompt", kind="text"))
    bg_prompt: str = field(default="", metadata=_meta(
        "Background Additional Prompt", "layerdiffusion_bg_additional_prompt",
        "bg_additional_prompt", kind="text"))
    blend_prompt: str = field(default="", metadata=_meta(
        "Blended Additional Prompt", "layerdiffusion_blend_additional_prompt",
        "blend_additional_prompt", kind="text"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _normalise(f, getattr(self, f.name)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerDiffuseParams):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # holds arrays

    # ---- construction -------------------------------------------------------------------

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
        fields = dataclasses.fields(cls)
        if args and isinstance(args[0], Mapping):
            named = cls._named_to_fields(args[0])
            named.setdefault("enabled", True)
        else:
            if len(args) > len(fields):
                raise ValueError(f"LayerDiffuse takes at most {len(fields)} positional values "
                                 f"({', '.join(f.name for f in fields)}), got {len(args)}.")
            named = {f.name: v for f, v in zip(fields, args)}
        if family is not None and isinstance(named.get("method"), str):
            named["method"] = Method.parse(named["method"], family=family)
        return cls(**{k: v for k, v in named.items() if v is not None})

    @classmethod
    def _named_to_fields(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        table = cls._name_table()
        out: dict[str, Any] = {}
        for key, value in values.items():
            name = table.get(_key(key)) if isinstance(key, str) else None
            if name is None:
                valid = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"unknown LayerDiffuse argument {key!r}; valid names are: {valid}")
            out[name] = value
        return out

    @classmethod
    def _name_table(cls) -> dict[str, str]:
        table: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            for alias in (f.name, meta["label"], meta["infotext"], *meta["aliases"]):
                table[_key(alias)] = f.name
        return table

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any], family: Union[Family, str, None] = None) -> "LayerDiffuseParams":
        """Read settings back from parsed infotext (`{key: value-string}`).

        Only this extension's keys are looked at; a missing `layerdiffusion_enabled` means off,
        so pasting an ordinary image's parameters switches LayerDiffuse off. Images cannot be
        carried by infotext (only whether one was given), so they come back as None.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["infotext"]
            if f.metadata["kind"] == "image" or key not in params:
                continue
            values[f.name] = params[key]
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

    # ---- output -------------------------------------------------------------------------

    def to_script_args(self) -> tuple:
        """Positional values in UI / API order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready named values (images as PNG data URLs); `from_script_args(d)` reverses it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = to_png_base64(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out

    def to_infotext(self) -> dict[str, Union[str, float, bool]]:
        """Plain scalars for the generation parameters text.

        Empty prompts and absent images are left out (an empty value makes WebUI log "Error
        parsing" on paste); an image that was given is recorded as True.
        """
        out: dict[str, Union[str, float, bool]] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.metadata["kind"]
            if kind == "image":
                if value is not None:
                    out[f.metadata["infotext"]] = True
                continue
            if (kind == "text" and not value) or (f.name == "output_origin" and not value):
                continue
            out[f.metadata["infotext"]] = value.value if isinstance(value, enum.Enum) else value
        return out


def _key(name: str) -> str:
    return name.strip().casefold().replace(" ", "_").replace("-", "_")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().casefold() in _TRUE | _FALSE:
        return value.strip().casefold() in _TRUE
    raise TypeError(f"{name} must be true or false, got {type(value).__name__} {value!r}")


def _as_number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}") from None
    elif isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a number between {lo:g} and {hi:g}, got {type(value).__name__}")
    if not math.isfinite(number) or not lo <= number <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {number:g}")
    return number


def _as_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {type(value).__name__} {value!r}")
    return value


def _normalise(f: dataclasses.Field, value: Any) -> Any:
    kind = f.metadata["kind"]
    if value is None and kind != "image":
        return f.default if kind != "text" else ""
    if kind == "bool":
        return _as_bool(f.name, value)
    if kind == "number":
        return _as_number(f.name, value, *f.metadata["range"])
    if kind == "text":
        return _as_text(f.name, value)
    if kind == "image":
        return to_rgba_uint8(value, f.name)
    if kind == "method":
        return Method.parse(value)
    if kind == "resize_mode":
        return ResizeMode.parse(value)
    raise AssertionError(f"unhandled field kind {kind}")
