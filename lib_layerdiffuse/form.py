"""What the settings forms show: which inputs a method or a cutout setting uses, and the hint
line under the method dropdown. Shared by the Forge panel and the standalone web app, so both
show and hide the same inputs for the same choice."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from .cutout.models import LOCAL_FILE, MODEL_CHOICES, model_label
from .cutout.options import CutoutSettings, Output, Refine
from .methods import Method

CONDITIONAL = ("fg_image", "bg_image", "blend_image", "resize_mode", "fg_prompt", "bg_prompt", "blend_prompt")


def input_visibility(method: Any) -> dict[str, bool]:
    """Which method-specific inputs `method` uses (the others are hidden)."""
    try:
        spec = Method.parse(method).spec
    except (TypeError, ValueError):
        return {name: False for name in CONDITIONAL}
    shown = {f"{n}_image": n in spec.conditions for n in ("fg", "bg", "blend")}
    shown["resize_mode"] = bool(spec.conditions)
    shown.update({f"{n}_prompt": n in spec.prompts for n in ("fg", "bg", "blend")})
    return shown


def method_hint(method: Any) -> str:
    """One line under the dropdown: what the method makes and what it needs."""
    try:
        m = Method.parse(method)
    except (TypeError, ValueError):
        return ""
    spec = m.spec
    needs = ", ".join({"fg": "a foreground", "bg": "a background", "blend": "a blended image"}[c]
                      for c in spec.conditions) or "only the prompt"
    frames = f"; batch size must be a multiple of {spec.frame_count} ({', '.join(spec.frames)})" \
        if spec.frame_count > 1 else ""
    out = "transparent" if spec.transparent else "opaque"
    licence = f" · **Licence:** {spec.licence}" if spec.licence else ""
    return f"{m.family.label} checkpoint · needs {needs} · {out} output{frames}{licence}"


def cutout_visibility(model: Any, output: Any) -> dict[str, bool]:
    """Which cutout inputs the chosen model and output use."""
    try:
        out = Output.parse(output)
    except ValueError:
        out = None
    return {"model_path": model == LOCAL_FILE, "color": out is Output.COLOR, "background": out is Output.IMAGE}


def cutout_controls(gr: Any, default_model: str, elem_id: Callable[[str], str],
                    image_input: Callable[[str, bool], tuple], choices: Optional[list] = None,
                    describe: Callable[[str], str] = model_label) -> list:
    """Build the cutout settings (gradio 3 to 6) and wire their show/hide events.

    Returns the components of every CutoutSettings field after `enabled`, in field order.
    `image_input(label, visible)` builds the background image input and returns (the element to
    show or hide, the input component): Forge has its own canvas, the web app a plain image.
    `choices` (default: the model names) may be (label, name) pairs where the gradio has them
    (4 and later), e.g. labels that say which models are downloaded; `describe(name)` is the
    line shown under the dropdown.
    """
    meta = {f.name: f.metadata for f in dataclasses.fields(CutoutSettings)}
    d = CutoutSettings(model=default_model)
    shown = cutout_visibility(d.model, d.output)
    with gr.Row():
        model = gr.Dropdown(label=meta["model"]["label"], choices=choices or list(MODEL_CHOICES), value=d.model,
                            type="value", elem_id=elem_id("cutout_model"))
        model_path = gr.Textbox(label=meta["model_path"]["label"], value="", visible=shown["model_path"],
                                placeholder="/path/to/model.onnx (a BiRefNet, IS-Net or U2-Net export)")
    about = gr.Markdown(describe(d.model), elem_id=elem_id("cutout_about"))
    refine = gr.Radio(label=meta["refine"]["label"], choices=[r.value for r in Refine], value=d.refine.value,
                      type="value", elem_id=elem_id("cutout_refine"))
    with gr.Row():
        sliders = [gr.Slider(label=meta[name]["label"], value=getattr(d, name), minimum=lo, maximum=hi, step=1)
                   for name, lo, hi in (("fg_threshold", 1, 255), ("bg_threshold", 0, 254), ("edge_band", 0, 64))]
    output = gr.Radio(label=meta["output"]["label"], choices=[o.value for o in Output], value=d.output.value,
                      type="value", elem_id=elem_id("cutout_output"))
    color = gr.ColorPicker(label=meta["color"]["label"], value=d.color, visible=shown["color"])
    column, background = image_input(meta["background"]["label"], shown["background"])

    def on_model(value, out):
        vis = cutout_visibility(value, out)
        return gr.update(visible=vis["model_path"]), gr.update(value=describe(value))

    def on_output(value, chosen):
        vis = cutout_visibility(chosen, value)
        return gr.update(visible=vis["color"]), gr.update(visible=vis["background"])

    model.change(on_model, inputs=[model, output], outputs=[model_path, about], show_progress="hidden",
                 queue=False)
    output.change(on_output, inputs=[output, model], outputs=[color, column], show_progress="hidden",
                  queue=False)
    return [model, model_path, refine, *sliders, output, color, background]
