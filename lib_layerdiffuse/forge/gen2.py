"""Current Forge (`backend`, from August 2024)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import torch

from .host import ForgeHost


class CurrentForge(ForgeHost):
    generation = 2
    label = "Forge (backend)"
    supports_transparent_img2img = True

    def add_weight_patches(self, unet, filename: str, patches: dict[str, tuple], strength: float) -> set[str]:
        # Forge keys its merged-weight cache by (filename, strengths): the filename must name the
        # content, or a different file under the same name would leave stale weights merged.
        return set(unet.add_patches(filename=filename, patches=patches, strength_patch=float(strength),
                                    strength_model=1.0))

    def percent_to_sigma(self, unet, percent: float) -> float:
        return float(unet.model.predictor.percent_to_sigma(percent))

    def linear_weights(self, linear: torch.nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Through Forge's own helper, which applies what its layers' forward applies: the
        weight scale of scaled fp8 files and the LoRAs it keeps beside a low-bit weight instead
        of merging them (online mode); GGUF weights are dequantised first."""
        weight_fn = None
        if getattr(linear.weight, "gguf_cls", None) is not None:
            weight_fn = importlib.import_module("backend.operations_gguf").dequantize_tensor
        return self.modules["operations"].get_weight_and_bias(linear, weight_fn=weight_fn)

    def sampling_prepare(self, unet, x: torch.Tensor) -> None:
        self.modules["sampling"].sampling_prepare(unet, x)

    def raw_latents(self, p, latents: torch.Tensor) -> torch.Tensor:
        return p.sd_model.forge_objects.vae.first_stage_model.process_out(latents)

    def decode_unclipped(self, p, raw: torch.Tensor) -> torch.Tensor:
        """The ordinary decode `[B,3,H,W]` mapped to [0,1] but not clipped (Forge's own decode
        clips), loaded through Forge's memory manager."""
        vae = p.sd_model.forge_objects.vae
        self.memory.load_model_gpu(vae.patcher)
        model = vae.first_stage_model
        param = next(model.parameters())
        return model.decode(raw.to(param.device, param.dtype)).float() * 0.5 + 0.5

    def encode_pixels(self, p, pixels: torch.Tensor) -> torch.Tensor:
        vae = p.sd_model.forge_objects.vae.clone()
        vae.patcher.set_model_vae_regulation(lambda posterior: posterior.mean)
        return vae.first_stage_model.process_in(vae.encode(pixels))

    def set_vae_regulation(self, p, regulation: Callable[[Any], torch.Tensor]) -> None:
        vae = p.sd_model.forge_objects.vae.clone()
        vae.patcher.set_model_vae_regulation(regulation)
        p.sd_model.forge_objects.vae = vae
