"""Which Forge we are running in, found by feature detection at call time.

Three hosts are supported: early Forge (`ldm_patched` + `modules_forge`, spring 2024), current
Forge (`backend`, from August 2024) and Forge Neo (`backend` with a ComfyUI-style patcher whose
merge takes weight-adapter objects). Everything host-specific lives behind `ForgeHost`; anything
else (plain A1111, reForge, a Forge too old for LayerDiffuse) gets an `UnsupportedHostError`
that says what was found and what to do.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any, Callable, Optional

import torch

# The UNet patcher methods every generation must have for LayerDiffuse to work.
REQUIRED_PATCHER_METHODS = ("clone", "add_patches", "add_object_patch", "add_conditioning_modifier",
                            "add_extra_model_patcher_during_sampling", "load_frozen_patcher")


NEO_ROUTE = "Forge Neo (https://github.com/Haoming02/sd-webui-forge-classic, branch 'neo'), the maintained Forge"


class UnsupportedHostError(RuntimeError):
    """The WebUI is not a Forge build this extension knows how to patch."""


def _import(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(name)
    except Exception:  # absent, or a different package of the same name that fails to import
        return None


class ForgeHost:
    """The parts of Forge LayerDiffuse calls, with the same meaning on both generations.

    Latents called "model-space" are what the sampler works on (VAE latent times the scaling
    factor); "raw" latents are what the VAE and the transparent decoder take.
    """

    generation: int = 0
    label: str = ""

    def __init__(self, modules: dict[str, ModuleType]):
        self.modules = modules

    # ---- UNet ---------------------------------------------------------------------------

    def add_weight_patches(self, unet, filename: str, patches: dict[str, tuple], strength: float) -> set[str]:
        """Add Forge weight patches; returns the keys the UNet accepted."""
        raise NotImplementedError

    # whether a `diff` patch that widens a weight (the layer methods' conv_in) is merged also at
    # strength 0, so that the concat condition must be attached even then
    widens_at_zero_weight: bool = False

    def attach_concat_condition(self, unet, condition: torch.Tensor) -> None:
        """Give the UNet's inputs the layer methods' concat condition: Forge's sampling function
        puts `extra_concat_condition` into every cond as `c_concat`."""
        unet.extra_concat_condition = condition

    def percent_to_sigma(self, unet, percent: float) -> float:
        raise NotImplementedError

    def linear_weights(self, linear: torch.nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The weight and bias a UNet linear layer's forward computes with (attention sharing
        merges its own weights into them)."""
        return linear.weight, linear.bias

    def sampling_prepare(self, unet, x: torch.Tensor) -> None:
        """Load `unet` (and what it brings along) for sampling, through Forge's memory manager."""
        raise NotImplementedError

    # ---- VAE and latents ----------------------------------------------------------------

    def raw_latents(self, p, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> raw VAE latents."""
        raise NotImplementedError

    def decode_unclipped(self, p, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the ordinary decode `[B,3,H,W]` in [0,1] without clipping (what the
        Flux decoder takes; only current Forge runs Flux)."""
        raise NotImplementedError

    def encode_pixels(self, p, pixels: torch.Tensor) -> torch.Tensor:
        """`[B,H,W,3]` pixels in [0,1] -> model-space latents (the posterior mean where the
        host lets us choose)."""
        raise NotImplementedError

    supports_transparent_img2img: bool = False

    def set_vae_regulation(self, p, regulation: Callable[[Any], torch.Tensor]) -> None:
        raise UnsupportedHostError(f"{self.label} cannot change how img2img encodes the init image; "
                                   "transparent img2img needs current Forge")

    # ---- memory -------------------------------------------------------------------------

    @property
    def memory(self) -> ModuleType:
        return self.modules["memory"]

    def torch_device(self) -> torch.device:
        return torch.device(self.memory.get_torch_device())

    def should_use_fp16(self) -> bool:
        return bool(self.memory.should_use_fp16(self.torch_device()))

    def patcher_for(self, module: torch.nn.Module) -> Any:
        """The host's model patcher of an extra network (the transparent decoder, the SD1.5
        sharing weights), one per network and kept with it: the memory manager then sees the same
        model every call. A new patcher per call leaves the manager an entry whose patcher died
        while the network lives on in our cache (Forge Neo logs "Memory Leak" for each, every call)."""
        patcher = getattr(module, PATCHER_ATTRIBUTE, None)
        if patcher is None:
            patcher = self.modules["model_patcher"].ModelPatcher(
                module, load_device=self.torch_device(), offload_device=self.memory.unet_offload_device())
            setattr(module, PATCHER_ATTRIBUTE, patcher)  # a cycle: freed with the network
        return patcher

    def load_module(self, module: torch.nn.Module) -> torch.device:
        """Move an extra network (the transparent decoder) onto the GPU through Forge's memory
        manager, which offloads other models when space is short."""
        self.memory.load_model_gpu(self.patcher_for(module))
        return next(module.parameters()).device


PATCHER_ATTRIBUTE = "_layerdiffuse_host_patcher"


def _missing_methods(patcher_cls: type) -> list[str]:
    return [m for m in REQUIRED_PATCHER_METHODS if not callable(getattr(patcher_cls, m, None))]


def detect_host() -> ForgeHost:
    """The adapter for the running Forge, or UnsupportedHostError explaining why there is none."""
    from .gen1 import EarlyForge
    from .gen2 import CurrentForge
    from .neo import neo_host

    unet_v2 = _import("backend.patcher.unet")
    if unet_v2 is not None and hasattr(unet_v2, "UnetPatcher"):
        if hasattr(_import("backend.patcher.lora"), "weight_adapter"):  # Neo merges weight adapters
            missing = _missing_methods(unet_v2.UnetPatcher)
            if missing:
                raise UnsupportedHostError(f"this Forge Neo's UNet patcher lacks {', '.join(missing)}; LayerDiffuse "
                                           "was tested with Neo 2.26, update Neo or report the release")
            return neo_host(unet_v2)
        patcher = unet_v2.UnetPatcher
        missing = _missing_methods(patcher)
        if missing or "filename" not in inspect.signature(patcher.add_patches).parameters:
            raise UnsupportedHostError(
                "this WebUI has Forge's 'backend' package but its UNet patcher differs from current "
                f"Forge (missing: {', '.join(missing) or 'add_patches(filename=...)'}). LayerDiffuse supports "
                f"lllyasviel's Forge and {NEO_ROUTE}.")
        return CurrentForge({
            "unet": unet_v2, "memory": importlib.import_module("backend.memory_management"),
            "model_patcher": importlib.import_module("backend.patcher.base"),
            "sampling": importlib.import_module("backend.sampling.sampling_function"),
            "operations": importlib.import_module("backend.operations"),
        })
    unet_v1 = _import("modules_forge.unet_patcher")
    ldm = _import("ldm_patched.modules.model_patcher")
    if unet_v1 is not None and ldm is not None and hasattr(unet_v1, "UnetPatcher"):
        missing = _missing_methods(unet_v1.UnetPatcher)
        if missing:
            raise UnsupportedHostError(
                f"this Forge is too old for LayerDiffuse (its UNet patcher lacks {', '.join(missing)}; "
                "Forge from 2024-03-08 or later is needed). Update Forge with 'git pull'.")
        return EarlyForge({
            "unet": unet_v1, "memory": importlib.import_module("ldm_patched.modules.model_management"),
            "model_patcher": ldm, "sampling": importlib.import_module("modules_forge.forge_sampler"),
        })
    if ldm is not None:
        raise UnsupportedHostError(
            "this WebUI has 'ldm_patched' but not Forge's 'modules_forge' UNet patcher (reForge or "
            f"another fork); LayerDiffuse supports Stable Diffusion WebUI Forge and {NEO_ROUTE}.")
    raise UnsupportedHostError(
        "LayerDiffuse needs Stable Diffusion WebUI Forge (it patches the UNet through Forge's "
        "patcher); this WebUI has neither 'backend' nor 'ldm_patched' (plain AUTOMATIC1111?). "
        f"Use {NEO_ROUTE}, or outside Forge 'python -m lib_layerdiffuse generate' on diffusers.")
