"""Diffusers models for tests: tiny random SD1.5-like / SDXL-like UNets and VAEs, and the
real-size UNets on the `meta` device (shapes only, no memory)."""

from __future__ import annotations

import torch

from .unet_specs import FULL, TINY, UNetSpec, diffusers_unet_config

SCALING_FACTORS = {"sd15": 0.18215, "sdxl": 0.13025}


def _spec(family: str, table: dict[str, UNetSpec]) -> UNetSpec:
    try:
        return table[family]
    except KeyError:
        raise ValueError(f"family must be one of {sorted(table)}, got {family!r}") from None


def tiny_unet(family: str, seed: int = 0):
    """A small UNet2DConditionModel with the block structure of `family` and random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**diffusers_unet_config(_spec(family, TINY)))
    return model.eval()


def meta_unet(family: str):
    """The real-size SD1.5 or SDXL UNet built on the meta device (names and shapes only)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**diffusers_unet_config(_spec(family, FULL)))


def tiny_vae(family: str, seed: int = 0):
    """A small AutoencoderKL with the real /8 downsampling, 4 latent channels and the family's
    scaling factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    model = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
        sample_size=64, scaling_factor=SCALING_FACTORS[_spec(family, TINY).family],
    )
    return model.eval()
