"""The gradio page: Generate, Cutout, Replace background, Batch and Layers tabs over one `Backend`.

Transparent results are shown over a checkerboard (page CSS behind the real RGBA image, so
what is downloaded is the PNG with alpha and parameters). Generation and background
replacement share one queue slot (one model, one GPU): others wait and see their position.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

from ..cutout.options import CutoutSettings, Refine
from ..engine.flux import DEFAULT_GUIDANCE as FLUX_GUIDANCE
from ..engine.generate import DEFAULT_CFG, DEFAULT_STEPS
from ..engine.samplers import SAMPLERS
from ..form import cutout_controls, input_visibility, method_hint
from ..layers.options import DEFAULT_LAYERS, MAX_LAYERS, RESOLUTIONS
from ..layers.options import DEFAULT_STEPS as LAYERS_STEPS
from ..methods import Family, Method
from ..params import LayerDiffuseParams, ResizeMode
from ..progress import ProgressCallback
from .backend import FAMILY_SIZE, Backend, Outputs

log = logging.getLogger(__name__)

TITLE = "LayerDiffuse"
DEFAULT_SAMPLER = "Default for the method"
MODEL_QUEUE = "model"  # one event at a time uses the model
CHECKER = "conic-gradient(#d9d9d9 25%, #fff 0 50%, #d9d9d9 0 75%, #fff 0) 0 0 / 16px 16px"
CSS = f"""
.ld-checker img, .ld-checker .thumbnail-item, .ld-checker .preview img {{ background: {CHECKER}; }}
#ld-passes .wrap {{ flex-wrap: nowrap; }}
"""
# a disabled button says why on hover: its title follows the reason shown under it
HEAD = """<script>
(() => {
  const pairs = [["ld-generate", "ld-generate-why"], ["ld-batch-run", "ld-batch-why"], ["ld-rep-run", "ld-rep-why"]];
  const sync = () => {
    for (const [button, why] of pairs) {
      const b = document.getElementById(button), w = document.getElementById(why);
      if (!b || !w) continue;
      const text = w.innerText.trim();
      if (b.title !== text) b.title = text;
    }
  };
  new MutationObserver(sync).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
})();
</script>"""
_FIELDS = {f.name: f.metadata for f in dataclasses.fields(LayerDiffuseParams)}
_CUT_FIELDS = {f.name: f.metadata for f in dataclasses.fields(CutoutSettings)}
_LAYERS = ("fg", "bg", "blend")


COUNTED = {"Sampling": "steps", "Decoding": "images"}  # stages shown as "3/25 steps"; others as a fraction


def _reporter(progress) -> ProgressCallback:
    def report(stage: str, done: float, total: float) -> None:
        if stage in COUNTED:
            progress((done, total), desc=stage, unit=COUNTED[stage])
        else:
            progress(done / total if total else 0.0, desc=stage)
    return report


def _seed(value) -> Optional[int]:
    """The seed box: empty or negative means a random seed."""
    return None if value is None or value < 0 else int(value)


def expected_errors() -> tuple:
    """What a user's input or this machine's state causes (a missing image, a refused value,
    weights or models not there): shown on the page without a traceback in the console."""
    from ..cutout.rembg_backend import CutoutModelError, CutoutUnavailable
    from ..weights import WeightError
    from .backend import ModelNotReadyError

    return ValueError, WeightError, CutoutUnavailable, CutoutModelError, ModelNotReadyError


def _user_error(gr, exc: Exception):
    """A gr.Error that says what went wrong. Gradio prints no traceback for it; an unexpected
    failure (a bug) is logged here once, with its traceback."""
    if isinstance(exc, expected_errors()):
        return gr.Error(str(exc), print_exception=False)
    log.exception("LayerDiffuse app: unexpected error")
    return gr.Error(f"unexpected {type(exc).__name__}: {exc} (details in the console)", print_exception=False)


def _uploaded(value, field: str):
    """An uploaded image as RGBA uint8, or None. Events take uploads unprocessed (gradio's own
    reading fails with its internals for a file that is not an image): we read the file and
    name it by the name it was uploaded with."""
    from ..images import read_image_file, to_rgba_uint8

    if value is None:
        return None
    if isinstance(value, dict) and value.get("path"):
        return read_image_file(value["path"], field, name=value.get("orig_name") or None)
    if isinstance(value, dict) and value.get("url"):  # pasted: a data URL
        return to_rgba_uint8(value["url"], field)
    return to_rgba_uint8(value, field)


def _shown(out: Outputs) -> tuple:
    """Values for the components of `_results`."""
    return out.shown, out.files, out.infotext, "\n".join(f"- {n}" for n in out.notes)


def _results(gr, prefix: str, info_label: str,
             files_label: str = "PNG files (alpha and parameters embedded)") -> list:
    """Gallery (over a checkerboard), downloadable files, parameters text, notes."""
    gallery = gr.Gallery(label="Results", columns=2, height="auto", object_fit="contain", format="png",
                         elem_id=f"{prefix}-gallery", elem_classes=["ld-checker"])
    files = gr.File(label=files_label, file_count="multiple",
                    interactive=False, elem_id=f"{prefix}-files")
    info = gr.Textbox(label=info_label, lines=3, interactive=False, elem_id=f"{prefix}-info")
    notes = gr.Markdown(elem_id=f"{prefix}-notes")
    return [gallery, files, info, notes]


def _image(gr, label: str, elem_id: str, visible: bool = True):
    """An image input; events that read it run with `preprocess=False` and `_uploaded`."""
    return gr.Image(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                    visible=visible, elem_id=elem_id, elem_classes=["ld-checker"])


def _cutout_settings(values: list) -> CutoutSettings:
    """CutoutSettings from the values of `cutout_controls` (every field after `enabled`)."""
    return CutoutSettings(enabled=True, **dict(zip(list(_CUT_FIELDS)[1:], values)))


@dataclasses.dataclass
class _ModelView:
    """What the tabs show that depends on the model check."""

    status: tuple[str, str]  # (one line, details)
    methods: list[str]  # the family's methods; every method (each names its family) while it is unknown
    method: str
    size: int
    ready: bool
    why: str  # why generating is off ("" when it is on)


def _method_family(method: str) -> Optional[Family]:
    try:
        return Method.parse(method).family
    except ValueError:
        return None


def _model_view(backend: Backend, wait: bool) -> _ModelView:
    """The model's view, or (with `wait` off while the check runs) placeholders: every method,
    SDXL size, Generate off. The page's load event fills in the real one."""
    if not (wait or backend.checked):
        return _ModelView(backend.model_status(), [m.value for m in Method], Method.default().value,
                          1024, False, "Checking the model ...")
    default = backend.default_method()
    ready = backend.state.ready
    why = "" if ready else f"Generating is off: {backend.state.title or 'the model cannot be used'} (see the top of the page)."
    return _ModelView(backend.model_status(), [m.value for m in backend.methods()],
                      default.value, backend.default_size(), ready, why)


def _family_size(method: str, width, height, backend: Backend) -> Optional[int]:
    """The size to set after choosing `method`, or None to leave the sliders alone: a square of
    another family's size becomes this family's (1024 SDXL -> 512 SD1.5); sizes the user set
    otherwise stay."""
    family = _method_family(method)
    if family is None or int(width) != int(height) or int(width) not in set(FAMILY_SIZE.values()):
        return None
    size = backend.default_size() if family is backend.family else FAMILY_SIZE[family]
    return size if size != int(width) else None


def _status_block(gr, elem_id: str, status: tuple[str, str]) -> list:
    """One line, and its details in a closed accordion shown only when there are any."""
    line, details = status
    text = gr.Markdown(line, elem_id=elem_id)
    with gr.Accordion("Details", open=False, visible=bool(details), elem_id=f"{elem_id}-more") as more:
        body = gr.Markdown(details, elem_id=f"{elem_id}-details")
    return [text, more, body]


def _status_values(gr, status: tuple[str, str]) -> list:
    """Updates for the components of `_status_block`."""
    line, details = status
    return [line, gr.update(visible=bool(details)), details]


def _weights_values(gr, backend: Backend, method) -> list:
    """`_status_values` of the weight files of `method`."""
    return _status_values(gr, backend.weights_status(method))


def _generate_tab(gr, backend: Backend) -> tuple[Callable, list]:
    """Build the tab; returns the page-load handler that shows the model check's result, and
    its outputs."""
    view = _model_view(backend, wait=False)
    default = Method.parse(view.method)
    shown = input_visibility(default)
    size = view.size
    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="ld-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="ld-negative")
            method = gr.Dropdown(label=_FIELDS["method"]["label"], choices=view.methods, value=view.method,
                                 elem_id="ld-method")
            hint = gr.Markdown(method_hint(default), elem_id="ld-hint")
            with gr.Row():
                images = [_image(gr, _FIELDS[f"{n}_image"]["label"], f"ld-{n}-image", shown[f"{n}_image"])
                          for n in _LAYERS]
            resize_mode = gr.Radio(label=_FIELDS["resize_mode"]["label"], choices=[m.value for m in ResizeMode],
                                   value=ResizeMode.CROP_AND_RESIZE.value, visible=shown["resize_mode"])
            prompts = [gr.Textbox(label=_FIELDS[f"{n}_prompt"]["label"], visible=shown[f"{n}_prompt"],
                                  placeholder="Added before the prompt for this layer") for n in _LAYERS]
            with gr.Row():
                weight = gr.Slider(label=_FIELDS["weight"]["label"], minimum=0.0, maximum=2.0, step=0.01, value=1.0)
                stop_at = gr.Slider(label=_FIELDS["stop_at"]["label"], minimum=0.0, maximum=1.0, step=0.01,
                                    value=1.0)
            sampler = gr.Dropdown(label="Sampler", choices=[DEFAULT_SAMPLER, *SAMPLERS], value=DEFAULT_SAMPLER,
                                  elem_id="ld-sampler")
            with gr.Row():
                steps = gr.Slider(label="Steps", minimum=1, maximum=150, step=1, value=DEFAULT_STEPS,
                                  elem_id="ld-steps")
                cfg = gr.Slider(label="CFG scale", minimum=1.0, maximum=30.0, step=0.5, value=DEFAULT_CFG)
            with gr.Row():
                width = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=size, elem_id="ld-width")
                height = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=size,
                                   elem_id="ld-height")
                batch = gr.Slider(label="Batch size", minimum=1, maximum=16, step=1, value=default.spec.frame_count,
                                  elem_id="ld-batch")
            with gr.Row():
                seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id="ld-seed", scale=1)
                passes = gr.Radio(label="Transparent decoder passes (8: the reference's quality)",
                                  choices=[1, 2, 4, 8], value=backend.passes, elem_id="ld-passes", scale=2)
            with gr.Accordion("img2img (start from an image; RGBA keeps its transparency)", open=False):
                init = _image(gr, "Init image", "ld-init-image")
                strength = gr.Slider(label="Denoising strength", minimum=0.01, maximum=1.0, step=0.01, value=0.7)
        with gr.Column(scale=6):
            run = gr.Button("Generate", variant="primary", interactive=view.ready, elem_id="ld-generate")
            why = gr.Markdown(view.why, elem_id="ld-generate-why")
            weights = _status_block(gr, "ld-weights", backend.weights_status(view.method))
            outputs = _results(gr, "ld", "Parameters")

    def on_method(value, current_batch, width_value, height_value):
        vis = input_visibility(value)
        try:
            frames = Method.parse(value).spec.frame_count
        except ValueError:
            frames = 1
        updates = [gr.update(value=method_hint(value)), *_weights_values(gr, backend, value)]
        updates += [gr.update(visible=vis[f"{n}_image"]) for n in _LAYERS]
        updates.append(gr.update(visible=vis["resize_mode"]))
        updates += [gr.update(visible=vis[f"{n}_prompt"]) for n in _LAYERS]
        # values that stay are not sent back: the user may have changed them since this event left
        updates.append(gr.update() if int(current_batch) % frames == 0 else gr.update(value=frames))
        family = _method_family(value)
        flux = family is Family.FLUX  # guidance-distilled: its own guidance scale, its own scheduler
        native = family is not None and family.native_rgba  # no LayerDiffuse weights, true CFG off by default
        if flux:
            updates.append(gr.update(label="Distilled CFG scale", value=FLUX_GUIDANCE))
        elif native:
            updates.append(gr.update(label="True CFG scale (1: off, the model's default)", value=1.0))
        else:
            updates.append(gr.update(label="CFG scale"))
        updates.append(gr.update(visible=not (flux or native), value=DEFAULT_SAMPLER))
        updates += [gr.update(visible=not native, value=1.0) for _ in ("weight", "stop_at")]
        size = _family_size(value, width_value, height_value, backend)
        updates += [gr.update() if size is None else gr.update(value=size) for _ in ("width", "height")]
        return updates

    method.change(on_method, inputs=[method, batch, width, height],
                  outputs=[hint, *weights, *images, resize_mode, *prompts, batch, cfg, sampler, weight, stop_at,
                           width, height],
                  show_progress="hidden", queue=False)

    def generate(prompt_text, negative_text, method_value, fg, bg, blend, resize, fg_p, bg_p, blend_p, w_value,
                 stop_value, sampler_value, steps_value, cfg_value, width_value, height_value, batch_value,
                 seed_value, passes_value, init_value, strength_value, progress=gr.Progress(track_tqdm=True)):
        vis = input_visibility(method_value)
        extra = dict(zip(_LAYERS, (fg_p, bg_p, blend_p)))
        try:
            layers = {n: _uploaded(v, _FIELDS[f"{n}_image"]["label"]) if vis[f"{n}_image"] else None
                      for n, v in zip(_LAYERS, (fg, bg, blend))}
            out = backend.generate(
                prompt_text or "", method_value, passes=int(passes_value), on_progress=_reporter(progress),
                negative_prompt=negative_text or "", steps=int(steps_value), cfg=float(cfg_value),
                seed=_seed(seed_value),
                width=int(width_value), height=int(height_value), batch=int(batch_value),
                weight=float(w_value), stop_at=float(stop_value), resize_mode=resize,
                sampler=None if sampler_value == DEFAULT_SAMPLER else sampler_value,
                init_image=_uploaded(init_value, "Init image"), strength=float(strength_value), **layers,
                **{f"{n}_prompt": (extra[n] or "") if vis[f"{n}_prompt"] else "" for n in _LAYERS})
        except Exception as exc:
            raise _user_error(gr, exc) from exc
        return _shown(out)

    # the status is refreshed by a second event, so a failed generation marks only its results
    run.click(generate, inputs=[prompt, negative, method, *images, resize_mode, *prompts, weight, stop_at, sampler,
                                steps, cfg, width, height, batch, seed, passes, init, strength],
              outputs=outputs, concurrency_limit=1, concurrency_id=MODEL_QUEUE, preprocess=False
              ).then(lambda value: _weights_values(gr, backend, value), inputs=[method],
                     outputs=weights, show_progress="hidden", queue=False)

    def on_load():
        loaded = _model_view(backend, wait=True)
        return (gr.update(choices=loaded.methods, value=loaded.method), gr.update(interactive=loaded.ready),
                loaded.why, loaded.size, loaded.size, *_weights_values(gr, backend, loaded.method))

    return on_load, [method, run, why, width, height, *weights]


def _cutout_tab(gr, backend: Backend) -> None:
    models = backend.cutout_models
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown("Cut the subject out of any image: a transparent PNG with clean edges, a mask, or the "
                        "subject over a colour or another image. `weight-free` needs no download (flat or smooth "
                        "backgrounds); the list says which other models are here or can be downloaded.")
            image = _image(gr, "Image", "ld-cut-image")
            controls = cutout_controls(gr, backend.default_cutout_model(), lambda name: f"ld-cut-{name}",
                                       lambda label, visible: (_image(gr, label, "ld-cut-background", visible),) * 2,
                                       choices=models.choices(), describe=models.describe)
        with gr.Column(scale=6):
            run = gr.Button("Cut out", variant="primary", elem_id="ld-cut-run")
            outputs = _results(gr, "ld-cut", "Settings")

    def cut(image_value, *values, progress=gr.Progress(track_tqdm=True)):
        try:
            values = list(values)
            values[-1] = _uploaded(values[-1], _CUT_FIELDS["background"]["label"])
            picture = _uploaded(image_value, "Image")
            out = backend.cut_out(picture, _cutout_settings(values), _reporter(progress))
        except Exception as exc:
            raise _user_error(gr, exc) from exc
        return _shown(out)

    run.click(cut, inputs=[image, *controls], outputs=outputs, concurrency_limit=1, preprocess=False)


JOB_EXAMPLE = """model = "app"            # the app's model
method = "FG_ONLY_ATTN"

[defaults]
steps = 25

[matrix]
prompts = ["a glass teapot", "a red apple"]
seeds = [1, 2]

[qa]
retry = 1
"""


def _batch_tab(gr, backend: Backend) -> tuple[Callable, list]:
    """Build the tab; returns the page-load handler (methods of the model's family, the button
    by the model check) and its outputs."""
    view = _model_view(backend, wait=False)
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown("Make many transparent images at once: prompts one per line (each with seeds 1..N), or a "
                        "job file as `python -m lib_layerdiffuse batch` reads it (matrix, single items, alpha "
                        "checks; condition images by absolute path). Each run gets its own folder with "
                        "`manifest.jsonl`; see the README's \"Batch production\".")
            prompts = gr.Textbox(label="Prompts (one per line)", lines=5, elem_id="ld-batch-prompts")
            with gr.Row():
                method = gr.Dropdown(label="Method", choices=view.methods, value=view.method,
                                     elem_id="ld-batch-method")
                seeds = gr.Number(label="Seeds per prompt", value=1, minimum=1, maximum=64, precision=0,
                                  elem_id="ld-batch-seeds")
            job = gr.Code(label="Or a job file (TOML; used instead of the prompts when filled)", language=None,
                          value="", lines=12, elem_id="ld-batch-job")
            gr.Markdown(f"Example:\n```toml\n{JOB_EXAMPLE}```")
        with gr.Column(scale=6):
            run = gr.Button("Run batch", variant="primary", interactive=view.ready, elem_id="ld-batch-run")
            why = gr.Markdown(view.why, elem_id="ld-batch-why")
            weights = _status_block(gr, "ld-batch-weights", backend.weights_status(view.method))
            outputs = _results(gr, "ld-batch", "Summary")

    def run_batch(prompts_text, method_value, seeds_value, job_text, progress=gr.Progress(track_tqdm=True)):
        try:
            out = backend.batch(job_text or "", prompts_text or "", method_value, int(seeds_value or 1))
        except Exception as exc:
            raise _user_error(gr, exc) from exc
        return _shown(out)

    run.click(run_batch, inputs=[prompts, method, seeds, job], outputs=outputs, concurrency_limit=1,
              concurrency_id=MODEL_QUEUE
              ).then(lambda value: _weights_values(gr, backend, value), inputs=[method],
                     outputs=weights, show_progress="hidden", queue=False)
    method.change(lambda value: _weights_values(gr, backend, value), inputs=[method],
                  outputs=weights, show_progress="hidden", queue=False)

    def on_load():
        loaded = _model_view(backend, wait=True)
        return (gr.update(choices=loaded.methods, value=loaded.method), gr.update(interactive=loaded.ready),
                loaded.why, *_weights_values(gr, backend, loaded.method))

    return on_load, [method, run, why, *weights]


def _replace_tab(gr, backend: Backend) -> tuple[Callable, list]:
    """Build the tab; returns the page-load handler that sets the button by the model check, and
    its outputs."""
    models = backend.cutout_models
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown("Keep the subject of an image exactly as it is and put it on a new background: one "
                        "generated around it from the prompt (SDXL \"From Foreground to Blending\"), or an image "
                        "you give (no generation, no LayerDiffuse weights). A given image is used over the prompt.")
            image = _image(gr, "Image", "ld-rep-image")
            prompt = gr.Textbox(label="New background (prompt)", lines=2, elem_id="ld-rep-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            background = _image(gr, "Or this background image", "ld-rep-background")
            with gr.Row():
                seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0)
                steps = gr.Slider(label="Steps", minimum=1, maximum=150, step=1, value=DEFAULT_STEPS,
                                  elem_id="ld-rep-steps")
            max_side = gr.Slider(label="Long side of the generated scene (pixels)", minimum=256, maximum=2048,
                                 step=64, value=1024, elem_id="ld-rep-side")
            with gr.Row():
                model = gr.Dropdown(label=_CUT_FIELDS["model"]["label"], value=backend.default_cutout_model(),
                                    choices=models.choices(include_local_file=False), elem_id="ld-rep-model")
                refine = gr.Radio(label=_CUT_FIELDS["refine"]["label"], choices=[r.value for r in Refine],
                                  value=Refine.DECONTAMINATE.value)
        with gr.Column(scale=6):
            run = gr.Button("Replace background", variant="primary", elem_id="ld-rep-run",
                            interactive=_replace_ready(backend, None))
            why = gr.Markdown(_replace_hint(backend, None), elem_id="ld-rep-why")
            weights = _status_block(gr, "ld-rep-weights", backend.weights_status(Method.FG_TO_BLEND))
            outputs = _results(gr, "ld-rep", "Parameters")

    def replace(image_value, prompt_text, negative_text, background_value, seed_value, steps_value, side_value,
                model_value, refine_value, progress=gr.Progress(track_tqdm=True)):
        try:
            picture = _uploaded(image_value, "Image")
            given = _uploaded(background_value, "Or this background image")
            settings = CutoutSettings(enabled=True, model=model_value, refine=refine_value)
            kwargs = dict(negative_prompt=negative_text or "", steps=int(steps_value),
                          seed=_seed(seed_value))
            out = backend.replace(picture, prompt_text or "", settings, background=given,
                                  max_side=int(side_value), on_progress=_reporter(progress), **kwargs)
        except Exception as exc:
            raise _user_error(gr, exc) from exc
        return _shown(out)

    run.click(replace, inputs=[image, prompt, negative, background, seed, steps, max_side, model, refine],
              outputs=outputs, concurrency_limit=1, concurrency_id=MODEL_QUEUE, preprocess=False
              ).then(lambda: _weights_values(gr, backend, Method.FG_TO_BLEND), outputs=weights,
                     show_progress="hidden", queue=False)

    def readiness(background_value):
        return (gr.update(interactive=_replace_ready(backend, background_value)),
                _replace_hint(backend, background_value))

    background.change(readiness, inputs=[background], outputs=[run, why], show_progress="hidden", queue=False,
                      preprocess=False)
    def on_load():
        return (*readiness(None), *_weights_values(gr, backend, Method.FG_TO_BLEND))

    return on_load, [run, why, *weights]


def _layers_tab(gr, backend: Backend) -> tuple[Callable, list]:
    """Build the tab; returns the page-load handler (the layers model's check) and its outputs."""
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown("Split an image into transparent layers with Qwen-Image-Layered: every layer over the full "
                        "canvas (1 = bottom), a layered PSD for image editors and a ZIP of everything. The notes say "
                        "how far the layers put back together are from the image, and which came out empty.")
            image = _image(gr, "Image", "ld-layers-image")
            prompt = gr.Textbox(label="What the image shows (empty: the model describes it itself)", lines=2,
                                elem_id="ld-layers-prompt")
            with gr.Row():
                count = gr.Slider(label="Layers", minimum=1, maximum=MAX_LAYERS, step=1, value=DEFAULT_LAYERS,
                                  elem_id="ld-layers-count")
                steps = gr.Slider(label="Steps", minimum=1, maximum=150, step=1, value=LAYERS_STEPS,
                                  elem_id="ld-layers-steps")
            with gr.Row():
                seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id="ld-layers-seed")
                resolution = gr.Radio(label="Size bucket (pixels, square in area)", choices=list(RESOLUTIONS),
                                      value=RESOLUTIONS[0], elem_id="ld-layers-resolution")
        with gr.Column(scale=6):
            run = gr.Button("Split into layers", variant="primary", interactive=False, elem_id="ld-layers-run")
            status = _status_block(gr, "ld-layers-status", ("Checking the layers model ...", ""))
            outputs = _results(gr, "ld-layers", "Parameters", "Layer PNGs (1 = bottom), the PSD and a ZIP")

    def split(image_value, prompt_text, count_value, steps_value, seed_value, resolution_value,
              progress=gr.Progress(track_tqdm=True)):
        try:
            out = backend.decompose(_uploaded(image_value, "Image"), int(count_value), prompt_text or "",
                                    steps=int(steps_value), seed=_seed(seed_value), resolution=int(resolution_value),
                                    on_progress=_reporter(progress))
        except Exception as exc:
            raise _user_error(gr, exc) from exc
        return _shown(out)

    run.click(split, inputs=[image, prompt, count, steps, seed, resolution], outputs=outputs, concurrency_limit=1,
              concurrency_id=MODEL_QUEUE, preprocess=False)

    def on_load():
        return (gr.update(interactive=not backend.layers_state().problem),
                *_status_values(gr, backend.layers_status()))

    return on_load, [run, *status]


def _replace_ready(backend: Backend, background) -> bool:
    """A given background needs no model; generating one needs the model ready (as Generate)."""
    return background is not None or (backend.checked and backend.state.ready)


def _replace_hint(backend: Backend, background) -> str:
    if _replace_ready(backend, background):
        return ""
    if not backend.checked:
        return "Checking the model ..."
    return ("Generating a new background needs the model (see the top of the page). Give a background image to "
            "replace it without the model.")


def build_page(backend: Backend):
    """The gradio Blocks of the app (not launched)."""
    import gradio as gr

    # gradio keeps its own copies of shown files (ours stay in the output folder): drop them after a day
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(86400, 86400)) as page:
        gr.Markdown(f"# {TITLE}\nTransparent images from Stable Diffusion (latent transparency), cutouts and "
                    "background replacement.")
        status = _status_block(gr, "ld-status", backend.model_status())
        loads = []
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                loads.append(_generate_tab(gr, backend))
            with gr.Tab("Cutout", id="cutout"):
                _cutout_tab(gr, backend)
            with gr.Tab("Replace background", id="replace"):
                loads.append(_replace_tab(gr, backend))
            with gr.Tab("Batch", id="batch"):
                loads.append(_batch_tab(gr, backend))
            with gr.Tab("Layers", id="layers"):
                loads.append(_layers_tab(gr, backend))

        def load():
            values = []
            for handler, _ in loads:  # each waits for the model check
                values.extend(handler())
            return _status_values(gr, backend.model_status()) + values

        page.load(load, outputs=[*status, *(c for _, outputs in loads for c in outputs)], show_progress="hidden")
    return page


def serve(backend: Backend, host: str = "127.0.0.1", port: Optional[int] = None, open_browser: bool = False,
          block: bool = True):
    """Build the page, start gradio's queue and server; returns the page (closed with `.close()`)."""
    page = build_page(backend)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, inbrowser=open_browser, prevent_thread_lock=not block,
                quiet=not block, show_error=True, css=CSS, head=HEAD, allowed_paths=[str(backend.out_dir.resolve())])
    return page
