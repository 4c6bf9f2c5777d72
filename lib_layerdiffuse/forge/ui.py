"""The "LayerDiffuse" accordion in Forge's txt2img and img2img tabs (gradio 3 and 4).

The returned components follow `LayerDiffuseParams` field order, which is the reference
extension's order and therefore the positional order of `alwayson_scripts` API payloads; each
component's value is the field's real default (Forge's API fills missing trailing arguments
with these values), except the method: the panel starts on the default method of the selected
checkpoint's family (Settings -> LayerDiffuse), lists that family's methods first, and follows
the checkpoint dropdown (the hint names the family; a method of another family is replaced by
the new family's default). Image inputs are ForgeCanvas on current Forge and `gr.Image` on
early Forge.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional

from ..cutout.models import model_choices
from ..cutout.options import CutoutSettings
from ..cutout.rembg_backend import models_home
from ..form import cutout_controls, input_visibility, method_hint
from ..methods import Family, Method
from ..params import LayerDiffuseParams, ResizeMode
from .checkpoint import checkpoint_family
from .detect import detect_host
from .host import UnsupportedHostError
from .saving import alpha_notes
from .settings_page import default_method

TITLE = "LayerDiffuse"
CUTOUT_TITLE = "Cutout (rembg fallback)"
_FIELDS = {f.name: f for f in dataclasses.fields(LayerDiffuseParams)}
_DEFAULTS = LayerDiffuseParams()
_CUT_FIELDS = {f.name: f for f in dataclasses.fields(CutoutSettings)}
_CUT_DEFAULTS = CutoutSettings()

# the method each panel started on (what Forge's API fills in when a call gives no method), and
# the panels' (method dropdown, hint) to update when the checkpoint changes
START_METHODS: set[Method] = set()
_panels: list[tuple[Any, Any]] = []


def panel_hint(method: Any, family: Optional[Family]) -> str:
    """The line under the method dropdown, with the checkpoint's family and a warning when the
    method belongs to another family."""
    hint = method_hint(method)
    if family is None:
        return hint
    try:
        needed = Method.parse(method).family
    except (TypeError, ValueError):
        needed = family
    warning = f" · **This method needs {needed.label};**" if needed is not family else ""
    return f"{hint}  \nSelected checkpoint: **{family.label}**{warning}"


def follow_checkpoint(title: Any, method: Any) -> tuple[dict, dict]:
    """The dropdown and hint updates when the checkpoint dropdown shows `title`."""
    import gradio as gr

    family = checkpoint_family(str(title) if title else None)  # Neo's dropdown starts empty
    if family is None:
        return gr.update(), gr.update(value=method_hint(method))
    try:
        keep = Method.parse(method).family is family
    except (TypeError, ValueError):
        keep = False
    value = method if keep else default_method(family).value
    return (gr.update(choices=Method.choices(forge=True, first=family), value=value),
            gr.update(value=panel_hint(value, family)))


_checkpoint: list = []  # the WebUI's checkpoint dropdown, until the panels are wired to it


def attach_to_checkpoint(component: Any, **kwargs: Any) -> None:
    """`script_callbacks.on_after_component` callback: when the WebUI builds its checkpoint
    dropdown (after the tabs: elem_id "setting_sd_model_checkpoint" on early Forge and Neo, the
    "Checkpoint" dropdown of class "model_selection" on current Forge), every panel follows it.
    Current Forge creates that dropdown outside any gradio Blocks, where no event can be added:
    then the panels are wired when the next component is made inside the page's Blocks."""
    classes = kwargs.get("elem_classes") or []
    classes = [classes] if isinstance(classes, str) else list(classes)
    if kwargs.get("elem_id") == "setting_sd_model_checkpoint" or (
            kwargs.get("label") == "Checkpoint" and "model_selection" in classes):
        _checkpoint[:] = [component]
    if not _checkpoint or not _inside_blocks():
        return
    dropdown = _checkpoint.pop()
    for method, hint in _panels:
        dropdown.change(follow_checkpoint, inputs=[dropdown, method], outputs=[method, hint],
                        show_progress=False, queue=False)


def _inside_blocks() -> bool:
    """Whether gradio is building a Blocks now (events can be added)."""
    context = getattr(getattr(sys.modules.get("gradio"), "context", None), "Context", None)
    return context is None or getattr(context, "root_block", None) is not None


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


def canvas_class() -> Optional[type]:
    try:
        from modules_forge.forge_canvas.canvas import ForgeCanvas
        return ForgeCanvas
    except Exception:
        return None


def image_input(gr, label: str, canvas: Optional[type], visible: bool):
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
                                   lambda label, visible: image_input(gr, label, canvas, visible),
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
    family = checkpoint_family()
    start = default_method(family)
    if not is_img2img:  # txt2img is built first, on every (re)load of the UI
        START_METHODS.clear()
        _panels.clear()
        _checkpoint.clear()
    START_METHODS.add(start)
    shown = input_visibility(start)
    canvas = canvas_class()
    with gr.Accordion(open=False, label=TITLE, elem_id=script.elem_id("accordion")):
        notes = host_notes()
        if notes:
            gr.Markdown("\n".join(f"- {n}" for n in notes))
        enabled = gr.Checkbox(label=meta["enabled"]["label"], value=_DEFAULTS.enabled,
                              elem_id=script.elem_id("enabled"))
        method = gr.Dropdown(label=meta["method"]["label"], choices=Method.choices(forge=True, first=family),
                             value=start.value, type="value", elem_id=script.elem_id("method"))
        # not kept in the WebUI's ui-config.json: a value stored there (from any earlier start)
        # would win over the checkpoint's family; Settings -> LayerDiffuse holds the defaults
        method.do_not_save_to_config = True
        hint = gr.Markdown(panel_hint(start, family))
        _panels.append((method, hint))
        with gr.Row():
            weight = gr.Slider(label=meta["weight"]["label"], value=_DEFAULTS.weight, minimum=0.0,
                               maximum=2.0, step=0.001, elem_id=script.elem_id("weight"))
            stop_at = gr.Slider(label=meta["stop_at"]["label"], value=_DEFAULTS.stop_at, minimum=0.0,
                                maximum=1.0, step=0.01, elem_id=script.elem_id("stop_at"))
        with gr.Row():
            columns, images = [], []
            for name in ("fg_image", "bg_image", "blend_image"):
                column, component = image_input(gr, meta[name]["label"], canvas, shown[name])
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
        return [gr.update(value=panel_hint(value, checkpoint_family()))] + updates

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
