"""How each family's transparent VAE meets its latents and pixels.

The SD1.5 and SDXL networks (LayerDiffuse) and the Flux ones (LayerDiffuse-Flux, a separate
training) share their architecture but not their conventions:
- latent channels: 4 for SD, 16 for Flux;
- channel order: the SD decoder outputs [alpha, RGB] and its encoder takes [alpha, padded RGB];
  the Flux decoder outputs [RGB, alpha] (its demo writes the output straight as RGBA) and its
  encoder takes [padded RGB, alpha];
- the ordinary decode given to the decoder: clipped to [0, 1] for SD; not clipped for Flux
  (its `TransparentVAE.decode` passes `decode * 0.5 + 0.5` as it is);
- raw and model latents: `raw = model / scaling_factor + shift_factor` (SD has no shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..methods import Family


@dataclass(frozen=True)
class VaeConvention:
    latent_channels: int
    alpha_first: bool  # decoder output [alpha, RGB] and encoder input [alpha, padded RGB]
    clip_pixel: bool  # the ordinary decode is clipped to [0, 1] before the decoder sees it


SD = VaeConvention(latent_channels=4, alpha_first=True, clip_pixel=True)
FLUX = VaeConvention(latent_channels=16, alpha_first=False, clip_pixel=False)


def convention_of(family: Union[Family, str]) -> VaeConvention:
    return FLUX if Family(family) is Family.FLUX else SD


def shift_of(vae_config) -> float:
    """The VAE's latent shift (Flux: 0.1159; SD VAEs have none)."""
    return float(getattr(vae_config, "shift_factor", None) or 0.0)


def to_raw(latent, vae_config):
    """Model-space latent -> the raw VAE latent the decoders take."""
    return latent / vae_config.scaling_factor + shift_of(vae_config)


def to_model(raw, vae_config):
    """Raw VAE latent -> model space (what the UNet or transformer samples)."""
    return (raw - shift_of(vae_config)) * vae_config.scaling_factor
