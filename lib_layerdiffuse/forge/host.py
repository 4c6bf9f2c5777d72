"""What LayerDiffuse needs from a Forge host: the `ForgeHost` interface the adapters implement
(`gen1`, `gen2`, `neo`; `detect` picks one at call time).

Three hosts are supported: early Forge (`ldm_patched` + `modules_forge`, spring 2024), current
Forge (`backend`, from August 2024) and Forge Neo (`backend` with a ComfyUI-style patcher whose
merge takes weight-adapter objects). Everything host-specific lives behind `ForgeHost`; anything
else (plain A1111, reForge, a Forge too old for LayerDiffuse) gets an `UnsupportedHostError`
that says what was found and what to do (`detect.detect_host`, above the adapters).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional

import torch


class UnsupportedHostError(RuntimeError):
    """The WebUI is not a Forge build this extension knows how to patch."""


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
