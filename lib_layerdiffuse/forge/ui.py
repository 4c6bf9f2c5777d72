"""The "LayerDiffuse" accordion in Forge's txt2img and img2img tabs (gradio 3 and 4).

The returned components follow `LayerDiffuseParams` field order, which is the reference
extension's order and therefore the positional order of `alwayson_scripts` API payloads; each
component's value is the field's real default (Forge's API fills missing trailing arguments
with these values). Image inputs are ForgeCanvas on current Forge and `gr.Image` on early Forge.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ..cutout.models import model_choices
from ..cutout.options import CutoutSettings
from ..cutout.rembg_backend import models_home
from ..form import cutout_controls, input_visibility, method_hint
from ..methods import Method
from ..params import LayerDiffuseParams, ResizeMode
from .host import UnsupportedHostError, detect_host
from .saving import alpha_notes

TITLE = "LayerDiffuse"
CUTOUT_TITLE = "Cutout (rembg fallback)"
_FIELDS = {f.name: f for f in dataclasses.fields(LayerDiffuseParams)}
_DEFAULTS = LayerDiffuseParams()
_CUT_FIELDS = {f.name: f for f in dataclasses.fields(CutoutSettings)}
_CUT_DEFAULTS = CutoutSettings()


def host_notes() -> list[str]:
    """Warnings shown at the top of the panel: an unsupported WebUI, settings that strip alpha."""
    notes = []
    try:
        detect_host()
    except UnsupportedHostError as exc:
        notes.append(f"**LayerDiffuse cannot run here:** {exc}")
    try:
        from modules import shared  # Forge

        notes.extend(alpha_notes(shared.opts))
    except Exception:
        pass
    return notes


def _canvas_class() -> Optional[type]:
    try:
        from modules_forge.forge_canvas.canvas import ForgeCanvas
        return ForgeCanvas
    except Exception:
        return None


def _image_input(gr, label: str, canvas: Optional[type], visible: bool):
    """A column holding one RGBA image input; returns (column, input component)."""
    with gr.Column(visible=visible) as column:
        if canvas is not None:
            gr.Markdown(label)
            component = canvas(numpy=True, no_scribbles=True, height=300).background
        else:
            component = gr.Image(label=label, source="upload", image_mode="RGBA", type="numpy")
    return column, component


def _paste_method(params: dict) -> Optional[str]:
    text = params.get(_FIELDS["method"].metadata["infotext"])
    if text is None:
        return None
    try:
        return Method.parse(text).value
    except ValueError:
        return None


def _build_cutout(gr, script: Any, canvas: Optional[type]) -> tuple[list, list]:
    """The nested cutout accordion: (components in CutoutSettings order, infotext fields)."""
    meta = {name: f.metadata for name, f in _CUT_FIELDS.items()}
    with gr.Accordion(open=False, label=CUTOUT_TITLE, elem_id=script.elem_id("cutout")):
        gr.Markdown("Cuts out every image LayerDiffuse did not make transparent (another checkpoint, "
                    "LayerDiffuse off, an opaque method). Models download on first use into models/u2net; "
                    "ONNX files of your own there (BiRefNet, U2-Net, IS-Net) are listed as local:<name> "
                    "(restart to list new ones).")
        enabled = gr.Checkbox(label=meta["enabled"]["label"], value=_CUT_DEFAULTS.enabled,
                              elem_id=script.elem_id("cutout_enabled"))
        controls = cutout_controls(gr, _CUT_DEFAULTS.model, script.elem_id,
                                   lambda label, visible: _image_input(gr, label, canvas, visible),
                                   choices=model_choices(models_home()))
    components = [enabled, *controls]
    key = {name: m["infotext"] for name, m in meta.items()}
    fields = [(enabled, lambda d: d.get(key["enabled"], False))]
    fields += [(c, key[name]) for c, name in zip(components[1:-1], list(_CUT_FIELDS)[1:-1])]
    return components, fields


def build_ui(script: Any, is_img2img: bool) -> list:
    """Build the accordion; returns the input components in argument order."""
    import gradio as gr

    meta = {name: f.metadata for name, f in _FIELDS.items()}
    shown = input_visibility(_DEFAULTS.method)
    canvas = _canvas_class()
    with gr.Accordion(open=False, label=TITLE, elem_id=script.elem_id("accordion")):
        notes = host_notes()
        if notes:
            gr.Markdown("\n".join(f"- {n}" for n in notes))
        enabled = gr.Checkbox(label=meta["enabled"]["label"], value=_DEFAULTS.enabled,
                              elem_id=script.elem_id("enabled"))
        method = gr.Dropdown(label=meta["method"]["label"], choices=Method.choices(forge=True),
                             value=_DEFAULTS.method.value, type="value", elem_id=script.elem_id("method"))
        hint = gr.Markdown(method_hint(_DEFAULTS.method))
        with gr.Row():
            weight = gr.Slider(label=meta["weight"]["label"], value=_DEFAULTS.weight, minimum=0.0,
                               maximum=2.0, step=0.001, elem_id=script.elem_id("weight"))
            stop_at = gr.Slider(label=meta["stop_at"]["label"], value=_DEFAULTS.stop_at, minimum=0.0,
                                maximum=1.0, step=0.01, elem_id=script.elem_id("stop_at"))
        with gr.Row():
            columns, images = [], []
            for name in ("fg_image", "bg_image", "blend_image"):
                column, component = _image_input(gr, meta[name]["label"], canvas, shown[name])
                columns.append(column)
                images.append(component)
        resize_mode = gr.Radio(label=meta["resize_mode"]["label"], choices=[m.value for m in ResizeMode],
                               value=_DEFAULTS.resize_mode.value, type="value", visible=shown["resize_mode"])
        output_origin = gr.Checkbox(label=meta["output_origin"]["label"], value=_DEFAULTS.output_origin,
                                    visible=is_img2img)
        prompts = [gr.Textbox(label=meta[name]["label"], value="", visible=shown[name], lines=1,
                              placeholder="Added before the prompt for this layer")
                   for name in ("fg_prompt", "bg_prompt", "blend_prompt")]
        cutout, cutout_fields = _build_cutout(gr, script, canvas)

    def on_method(value):
        vis = input_visibility(value)
        updates = [gr.update(visible=vis[n]) for n in ("fg_image", "bg_image", "blend_image")]
        updates.append(gr.update(visible=vis["resize_mode"]))
        updates += [gr.update(visible=True) if vis[n] else gr.update(visible=False, value="")
                    for n in ("fg_prompt", "bg_prompt", "blend_prompt")]
        return [gr.update(value=method_hint(value))] + updates

    method.change(on_method, inputs=[method], outputs=[hint, *columns, resize_mode, *prompts],
                  show_progress=False, queue=False)

    components = [enabled, method, weight, stop_at, *images, resize_mode, output_origin, *prompts]
    key = {name: m["infotext"] for name, m in meta.items()}
    script.infotext_fields = [
        (enabled, lambda d: d.get(key["enabled"], False)),
        (method, _paste_method),
        (weight, key["weight"]),
        (stop_at, key["stop_at"]),
        (resize_mode, key["resize_mode"]),
        (output_origin, lambda d: d.get(key["output_origin"], False)),
        *[(box, key[name]) for box, name in zip(prompts, ("fg_prompt", "bg_prompt", "blend_prompt"))],
        *cutout_fields,
    ]
    script.paste_field_names = [k for name, k in key.items() if meta[name]["kind"] != "image"]
    script.paste_field_names += [f.metadata["infotext"] for f in _CUT_FIELDS.values() if f.metadata["kind"] != "image"]
    return components + cutout
