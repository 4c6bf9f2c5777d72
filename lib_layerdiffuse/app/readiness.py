"""What the web app can do right now: is the model there, and are the weight files of a method?

Everything here answers without loading a model or hashing a file, so the page can say at once
what is missing and where to put it (and keep serving the parts that need nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..methods import Family, Method
from ..weights import State, WeightStore, human_size

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


@dataclass(frozen=True)
class ModelState:
    """The model the app generates with: its family when it can be used, else `problem`
    (Markdown: what is missing and what to do). `local_only`: load it without the hub."""

    model: str
    family: Optional[Family]
    source: str
    problem: str = ""
    local_only: bool = False
    title: str = ""  # the problem in a few words ("Model not downloaded")

    @property
    def ready(self) -> bool:
        return self.family is not None and not self.problem


def check_model(model: str, offline: bool) -> ModelState:
    """Where `model` (a .safetensors file, a diffusers folder or a hub id) would load from and
    its family, without loading it (`engine.family.locate_model`), as the page shows it."""
    from ..engine.family import locate_model

    return _located(model, lambda: locate_model(model, offline))


def _located(model: str, locate) -> ModelState:
    """The page's ModelState of `locate()` (a `ModelLocation`), or of the problem it raised."""
    from ..engine.family import ModelNotAvailableError, UnsupportedModelError

    try:
        found = locate()
    except ModelNotAvailableError as exc:
        return ModelState(model, None, "", f"**{exc.title}:** {exc}", title=exc.title)
    except UnsupportedModelError as exc:
        return ModelState(model, None, "", f"**Model cannot be used:** {exc}", title="Model cannot be used")
    return ModelState(model, found.family, found.source, local_only=found.local_only)


def weights_report(store: WeightStore, method: Method) -> str:
    """Markdown: the state of the weight files `method` needs, with the URL and target path of
    each one that is not there."""
    statuses = store.statuses(method.weight_files)
    absent = [s for s in statuses if s.state in (State.MISSING, State.PARTIAL, State.CORRUPT, State.NOT_OFFICIAL)]
    if not absent:
        return f"LayerDiffuse weights for this method: ready in `{store.folder}`."
    total = human_size(sum(s.entry.approx_size for s in absent))
    if store.allow_download:
        head = (f"LayerDiffuse weights for this method: {len(absent)} file(s), {total}, download into "
                f"`{store.folder}` on the first generation (verified by SHA-256).")
    else:
        head = (f"**LayerDiffuse weights missing** (downloads are off): {len(absent)} file(s), {total}. "
                "Download each and save it at the path given; it is checked by SHA-256 before use.")
    lines = [head]
    for s in absent:
        detail = f" ({s.detail})" if s.detail else ""
        lines.append(f"- `{s.entry.name}`, {human_size(s.entry.approx_size)}, {s.state.value}{detail}: "
                     f"from {s.entry.url} to `{s.path}`")
    return "\n".join(lines)


OFF_NOTE = ("Generating is off until then. The **Cutout** tab works without it (the weight-free model needs no "
            "download), and so does background replacement with a given background image.")


def check_layers_model(model: str, offline: bool) -> ModelState:
    """`check_model` for the Layers tab's Qwen-Image-Layered model (`locate_layered_model`)."""
    from ..engine.family import locate_layered_model

    return _located(model, lambda: locate_layered_model(model, offline))


def layers_summary(state: ModelState) -> tuple[str, str]:
    """(one line, details) on the Layers tab's model, with its licence."""
    from ..layers.options import LICENCE

    if not state.problem:
        return f"Layers model: `{state.model}` ({state.source}). {LICENCE}", ""
    return (f"**{state.title}:** `{state.model}`. Splitting into layers is off; start the app with "
            "`--layers-model` naming a local Qwen-Image-Layered folder, or download it.", state.problem)


def model_summary(state: ModelState) -> tuple[str, str]:
    """(one line, details) on the model for the top of the page; details (what is missing and
    what to do) only when it cannot be used."""
    if state.ready:
        return f"Model: `{state.model}` ({state.family.label}, {state.source}).", ""
    line = (f"**{state.title or 'Model cannot be used'}:** `{state.model}`. Generating is off; the Cutout tab "
            "works without it.")
    return line, f"{state.problem}\n\n{OFF_NOTE}"


def weights_summary(store: WeightStore, method: Method) -> tuple[str, str]:
    """(one line, details) on the weight files of `method`: details list each file that is not
    there with its URL and target path (empty when all are ready)."""
    if method.family.native_rgba:
        return f"{method.name}: no LayerDiffuse weights; the model's own VAE makes the alpha.", ""
    absent = [s for s in store.statuses(method.weight_files)
              if s.state in (State.MISSING, State.PARTIAL, State.CORRUPT, State.NOT_OFFICIAL)]
    if not absent:
        return f"Weights for {method.name}: ready.", ""
    total = human_size(sum(s.entry.approx_size for s in absent))
    if store.allow_download:
        line = f"Weights for {method.name}: {len(absent)} file(s), {total}, download on first use."
    else:
        line = f"**Weights for {method.name} missing** (downloads are off): {len(absent)} file(s), {total}."
    return line, weights_report(store, method)
