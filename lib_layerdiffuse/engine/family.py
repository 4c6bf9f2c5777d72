"""Which model family a checkpoint or a loaded UNet belongs to, checked before any work.

LayerDiffuse has weights for SD1.5 and SDXL only. The UNet's block layout tells them apart
from each other and from what looks similar (SD2.x: linear projections; the SDXL refiner: four
levels; inpainting UNets: 9 input channels; Flux / SD3: no UNet at all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from ..methods import Family, Method
from ..unet_blocks import STRUCTURES


class UnsupportedModelError(ValueError):
    """The model is not an SD1.5 or SDXL UNet, or does not match the chosen method."""


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
                                "LayerDiffuse has weights for SD1.5 and SDXL only")


def family_of_unet(unet) -> Family:
    return family_of_unet_config(dict(unet.config), f"the loaded UNet ({type(unet).__name__})")


def family_of_ldm_layout(shapes: Mapping[str, Sequence[int]], source: str = "the model") -> Family:
    """Family of an LDM-named UNet from its parameter names and shapes (without the
    `diffusion_model.` prefix): a checkpoint file's header or a UNet loaded by Forge.

    SD1.5 has 4 levels and conv projections, SD2.x linear ones; SDXL has 3 levels and the
    `label_emb` embedding, the SDXL refiner 4 levels with it."""
    conv_in = shapes.get("input_blocks.0.0.weight")
    if conv_in is None:
        raise UnsupportedModelError(
            f"{source} has no SD UNet (no input_blocks.0.0.weight); it may be a Flux, SD3 or a LoRA "
            "file. LayerDiffuse needs an SD1.5 or SDXL checkpoint")
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


def family_of_ldm_unet(diffusion_model: torch.nn.Module, source: str = "the loaded checkpoint") -> Family:
    """Family of an LDM-named UNet module (`diffusion_model` inside Forge)."""
    return family_of_ldm_layout({k: tuple(v.shape) for k, v in diffusion_model.named_parameters()}, source)


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
            shapes = {k[len(prefix):]: tuple(f.get_slice(k).get_shape())
                      for k in f.keys() if k.startswith(prefix)}
    except Exception as exc:
        raise UnsupportedModelError(f"{path} cannot be read as safetensors: {exc}") from None
    return family_of_ldm_layout(shapes, str(path))


def family_of_model(model: str, local_files_only: bool = False) -> Family:
    """Family of a model given as a .safetensors file, a diffusers folder or a hub id (only
    the UNet's config.json is fetched; with `local_files_only` only the hub cache is read)."""
    path = Path(model)
    if path.is_file():
        return family_of_checkpoint_file(path)
    if path.is_dir():
        config_path = path / "unet" / "config.json"
        if not config_path.is_file():
            raise UnsupportedModelError(f"{path} is a folder without unet/config.json; give a diffusers "
                                        "model folder, a .safetensors checkpoint or a hub id")
        return family_of_unet_config(json.loads(config_path.read_text()), str(path))
    if model.endswith((".safetensors", ".ckpt")) or "/" not in model:
        raise UnsupportedModelError(f"model {model!r} not found: no such file, and not a hub id "
                                    "(owner/name)")
    try:
        from huggingface_hub import hf_hub_download

        config_path = hf_hub_download(model, "unet/config.json", local_files_only=local_files_only)
    except Exception as exc:
        raise UnsupportedModelError(
            f"cannot read the UNet config of {model!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{exc}). Offline? Download the model once, or give a local folder or .safetensors file"
        ) from None
    return family_of_unet_config(json.loads(Path(config_path).read_text()), model)


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


def check_method_family(method: Method, family: Family) -> None:
    """Raise UnsupportedModelError when `method` is for the other family."""
    if method.family is not family:
        others = ", ".join(m.name for m in Method if m.family is family)
        raise UnsupportedModelError(
            f"method {method.value!r} needs an {method.family.label} model, but the model is "
            f"{family.label}; methods for {family.label}: {others}")
