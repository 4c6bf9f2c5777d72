"""Early Forge (`ldm_patched` + `modules_forge`, March to July 2024)."""

from __future__ import annotations

import torch

from .host import ForgeHost


class EarlyForge(ForgeHost):
    generation = 1
    label = "early Forge (ldm_patched)"

    def add_weight_patches(self, unet, filename: str, patches: dict[str, tuple], strength: float) -> set[str]:
        # positional: (patches, strength_patch, strength_model); no patch-set cache to defeat
        return set(unet.add_patches(patches, float(strength), 1.0))

    def percent_to_sigma(self, unet, percent: float) -> float:
        return float(unet.model.model_sampling.percent_to_sigma(percent))

    def sampling_prepare(self, unet, x: torch.Tensor) -> None:
        self.modules["sampling"].sampling_prepare(unet, x)

    def raw_latents(self, p, latents: torch.Tensor) -> torch.Tensor:
        return p.sd_model.forge_objects.unet.model.latent_format.process_out(latents)

    def encode_pixels(self, p, pixels: torch.Tensor) -> torch.Tensor:
        objects = p.sd_model.forge_objects
        return objects.unet.model.latent_format.process_in(objects.vae.encode(pixels))
