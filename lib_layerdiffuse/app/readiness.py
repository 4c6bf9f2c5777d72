"""What the web app can do right now: is the model there, and are the weight files of a method?

Everything here answers without loading a model or hashing a file, so the page can say at once
what is missing and where to put it (and keep serving the parts that need nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..methods import Family, Method
from ..weights import State, WeightStore, human_size

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


@dataclass(frozen=True)
class ModelState:
    """The model the app generates with: its family when it can be used, else `problem`
    (Markdown: what is missing and what to do)."""

    model: str
    family: Optional[Family]
    source: str
    problem: str = ""

    @property
    def ready(self) -> bool:
        return self.family is not None and not self.problem


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _in_hub_cache(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.endswith((".safetensors", ".ckpt"))


def check_model(model: str, offline: bool) -> ModelState:
    """Where `model` (a .safetensors file, a diffusers folder or a hub id) would load from and
    its family, without loading it. Offline, a hub id must be in the Hugging Face cache."""
    from ..engine.family import UnsupportedModelError, family_of_model

    path = Path(model).expanduser()
    from_hub = False
    if path.exists():
        source = "single-file checkpoint" if path.is_file() else "diffusers folder"
    elif not _looks_like_hub_id(model):
        return ModelState(model, None, "", (
            f"**Model not found:** `{model}` is not a file or folder on this machine, and not a "
            "Hugging Face hub id (owner/name). Start the app with `--model` and a `.safetensors` "
            "checkpoint, a diffusers folder or a hub id."))
    elif _in_hub_cache(model):
        source = f"Hugging Face cache ({hub_cache_dir()})"
    elif offline:
        return ModelState(model, None, "", f"**Model not downloaded:** `{model}` is not in the Hugging Face "
                                           f"cache (`{hub_cache_dir()}`) and downloads are off. {_how_to_get(model)}")
    else:
        from_hub = True
        source = f"Hugging Face hub (downloads into {hub_cache_dir()} on the first generation)"
    try:
        family = family_of_model(str(path) if path.exists() else model, local_files_only=offline)
    except UnsupportedModelError as exc:
        if from_hub:
            return ModelState(model, None, source, (
                f"**Model not reachable:** `{model}` is not in the Hugging Face cache (`{hub_cache_dir()}`) "
                f"and the hub did not answer ({exc}). {_how_to_get(model)}"))
        return ModelState(model, None, source, f"**Model cannot be used:** {exc}")
    return ModelState(model, family, source)


def _how_to_get(model: str) -> str:
    return (f"Download it on a machine with network (`hf download {model}`) and copy that cache folder "
            "here (or point `HF_HOME` at it), or start the app with `--model /path/to/checkpoint.safetensors`.")


def weights_report(store: WeightStore, method: Method) -> str:
    """Markdown: the state of the weight files `method` needs, with the URL and target path of
    each one that is not there."""
    statuses = store.statuses(method.weight_files)
    absent = [s for s in statuses if s.state in (State.MISSING, State.PARTIAL, State.CORRUPT)]
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


def status_markdown(state: ModelState, store: WeightStore, method: Optional[Method]) -> str:
    """The status block at the top of the page."""
    if state.ready:
        lines = [f"Model: `{state.model}` ({state.family.label}, {state.source})."]
    else:
        lines = [state.problem, "", "Generating is off until then. The **Cutout** tab works without it "
                 "(the weight-free model needs no download), and so does background replacement with a "
                 "given background image."]
    if method is not None:
        lines += ["", weights_report(store, method)]
    return "\n".join(lines)
