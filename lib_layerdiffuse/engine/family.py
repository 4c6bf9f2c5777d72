"""Which model family a checkpoint or a loaded model belongs to, checked before any work.

LayerDiffuse has weights for SD1.5 and SDXL, LayerDiffuse-Flux for FLUX.1. The UNet's block
layout tells SD1.5 and SDXL apart from each other and from what looks similar (SD2.x: linear
projections; the SDXL refiner: four levels; inpainting UNets: 9 input channels). Flux has a
transformer instead (double and single blocks; 64 packed input channels; Fill/Canny/Depth
variants take more and are refused); SD3 has another transformer and is refused. Qwen-Image-2.1
makes RGBA itself (its VAE has four channels): it is a family of its own, with no LayerDiffuse
weights; Qwen-Image-Layered splits images into layers (`layers.decompose`) and Qwen-Image's
other models make RGB only, so both are refused here by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from ..methods import Family, Method
from ..unet_blocks import STRUCTURES

if TYPE_CHECKING:
    import torch


class UnsupportedModelError(ValueError):
    """The model is not an SD1.5, SDXL or FLUX.1 model, or does not match the chosen method."""


def family_of_unet_config(config: Mapping[str, Any], source: str = "the model") -> Family:
    """The family of a diffusers `UNet2DConditionModel` config."""
    blocks = tuple(config.get("down_block_types") or ())
    attention = tuple("CrossAttn" in b for b in blocks)
    in_channels = config.get("in_channels", 4)
    if in_channels != 4:
        raise UnsupportedModelError(
            f"{source} has a UNet with {in_channels} input channels (an inpainting or other special "
            "model); LayerDiffuse needs an ordinary SD1.5 or SDXL checkpoint")
    for family, s in STRUCTURES.items():
        if attention != tuple(d > 0 for d in s.depths):
            continue
        if family is Family.SDXL and config.get("addition_embed_type") == "text_time":
            return family
        if family is Family.SD15 and not config.get("addition_embed_type"):
            if config.get("use_linear_projection"):
                raise UnsupportedModelError(f"{source} looks like Stable Diffusion 2.x; LayerDiffuse "
                                            "has weights for SD1.5 and SDXL only")
            return family
    if config.get("addition_embed_type") == "text_time":
        raise UnsupportedModelError(f"{source} looks like the SDXL refiner; LayerDiffuse needs an SDXL "
                                    "base model (or a fine-tune of it)")
    raise UnsupportedModelError(f"{source} is not an SD1.5 or SDXL UNet (down blocks {list(blocks)}); "
                                "LayerDiffuse has weights for SD1.5, SDXL and FLUX.1 only")


def family_of_unet(unet) -> Family:
    return family_of_unet_config(dict(unet.config), f"the loaded UNet ({type(unet).__name__})")


FLUX_IN_CHANNELS = 64  # 16 latent channels packed 2x2
QWEN21_TRANSFORMER = "QwenImage21Transformer2DModel"
QWEN_TRANSFORMER = "QwenImageTransformer2DModel"  # Qwen-Image, its Edit models and Qwen-Image-Layered
LAYERED_HINT = ("Qwen-Image-Layered splits an image into RGBA layers rather than generating one: use "
                "`python -m lib_layerdiffuse decompose IMAGE`, the app's Layers tab or a `decompose` batch item")


def _qwen_image_refusal(source: str, layered: bool) -> UnsupportedModelError:
    if layered:
        return UnsupportedModelError(f"{source} is Qwen-Image-Layered. {LAYERED_HINT}.")
    return UnsupportedModelError(f"{source} is Qwen-Image (or Qwen-Image-Edit), which makes RGB images only; for "
                                 "transparent images use Qwen-Image-2.1 (native RGBA, e.g. Qwen/Qwen-Image-2.1), or "
                                 "an SD1.5, SDXL or FLUX.1 model with LayerDiffuse")


def family_of_transformer_config(config: Mapping[str, Any], source: str = "the model") -> Family:
    """Family.FLUX for a diffusers FluxTransformer2DModel config of a text-to-image FLUX.1,
    Family.QWEN21 for Qwen-Image-2.1's transformer; the other Qwen-Image transformers are refused
    by name."""
    name = config.get("_class_name", "")
    if name == QWEN21_TRANSFORMER:
        return Family.QWEN21
    if name == QWEN_TRANSFORMER:
        raise _qwen_image_refusal(source, bool(config.get("use_layer3d_rope")))
    if name and name != "FluxTransformer2DModel" or "num_single_layers" not in config:
        raise UnsupportedModelError(f"{source} has a {name or 'transformer'} that is not FLUX.1's; LayerDiffuse "
                                    "has weights for SD1.5, SDXL and FLUX.1 only")
    in_channels = config.get("in_channels", FLUX_IN_CHANNELS)
    if in_channels != FLUX_IN_CHANNELS:
        raise UnsupportedModelError(f"{source} is a FLUX.1 transformer with {in_channels} input channels (Fill, "
                                    "Canny, Depth or another conditioned variant); LayerDiffuse-Flux needs a "
                                    "text-to-image FLUX.1 (dev, schnell or a fine-tune)")
    return Family.FLUX


def family_of_transformer(transformer) -> Family:
    return family_of_transformer_config({"_class_name": type(transformer).__name__, **dict(transformer.config)},
                                        f"the loaded transformer ({type(transformer).__name__})")


def family_of_bfl_layout(shapes: Mapping[str, Sequence[int]], source: str = "the model") -> Optional[Family]:
    """Family.FLUX for a FLUX.1 transformer in Black Forest Labs' names (single-file checkpoints,
    Forge), Family.QWEN21 for Qwen-Image-2.1's transformer in ComfyUI's names (its text
    projection's `txt_in.text_norm`), None when the names are neither; the other Qwen-Image
    transformers (`txt_norm` and `transformer_blocks`; Layered with its extra time condition) are
    refused by name."""
    if "txt_in.text_norm.weight" in shapes:
        return Family.QWEN21
    if "txt_norm.weight" in shapes and any(k.startswith("transformer_blocks.") for k in shapes):
        raise _qwen_image_refusal(source, "time_text_embed.addition_t_embedding.weight" in shapes)
    img_in = shapes.get("img_in.weight")
    if img_in is None or not any(k.startswith("double_blocks.") for k in shapes):
        return None
    # quantised weights (NF4, GGUF) are stored packed, with shapes that hide the input channels
    channels = int(img_in[1]) if len(img_in) == 2 and img_in[1] >= FLUX_IN_CHANNELS else FLUX_IN_CHANNELS
    return family_of_transformer_config({"num_single_layers": 0, "in_channels": channels}, source)


def family_of_ldm_layout(shapes: Mapping[str, Sequence[int]], source: str = "the model") -> Family:
    """Family of an LDM-named UNet from its parameter names and shapes (without the
    `diffusion_model.` prefix): a checkpoint file's header or a UNet loaded by Forge.

    SD1.5 has 4 levels and conv projections, SD2.x linear ones; SDXL has 3 levels and the
    `label_emb` embedding, the SDXL refiner 4 levels with it."""
    conv_in = shapes.get("input_blocks.0.0.weight")
    if conv_in is None:
        raise UnsupportedModelError(
            f"{source} has no SD UNet (no input_blocks.0.0.weight); it may be a Flux model (choose the (Flux) "
            "method), SD3 or a LoRA file. LayerDiffuse needs an SD1.5, SDXL or FLUX.1 checkpoint")
    config: dict[str, Any] = {"in_channels": int(conv_in[1])}
    levels = 1 + sum(1 for k in shapes if k.startswith("input_blocks.") and k.endswith(".0.op.weight"))
    if "label_emb.0.0.weight" in shapes:
        if levels != 3:
            raise UnsupportedModelError(f"{source} looks like the SDXL refiner ({levels} levels); "
                                        "LayerDiffuse needs an SDXL base model")
        config.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      addition_embed_type="text_time")
    else:
        proj = shapes.get("input_blocks.1.1.proj_in.weight", ())
        config.update(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",) * (levels - 3),
                      use_linear_projection=len(proj) == 2)
    return family_of_unet_config(config, source)


def family_of_forge_model(diffusion_model: torch.nn.Module, source: str = "the loaded checkpoint") -> Family:
    """Family of the model Forge has loaded (`diffusion_model`): an LDM-named UNet, a FLUX.1
    transformer in Black Forest Labs' names, or Qwen-Image-2.1's (Forge Neo)."""
    shapes = {k: tuple(v.shape) for k, v in diffusion_model.named_parameters()}
    return family_of_bfl_layout(shapes, source) or family_of_ldm_layout(shapes, source)


def family_of_checkpoint_file(path: Union[str, Path]) -> Family:
    """Family of a single-file (.safetensors) checkpoint from its tensor names and shapes,
    without loading any weights."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedModelError(f"{path}: only .safetensors single-file checkpoints are loaded "
                                    "(pickled .ckpt/.pt files can run code when opened)")
    prefix = "model.diffusion_model."
    try:
        with safe_open(str(path), framework="pt") as f:
            all_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise UnsupportedModelError(f"{path} cannot be read as safetensors ({exc}): the file is damaged, cut short "
                                    "by an interrupted download, or not a safetensors checkpoint. Download it again "
                                    "(its size should match the source's) or give another checkpoint.") from None
    shapes = {k[len(prefix):]: v for k, v in all_shapes.items() if k.startswith(prefix)}
    flux = family_of_bfl_layout(shapes or all_shapes, str(path))
    if flux is not None:
        return flux
    return family_of_ldm_layout(shapes, str(path))


class ModelNotAvailableError(UnsupportedModelError):
    """The model is not on this machine and cannot be fetched now; `title` names the case
    ("Model not found", "Model not downloaded", "Model not reachable") and the message says
    what to do."""

    def __init__(self, title: str, message: str):
        super().__init__(message)
        self.title = title


@dataclass(frozen=True)
class ModelLocation:
    """Where a model loads from, found without loading it."""

    model: str
    family: Optional[Family]  # None: Qwen-Image-Layered (`locate_layered_model`), which decomposes
    source: str  # "single-file checkpoint", "diffusers folder", "Hugging Face cache (...)", "Hugging Face hub (...)"
    local_only: bool  # load without asking the hub: downloads are off, or the hub cannot be reached


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(model: str) -> bool:
    """`owner/name` with the characters the hub allows (not a path, not a file name)."""
    return bool(_HUB_ID.match(model)) and not model.endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin"))


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


LOCAL_MODEL = "pass a local `--model /path/to/checkpoint.safetensors` or diffusers folder"


def how_to_get(model: str, local: str = LOCAL_MODEL) -> str:
    """What to do when a hub model cannot be downloaded here; `local` says how to give a local
    model instead where it is not the `--model` flag (a job file's `model`)."""
    return (f"Download it on a machine with network (`hf download {model}`) and copy that cache folder "
            f"here (or point `HF_HOME` at it), or {local}.")


def _not_found(model: str) -> ModelNotAvailableError:
    kind = "file" if Path(model).suffix else "folder"
    return ModelNotAvailableError("Model not found", (
        f"`{model}`: there is no such {kind} on this machine, and it is not a Hugging Face hub id "
        "(owner/name). Give a `.safetensors` checkpoint, a diffusers folder or a hub id."))


CONFIG_FILES = ("unet/config.json", "transformer/config.json")  # SD, Flux


def _family_of_config_file(path: Path, source: str) -> Family:
    config = json.loads(path.read_text())
    if path.parent.name == "transformer":
        return family_of_transformer_config(config, source)
    return family_of_unet_config(config, source)


def _hub_config(model: str, offline: bool, local: str) -> tuple[Path, str, bool]:
    """(path of the cached or downloaded unet/ or transformer/config.json, source, local_only)
    of a hub model."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub import errors as hub_errors

    from ..reachability import probe

    cached = next((c for c in (try_to_load_from_cache(model, f) for f in CONFIG_FILES) if isinstance(c, str)), None)
    downloads_off = offline or constants.HF_HUB_OFFLINE
    reach = None if downloads_off else probe(constants.ENDPOINT)
    local_only = downloads_off or not reach.ok
    if isinstance(cached, str):
        note = "" if reach is None or reach.ok else "; the hub cannot be reached, so it loads from the cache only"
        return Path(cached), f"Hugging Face cache ({hub_cache_dir()}{note})", local_only
    if downloads_off:
        why = "downloads are off (--offline)" if offline else "downloads are off (HF_HUB_OFFLINE is set)"
        raise ModelNotAvailableError("Model not downloaded", (
            f"`{model}` is not in the Hugging Face cache (`{hub_cache_dir()}`) and {why}. {how_to_get(model, local)}"))
    if not reach.ok:
        raise ModelNotAvailableError("Model not reachable", (
            f"`{model}` is not in the Hugging Face cache (`{hub_cache_dir()}`) and the Hugging Face hub "
            f"({reach.host}) cannot be reached from this machine ({reach.reason}). {how_to_get(model, local)}"))
    try:
        path = _download_first(model, hf_hub_download, hub_errors)
    except hub_errors.GatedRepoError:
        raise ModelNotAvailableError("Model not reachable", (
            f"`{model}` is gated on the Hugging Face hub: accept its licence on its page "
            f"(https://huggingface.co/{model}) and log in with `hf auth login`.")) from None
    except hub_errors.RepositoryNotFoundError:
        raise ModelNotAvailableError("Model not found", (
            f"there is no model `{model}` on the Hugging Face hub (or it is private: log in with "
            "`hf auth login`). Check the id, or give a local checkpoint or folder.")) from None
    except getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError) as exc:
        if isinstance(exc, hub_errors.LocalEntryNotFoundError):  # older hubs: a failed request
            raise ModelNotAvailableError("Model not reachable", (
                f"the Hugging Face hub did not answer for `{model}`. {how_to_get(model, local)}")) from None
        raise UnsupportedModelError(
            f"`{model}` on the Hugging Face hub has no unet/config.json or transformer/config.json: it is not a "
            "diffusers SD1.5, SDXL or FLUX.1 model (single-file checkpoints on the hub: download the "
            ".safetensors and pass its path)") from None
    except Exception as exc:
        raise ModelNotAvailableError("Model not reachable", (
            f"the Hugging Face hub did not answer for `{model}` ({type(exc).__name__}). Try again, "
            f"or: {how_to_get(model, local)}")) from None
    return Path(path), f"Hugging Face hub (downloads into {hub_cache_dir()} on first use)", False


def _download_first(model: str, download, hub_errors) -> str:
    """The first of CONFIG_FILES the repository has."""
    missing = getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)
    for name in CONFIG_FILES[:-1]:
        try:
            return download(model, name)
        except missing as exc:
            if isinstance(exc, hub_errors.LocalEntryNotFoundError):
                raise
    return download(model, CONFIG_FILES[-1])


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    from ..reachability import probe

    return not constants.HF_HUB_OFFLINE and probe(constants.ENDPOINT).ok


def locate_model(model: str, offline: bool = False, local: str = LOCAL_MODEL) -> ModelLocation:
    """Where `model` (a .safetensors file, a diffusers folder or a hub id) loads from and its
    family, without loading it. A hub id is read from the Hugging Face cache when it is there;
    otherwise only its UNet config.json is fetched, after one quick check that the hub can be
    reached (so a closed network is reported at once, not after the hub client's retries).
    Raises ModelNotAvailableError (with how to get the model; `local`: how to give a local one
    instead) or UnsupportedModelError."""
    path = Path(model).expanduser()
    if path.is_file():
        # diffusers reads a single file's pipeline config from the hub (or its cache)
        family = family_of_checkpoint_file(path)
        return ModelLocation(model, family, "single-file checkpoint", offline or not _hub_reachable())
    if path.is_dir():
        config_path = next((path / f for f in CONFIG_FILES if (path / f).is_file()), None)
        if config_path is None:
            raise UnsupportedModelError(f"{path} is a folder without unet/config.json or transformer/config.json; "
                                        "give a diffusers model folder, a .safetensors checkpoint or a hub id")
        return ModelLocation(model, _family_of_config_file(config_path, str(path)), "diffusers folder", True)
    if not looks_like_hub_id(model):
        raise _not_found(model)
    config_path, source, local_only = _hub_config(model, offline, local)
    return ModelLocation(model, _family_of_config_file(config_path, model), source, local_only)


def locate_layered_model(model: str, offline: bool = False, local: str = LOCAL_MODEL) -> ModelLocation:
    """Where a Qwen-Image-Layered model (a diffusers folder or a hub id) loads from, checked
    from its transformer config without loading it (`locate_model`'s rules for the hub)."""
    path = Path(model).expanduser()
    if path.is_file():
        raise UnsupportedModelError(f"{path} is a single file; Qwen-Image-Layered loads as a whole diffusers model "
                                    "(a folder or a hub id such as Qwen/Qwen-Image-Layered)")
    if path.is_dir():
        config_path, source, local_only = path / "transformer" / "config.json", "diffusers folder", True
        if not config_path.is_file():
            raise UnsupportedModelError(f"{path} has no transformer/config.json; give the Qwen-Image-Layered "
                                        "diffusers folder or its hub id")
    elif looks_like_hub_id(model):
        config_path, source, local_only = _hub_config(model, offline, local)
    else:
        raise _not_found(model)
    config = json.loads(config_path.read_text())
    if config.get("_class_name") != QWEN_TRANSFORMER or not config.get("use_layer3d_rope"):
        what = config.get("_class_name") or "another model"
        raise UnsupportedModelError(f"{model} is not Qwen-Image-Layered (its transformer is {what}); layer "
                                    "decomposition needs Qwen/Qwen-Image-Layered or a fine-tune of it")
    return ModelLocation(model, None, source, local_only)


def family_of_model(model: str, local_files_only: bool = False) -> Family:
    """Family of a model given as a .safetensors file, a diffusers folder or a hub id
    (`locate_model`; with `local_files_only` only the hub cache is read)."""
    return locate_model(model, local_files_only).family


_KNOWN_POOR = ("illustrious", "noob", "animagine", "lightning", "turbo", "lcm", "hyper")


def compatibility_warning(model: str) -> Optional[str]:
    """A warning when the model's name says it belongs to a kind LayerDiffuse is reported not to
    work with (retrained anime SDXL bases, distilled few-step models), else None."""
    name = Path(model).name.casefold() or model.casefold()
    hits = [word for word in _KNOWN_POOR if word in name]
    if not hits:
        return None
    return (f"{model!r} looks like a {hits[0]} model; LayerDiffuse is reported not to work with "
            "retrained anime SDXL models (Illustrious, NoobAI, Animagine 4) or distilled few-step "
            "models (Lightning, Turbo, LCM, Hyper): expect poor or no transparency")


def _article(family: Family) -> str:
    """"an SD1.5" / "an SDXL" (said "ess-dee"), "a Flux.1" / "a Qwen-Image-2.1"."""
    return "an" if family.label.startswith("S") else "a"


def check_method_family(method: Method, family: Family, host: Optional[str] = None) -> None:
    """Raise UnsupportedModelError when `method` is for another family; `host` (a WebUI's name)
    when the method runs in a WebUI, where a native-RGBA model runs on the WebUI's own engine."""
    if method.family is not family and family.native_rgba and host:
        raise UnsupportedModelError(
            f"method {method.value!r} needs {_article(method.family)} {method.family.label} "
            f"model, but the loaded checkpoint is {family.label}, which makes transparent images itself: "
            f"{host} runs it with its own engine, so switch LayerDiffuse off for it")
    if method.family is not family:
        others = ", ".join(m.name for m in Method if m.family is family)
        raise UnsupportedModelError(
            f"method {method.value!r} needs {_article(method.family)} {method.family.label} "
            f"model, but the model is "
            f"{family.label}; methods for {family.label}: {others}")
