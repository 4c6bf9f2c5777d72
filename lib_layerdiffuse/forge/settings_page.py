"""Settings -> LayerDiffuse: the WebUI's own settings mechanism (`shared.opts`), read at call time.

Options are registered from `script_callbacks.on_ui_settings` and stored in the WebUI's
config.json. Early Forge runs that callback only after the txt2img/img2img/Extras interfaces
are built, and a fresh install has no stored values, so every read goes through `value()`,
which falls back to the default declared here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

from ..cutout.options import parse_color
from ..methods import Family, Method
from ..previews import PreviewStyle
from ..weights.location import FORGE_SETTING as MODELS_DIR

SECTION = ("layerdiffuse", "LayerDiffuse")
PREVIEW = "layerdiffuse_preview"
PREVIEW_COLOUR = "layerdiffuse_preview_colour"
SAVE_PREVIEW = "layerdiffuse_save_preview"
TRANSPARENT_COPY = "layerdiffuse_transparent_copy"
PANEL_FAMILIES = (Family.SD15, Family.SDXL, Family.FLUX)


def method_key(family: Family) -> str:
    return f"layerdiffuse_method_{family.value}"


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    component: str = ""  # a gradio class name; empty: the WebUI picks one from the default's type
    choices: tuple = ()
    info: str = ""


OPTIONS: tuple[Option, ...] = (
    Option(MODELS_DIR, "", "Weights folder (empty: models/layer_model)",
           info="read at every generation; the --layerdiffuse-models-dir flag and LAYERDIFFUSE_MODELS_DIR win"),
    *(Option(method_key(f), Method.default(f).value, f"Default method for {f.label} checkpoints", "Dropdown",
             tuple(m.value for m in Method if m.family is f)) for f in PANEL_FAMILIES),
    Option(PREVIEW, PreviewStyle.CHECKERBOARD.value, "Preview background of transparent results", "Radio",
           tuple(s.value for s in PreviewStyle), info="'none' shows and returns no preview image"),
    Option(PREVIEW_COLOUR, "#ffffff", "Preview colour (for the 'colour' background)", "ColorPicker"),
    Option(SAVE_PREVIEW, False, "Save the preview image too (suffix -preview)"),
    Option(TRANSPARENT_COPY, True, "When images are saved as JPEG or WebP, also save a transparent PNG "
                                   "(suffix -transparent)"),
)
_DEFAULTS = {o.key: o.default for o in OPTIONS}


def value(key: str) -> Any:
    """The option's current value: what the user set, else the default declared here (the
    WebUI may not have registered the option yet, or run without it)."""
    opts = getattr(sys.modules.get("modules.shared"), "opts", None)
    data = getattr(opts, "data", None)
    if isinstance(data, dict) and data.get(key) is not None:
        return data[key]
    return _DEFAULTS[key]


def default_method(family: Optional[Family]) -> Method:
    """The method the panel starts on for a checkpoint of `family` (the setting, when it names a
    method of that family; else the family's transparent foreground)."""
    if family not in PANEL_FAMILIES:
        return Method.default(Family.SDXL)
    try:
        chosen = Method.parse(value(method_key(family)))
    except (TypeError, ValueError):
        return Method.default(family)
    return chosen if chosen.family is family else Method.default(family)


def preview_style() -> tuple[PreviewStyle, tuple[int, int, int]]:
    """(style, colour) for previews; unknown stored values fall back to the checkerboard."""
    try:
        style = PreviewStyle.parse(value(PREVIEW))
    except ValueError:
        style = PreviewStyle.CHECKERBOARD
    try:
        colour = parse_color(value(PREVIEW_COLOUR))
    except ValueError:
        colour = (255, 255, 255)
    return style, colour


def register() -> None:
    """`script_callbacks.on_ui_settings` callback: add the section to Settings."""
    import gradio as gr
    from modules import shared  # the WebUI

    for option in OPTIONS:
        component = getattr(gr, option.component) if option.component else None
        args = {"choices": list(option.choices)} if option.choices else None
        info = shared.OptionInfo(option.default, option.label, component, args, section=SECTION)
        if option.info and hasattr(info, "info"):
            info = info.info(option.info)
        shared.opts.add_option(option.key, info)
