"""Forge Neo (Haoming02's continuation of Forge, `backend` with a ComfyUI-style patcher, 2025-).

What differs from current Forge, and how LayerDiffuse goes around it without changing a Neo file:
- Weight patches: Neo merges weight-adapter objects, `diff` and `set`; a raw `("lora", ...)`
  tuple raises. LoRA patches become Neo's own `LoRAAdapter`, and a `diff` that widens a weight
  (the SDXL layer methods' `conv_in`) asks for Neo's padding (`{"pad_weight": True}`). Neo pads
  before it looks at the strength, so the widened `conv_in` is there even at weight 0.
- No VAE regulation hook: Neo's VAE `encode` samples its posterior. Transparent img2img and the
  SDXL condition encode patch `encode` on a clone of the VAE through the clone's own object
  patches, which Neo applies when it loads that clone and takes back when it loads another.
- Layers keep on-the-fly LoRAs in `weight_function`, low-bit weights as `QuantizedTensor` or
  GGUF parameters: attention sharing reads what the layer's forward computes with.
- No stealth infotext, no `unload_model_clones` (not used here).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple, Optional

import torch

from .gen2 import CurrentForge
from .host import UnsupportedHostError


class Posterior(NamedTuple):
    """The VAE's diagonal Gaussian, as the regulations (`mean + std * offset`) read it."""

    mean: torch.Tensor
    std: torch.Tensor


def posterior_of(moments: torch.Tensor) -> Posterior:
    """The posterior of an encoder output `[B, 2C, h, w]` (mean and log-variance halves, the
    log-variance clamped to [-30, 20] as every LDM VAE does)."""
    mean, logvar = moments.chunk(2, dim=1)
    return Posterior(mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))


def regulated_encode(model: torch.nn.Module, regulation: Callable[[Any], torch.Tensor]) -> Callable:
    """A replacement for `model.encode` (Neo's `AutoencoderKL`) that returns
    `regulation(posterior)` instead of a random sample of the posterior."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        moments = model.encoder(x)
        if getattr(model, "quant_conv", None) is not None:
            moments = model.quant_conv(moments)
        return regulation(posterior_of(moments))

    return encode


class ForgeNeo(CurrentForge):
    generation = 3
    label = "Forge Neo"
    supports_transparent_img2img = True
    widens_at_zero_weight = True

    def attach_concat_condition(self, unet, condition: torch.Tensor) -> None:
        """Neo's sampling function passes `extra_concat_condition` on only for inpainting models
        (an SDXL layer method then met a widened conv_in with 4 channels: HTTP 500), so a
        conditioning modifier, run every step before the stop-at one, puts it into the conds."""
        super().attach_concat_condition(unet, condition)
        unet.add_conditioning_modifier(concat_modifier(condition))

    def __init__(self, modules: dict, release: str = ""):
        super().__init__(modules)
        if release:
            self.label = f"Forge Neo {release}"

    # ---- UNet ---------------------------------------------------------------------------

    def neo_patches(self, patches: dict, source: str) -> dict:
        """Our `(type, tensors)` patches in the form Neo's `merge_lora_to_weight` takes."""
        adapter = self.modules["lora"].weight_adapter.LoRAAdapter
        converted = {}
        for key, (kind, tensors) in patches.items():
            if kind == "lora":
                up, down, alpha, mid, dora_scale = (list(tensors) + [None] * 5)[:5]
                converted[key] = adapter(set(), (up, down, alpha, mid, dora_scale, None))
            elif kind == "diff":
                converted[key] = ("diff", (tensors[0], {"pad_weight": True}))
            else:
                raise ValueError(f"{source}: patch type {kind!r} of {key} has no Forge Neo form")
        return converted

    def add_weight_patches(self, unet, filename: str, patches: dict[str, tuple], strength: float) -> set[str]:
        """Neo merges patches into a copy of each weight made with `weight.to(dtype)`, which for
        a GGUF weight is its packed data: the layer was left with a plain tensor of packed bytes
        (real Neo 2.26, GGUF Flux: HTTP 500 on every call, plain ones too, until a restart).
        Patches of quantised weights (GGUF, mixed precision) therefore go in on the fly (Neo's
        `online_mode`: merged into the dequantised weight at each forward); the others are
        merged once, as Neo does for its own LoRAs."""
        converted = self.neo_patches(patches, filename)
        quantised = {k: v for k, v in converted.items() if self._quantised(unet.model, k if isinstance(k, str) else k[0])}
        merged = {k: v for k, v in converted.items() if k not in quantised}
        keys = set()
        for group, online in ((merged, False), (quantised, True)):
            if group:
                keys |= set(unet.add_patches(group, float(strength), 1.0, filename=filename, online_mode=online))
        return keys

    def _quantised(self, model: torch.nn.Module, key: str) -> bool:
        """Whether the parameter `key` of `model` is stored quantised (GGUF or mixed precision)."""
        weight = model
        for name in key.split("."):
            weight = getattr(weight, name, None)
        return self._is_quantised(weight)

    def _is_quantised(self, weight: Optional[torch.Tensor]) -> bool:
        return isinstance(weight, self.modules["quant_ops"].QuantizedTensor) or \
            getattr(weight, "gguf_cls", None) is not None

    def linear_weights(self, linear: torch.nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The weight after dequantising (mixed-precision `QuantizedTensor`, GGUF) and after the
        layer's weight functions (LoRAs Neo applies on the fly, low-VRAM patches). Neo's weight
        functions merge into the tensor they are given, so they get a copy, as in Neo's forward."""
        weight = linear.weight
        if isinstance(weight, self.modules["quant_ops"].QuantizedTensor):
            weight = weight.dequantize()
        elif self._is_quantised(weight):  # GGUF
            weight = importlib.import_module("backend.operations_gguf").dequantize_tensor(weight)
        return _through(weight, getattr(linear, "weight_function", None)), \
            _through(linear.bias, getattr(linear, "bias_function", None))

    # ---- VAE ----------------------------------------------------------------------------

    def _regulated_vae(self, p, regulation: Callable[[Any], torch.Tensor]):
        vae = p.sd_model.forge_objects.vae.clone()
        vae.patcher.add_object_patch("encode", regulated_encode(vae.first_stage_model, regulation))
        return vae

    def encode_pixels(self, p, pixels: torch.Tensor) -> torch.Tensor:
        vae = self._regulated_vae(p, lambda posterior: posterior.mean)
        return vae.first_stage_model.process_in(vae.encode(pixels))

    def set_vae_regulation(self, p, regulation: Callable[[Any], torch.Tensor]) -> None:
        p.sd_model.forge_objects.vae = self._regulated_vae(p, regulation)


def _through(tensor: Optional[torch.Tensor], functions) -> Optional[torch.Tensor]:
    if tensor is None or not functions:
        return tensor
    tensor = tensor.detach().clone()
    for function in functions:
        tensor = function(tensor)
    return tensor


def neo_release() -> Optional[str]:
    """Neo's release ("2.26"), or None when `modules_forge.forge_version` does not say "neo"."""
    try:
        version = importlib.import_module("modules_forge.forge_version")
    except Exception:
        return None
    if str(getattr(version, "version", "")).lower() != "neo":
        return None
    return str(getattr(version, "release", "") or "")


def neo_host(unet_module) -> ForgeNeo:
    """The Neo adapter, or UnsupportedHostError naming what this Neo lacks."""
    modules = {"unet": unet_module}
    for key, name in (("memory", "backend.memory_management"), ("model_patcher", "backend.patcher.base"),
                      ("sampling", "backend.sampling.sampling_function"), ("operations", "backend.operations"),
                      ("lora", "backend.patcher.lora"), ("quant_ops", "backend.quant_ops")):
        try:
            modules[key] = importlib.import_module(name)
        except Exception as exc:
            raise UnsupportedHostError(f"this Forge Neo lacks {name} ({type(exc).__name__}: {exc}); LayerDiffuse "
                                       "was tested with Neo 2.26, update Neo or report the release") from None
    missing = [name for name, ok in (
        ("weight_adapter.LoRAAdapter", hasattr(getattr(modules["lora"], "weight_adapter", None), "LoRAAdapter")),
        ("QuantizedTensor", hasattr(modules["quant_ops"], "QuantizedTensor")),
        ("sampling_prepare", hasattr(modules["sampling"], "sampling_prepare")),
    ) if not ok]
    if missing:
        raise UnsupportedHostError(f"this Forge Neo lacks {', '.join(missing)}; LayerDiffuse was tested with "
                                   "Neo 2.26, update Neo or report the release")
    return ForgeNeo(modules, neo_release() or "")


def concat_modifier(condition: torch.Tensor):
    """A Forge conditioning modifier that sets `c_concat` (Neo's `Condition`) in copies of the
    cond and uncond dicts whose latents match the condition's batch and size."""
    from backend.sampling.condition import Condition  # Neo

    def attach(conds: Optional[list]) -> Optional[list]:
        return None if conds is None else [
            {**c, "model_conds": {**c.get("model_conds", {}), "c_concat": Condition(condition)}} for c in conds]

    def modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if x is not None and (x.shape[0], *x.shape[2:]) == (condition.shape[0], *condition.shape[2:]):
            uncond, cond = attach(uncond), attach(cond)
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed
    return modifier
