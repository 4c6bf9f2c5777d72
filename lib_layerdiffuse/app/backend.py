"""The work behind the web page, without gradio: load the model once, generate, cut out,
replace backgrounds, and write every result as a PNG with its parameters.

The page calls these from gradio's worker threads; gradio's queue lets one generation run at a
time, and a lock keeps the model from loading twice.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..layers.options import DEFAULT_MODEL as DEFAULT_LAYERS_MODEL
from ..methods import Family, Method
from ..progress import ProgressCallback as Progress
from ..weights import WeightStore
from .readiness import (
    DEFAULT_MODEL,
    ModelState,
    check_layers_model,
    check_model,
    layers_summary,
    model_summary,
    weights_summary,
)

FAMILY_SIZE = {Family.SDXL: 1024, Family.SD15: 512, Family.FLUX: 1024, Family.QWEN21: 1024}


class ModelNotReadyError(RuntimeError):
    """Generation was asked for, but the model cannot be used (the message says why and how)."""


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass
class Outputs:
    """What one action produced: (path, caption) per image to show, the files to download, the
    parameters text and notes for the user."""

    shown: list[tuple[str, str]]
    files: list[str]
    infotext: str = ""
    notes: list[str] = field(default_factory=list)


class Backend:
    """One model (a hub id, a diffusers folder or a .safetensors file), its LayerDiffuse weights,
    and the cutout settings of this app.

    `engine` passes a ready `LayerDiffuse` (tests, notebooks); otherwise the model is checked
    in the background (`on_checked` gets the result) and loads on the first generation.
    `offline` means no downloads at all: hub models come from the Hugging Face cache, and weight
    files and cutout models must be present. `layers_model` is the Layers tab's Qwen-Image-Layered
    (checked when the page asks, loaded on the first split; `decomposer` passes a ready one).
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, store: Optional[WeightStore] = None,
                 models_dir: Optional[str] = None, offline: bool = False, device: Optional[str] = None,
                 dtype=None, passes: int = 8, out_dir: Union[str, Path] = "outputs",
                 cutout_models_dir: Optional[str] = None, providers: Optional[Sequence[str]] = None,
                 engine=None, on_checked: Optional[Callable[[ModelState], None]] = None,
                 layers_model: str = DEFAULT_LAYERS_MODEL, decomposer=None):
        self.model = model
        self.layers_model = layers_model
        self._decomposer = decomposer
        self._layers_state: Optional[ModelState] = (
            ModelState(layers_model, None, "given to the app") if decomposer is not None else None)
        self.offline = offline
        self.store = store or WeightStore(models_dir, allow_download=not offline)
        self.device, self.dtype, self.passes = device, dtype, passes
        self.out_dir = Path(out_dir)
        self.cutout_models_dir = cutout_models_dir
        self.providers = list(providers) if providers else None
        self._engine = engine
        self._load_lock = threading.Lock()
        self._names = itertools.count()
        self._checked = threading.Event()
        self._state: Optional[ModelState] = None
        self._cutout_models = None
        if engine is not None:
            name = getattr(engine.pipe, "name_or_path", None) or model
            self._finish_check(ModelState(name, engine.family, "loaded"), on_checked)
        else:
            threading.Thread(target=lambda: self._finish_check(check_model(model, offline), on_checked),
                             name="layerdiffuse-model-check", daemon=True).start()

    def _finish_check(self, state: ModelState, on_checked: Optional[Callable[[ModelState], None]]) -> None:
        """Keep the result, run `on_checked`, and only then release whoever waits on `state`
        (so a caller that read `state` has also seen what `on_checked` did)."""
        self._state = state
        try:
            if on_checked is not None:
                on_checked(state)
        finally:
            self._checked.set()

    # ---- what the page shows -------------------------------------------------------------

    @property
    def state(self) -> ModelState:
        """Where the model loads from and its family; waits for the check started with the
        backend, and for its `on_checked` (a hub id costs a quick probe of the hub and one small
        request)."""
        self._checked.wait()
        return self._state

    @property
    def checked(self) -> bool:
        return self._checked.is_set()

    @property
    def family(self) -> Optional[Family]:
        return self.state.family if self.state.ready else None

    def methods(self) -> list[Method]:
        """The methods this model can run (all of them while the model is unknown)."""
        return [m for m in Method if self.family is None or m.family is self.family]

    def default_method(self) -> Method:
        return Method.default(self.family)

    def default_size(self) -> int:
        if self._engine is not None:
            return self._engine.default_size()
        return FAMILY_SIZE.get(self.family, 1024)

    def model_status(self) -> tuple[str, str]:
        """(one line, details) on the model (`readiness.model_summary`); a placeholder while the
        check runs."""
        if not self.checked:
            return f"Checking the model `{self.model}` ...", ""
        return model_summary(self.state)

    def weights_status(self, method: Any = None) -> tuple[str, str]:
        """(one line, details) on the weight files of `method` (None: the default method)."""
        try:
            chosen = Method.parse(method) if method else (self.default_method() if self.checked else Method.default())
        except ValueError:
            return "", ""
        return weights_summary(self.store, chosen)

    @property
    def cutout_models(self):
        """`CutoutModels` of this app's models folder: which cutout models can run here."""
        if self._cutout_models is None:
            from ..cutout.availability import CutoutModels

            self._cutout_models = CutoutModels(self.cutout_models_dir, allow_download=not self.offline)
        return self._cutout_models

    def default_cutout_model(self) -> str:
        """The default rembg model, or the weight-free backend when that model cannot be had
        (rembg not installed, not downloaded while offline, or its download host unreachable)."""
        return self.cutout_models.default()[0]

    # ---- the model -----------------------------------------------------------------------

    def engine(self, on_progress: Progress = _no_progress):
        """The loaded `LayerDiffuse`, loading the model on first use."""
        self._require_model()
        with self._load_lock:
            if self._engine is None:
                from ..engine import LayerDiffuse

                on_progress(f"Loading model {self.model}", 0, 1)
                self._engine = LayerDiffuse.from_model(self.model, device=self.device, dtype=self.dtype,
                                                       local_files_only=self.offline, store=self.store,
                                                       decoder_passes=self.passes)
                on_progress(f"Loading model {self.model}", 1, 1)
        return self._engine

    def _require_model(self) -> None:
        if not self.state.ready:
            raise ModelNotReadyError(self.state.problem.replace("**", ""))

    def _fetch_weights(self, method: Method, on_progress: Progress) -> None:
        """Download / verify the method's files before the model loads or sampling starts."""
        names = method.weight_files
        for i, name in enumerate(names):
            on_progress(f"Checking weight file {name}", i, len(names))
            self.store.ensure(name)

    # ---- the layers model ----------------------------------------------------------------

    def layers_state(self) -> ModelState:
        """Whether the Layers tab's model can be had (checked once, without loading it)."""
        if self._layers_state is None:
            self._layers_state = check_layers_model(self.layers_model, self.offline)
        return self._layers_state

    def layers_status(self) -> tuple[str, str]:
        return layers_summary(self.layers_state())

    def decomposer(self, on_progress: Progress = _no_progress):
        """The loaded `LayerDecomposer`, loading Qwen-Image-Layered on first use."""
        state = self.layers_state()
        if state.problem:
            raise ModelNotReadyError(state.problem.replace("**", ""))
        with self._load_lock:
            if self._decomposer is None:
                from ..layers.decompose import LayerDecomposer

                on_progress(f"Loading model {self.layers_model}", 0, 1)
                self._decomposer = LayerDecomposer.from_model(self.layers_model, device=self.device, dtype=self.dtype,
                                                              local_files_only=self.offline)
                on_progress(f"Loading model {self.layers_model}", 1, 1)
        return self._decomposer

    # ---- actions -------------------------------------------------------------------------

    def generate(self, prompt: str, method: Any, passes: Optional[int] = None,
                 on_progress: Progress = _no_progress, **settings: Any) -> Outputs:
        """Generate with a LayerDiffuse method; `settings` are `LayerDiffuse.generate`'s keywords."""
        from ..engine import check_method_family

        method = Method.parse(method, family=self.family)
        self._require_model()
        check_method_family(method, self.family)
        self._fetch_weights(method, on_progress)
        engine = self.engine(on_progress)
        engine.decoder_passes = passes or self.passes
        if method.family.native_rgba:  # no denoising strength: the init image is edited by the prompt
            settings.pop("strength", None)
        result = engine.generate(prompt, method, on_progress=on_progress, **settings)
        paths = result.save(self._folder(), stem=self._stem("layerdiffuse"))
        shown = [(str(p), f"{im.frame} · {'transparent' if im.transparent else 'opaque'}")
                 for p, im in zip(paths, result.images)]
        return Outputs(shown, [str(p) for p in paths], result.infotext)

    def batch(self, job_text: str = "", prompts: str = "", method: Any = None, seeds: int = 1,
              batch_size: int = 4) -> Outputs:
        """Run a job (TOML text, as `batch` reads it) or a prompt list (one per line, each with
        seeds 1..`seeds` and `method`) on this app's model into a new folder with its manifest."""
        from ..batch import load_job, run_job

        if job_text.strip():
            text, name = job_text, "the job file you pasted"
        else:
            lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
            if not lines:
                raise ValueError("write prompts (one per line) or a job file")
            chosen = Method.parse(method, family=self.family) if method else self.default_method()
            text, name = (f"model = {json.dumps(self.model)}\nmethod = {json.dumps(chosen.name)}\n[matrix]\n"
                          f"prompts = {json.dumps(lines)}\nseeds = {json.dumps(list(range(1, int(seeds) + 1)))}\n",
                          "the prompts")
        # everything that can fail before the first image is checked before the run's folder exists
        folder = self._folder(create=False) / self._stem("batch")
        job = load_job(folder / "job.toml", text=text, name=name)
        if job.model not in (self.model, "app"):
            raise ValueError(f"this app runs {self.model}; the job asks for {job.model}. Set model = \"app\" to use "
                             "the app's model, or run the job with `python -m lib_layerdiffuse batch`")
        self._require_model()
        for method in {Method.parse(it.settings.get("method") or self.default_method(), family=self.family)
                       for it in job.items}:
            self._fetch_weights(method, _no_progress)
        engine = self.engine()
        engine.decoder_passes = self.passes
        folder.mkdir(parents=True)
        job.path.write_text(text, encoding="utf-8")
        summary = run_job(job, folder, lambda model: engine, progress=True, batch_size=batch_size)
        shown, files = [], [str(folder / "manifest.jsonl")]
        notes = []
        for record in (json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()):
            for entry in record["files"]:
                flags = (entry.get("qa") or {}).get("flags") or []
                shown.append((str(folder / entry["name"]), f"{record['settings'].get('prompt', '')} · seed "
                              f"{record['seed']}" + (f" · {', '.join(flags)}" if flags else "")))
                files.append(str(folder / entry["name"]))
                if flags:
                    notes.append(f"{entry['name']}: the alpha check says {', '.join(flags)}")
        return Outputs(shown, files, f"{summary.line()}\nFolder: {folder}", notes)

    def cut_out(self, image: Any, settings, on_progress: Progress = _no_progress) -> Outputs:
        """Cut out one image with `settings` (a CutoutSettings); writes the chosen output."""
        from ..images import save_png

        cut = self._cut(image, settings, on_progress)
        path = self._folder() / f"{self._stem('cutout')}-{settings.output.name.lower()}.png"
        on_progress("Writing the PNG", 0, 1)
        save_png(cut.render(), path, cut.parameters(), cut.infotext())
        on_progress("Writing the PNG", 1, 1)
        return Outputs([(str(path), f"cutout · {settings.output.value}")], [str(path)], cut.parameters(),
                       list(cut.notes))

    def replace(self, image: Any, prompt: str, settings, background: Any = None, max_side: int = 1024,
                on_progress: Progress = _no_progress, **generate_kwargs: Any) -> Outputs:
        """Put the subject of `image` on `background`, or on a scene generated from `prompt` with
        the SDXL "From Foreground to Blending" method. A given background wins over a prompt
        (a note says so)."""
        from ..cutout.replace import replace_background

        engine, notes = None, []
        if background is not None:
            if (prompt or "").strip():
                notes.append("The prompt was not used: a background image was given. Remove the image to "
                             "generate a new background from the prompt.")
        else:
            if not (prompt or "").strip():
                raise ValueError("write a prompt for the new background, or give a background image")
            self._require_model()
            if self.family is not Family.SDXL:
                raise ValueError(f"generating a background needs an SDXL model; {self.model} is {self.family.label}. "
                                 "Give a background image instead, or start the app with an SDXL model")
            self._fetch_weights(Method.FG_TO_BLEND, on_progress)
            engine = self.engine(on_progress)
            generate_kwargs["on_progress"] = on_progress
        cut = self._cut(image, settings, on_progress)
        result = replace_background(image, prompt or "", engine=engine, background=background, cutout=cut,
                                    max_side=max_side, **(generate_kwargs if engine is not None else {}))
        paths = result.save(self._folder(), self._stem("layerdiffuse"))
        captions = ["new background", "cutout · transparent"]
        return Outputs([(str(p), c) for p, c in zip(paths, captions)], [str(p) for p in paths],
                       result.infotext, notes + list(cut.notes))

    def decompose(self, image: Any, layers: int, prompt: str = "", steps: Optional[int] = None,
                  seed: Optional[int] = None, resolution: Optional[int] = None,
                  on_progress: Progress = _no_progress) -> Outputs:
        """Split `image` into `layers` RGBA layers: the layer PNGs (1 = bottom), a layered PSD and
        a ZIP of them; the notes say how far the layers put together are from the image and which
        came out empty."""
        from ..layers.options import RESOLUTIONS

        if image is None:
            raise ValueError("upload the image to split into layers")
        decomposer = self.decomposer(on_progress)
        result = decomposer.decompose(image, layers, prompt=prompt or "", steps=steps, seed=seed,
                                      resolution=resolution or RESOLUTIONS[0], on_progress=on_progress)
        paths = result.save(self._folder(), self._stem("layers"), archive=True)
        layer_paths = paths[:len(result.layers)]
        report = result.report()
        notes = [f"The layers put together differ from the image by {report['composite_error']:.2f} of 255 on "
                 "average (premultiplied colour and alpha)."]
        if report["empty"]:
            notes.append(f"Empty layers (nothing to see): {', '.join(map(str, report['empty']))}.")
        return Outputs([(str(p), name) for p, name in zip(layer_paths, result.names())], [str(p) for p in paths],
                       result.infotext, notes)

    def _cut(self, image: Any, settings, on_progress: Progress):
        from ..cutout import cut_out

        return cut_out(image, settings, providers=self.providers, models_dir=self.cutout_models_dir,
                       allow_download=not self.offline, on_progress=on_progress)

    # ---- files ---------------------------------------------------------------------------

    def _folder(self, create: bool = True) -> Path:
        """Today's output folder (made unless `create` is off)."""
        folder = self.out_dir / datetime.now().strftime("%Y-%m-%d")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _stem(self, kind: str) -> str:
        """Unique within this app's run, sortable by time."""
        return f"{kind}-{datetime.now():%H%M%S}-{next(self._names):04d}"
