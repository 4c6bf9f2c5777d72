"""The reference extension's transparent decode, read independently from its report: the
yardstick for `vae.augment.estimate_augmented` in the tests and the baseline of the decoder
benchmarks. The network runs through diffusers' own block forwards, as in the reference
(`UNet1024.forward` runs the same blocks through leaner code of its own)."""

from __future__ import annotations

import torch

from ..vae.networks import LATENT_LEVEL, UNet1024


def diffusers_forward(model: UNet1024, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """`model`'s output computed by calling each diffusers block as a whole."""
    h = model.conv_in(pixel)
    skips = [h]
    for i, block in enumerate(model.down_blocks):
        if i == LATENT_LEVEL:
            h = h + model.latent_conv_in(latent)
        h, res = block(hidden_states=h, temb=None)
        skips.extend(res)
    h = model.mid_block(h, None)
    for block in model.up_blocks:
        n = len(block.resnets)
        h = block(h, tuple(skips[-n:]), None)
        del skips[-n:]
    return model.conv_out(model.conv_act(model.conv_norm_out(h)))


@torch.no_grad()
def reference_tta(model: UNet1024, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """8 variants one after another, in the model's layout as it is: flip along W (or not),
    rotate by k quarter turns, run, clip to [0, 1], rotate back, flip back; then the
    element-wise lower median (`torch.median`)."""
    outputs = []
    for flip in (False, True):
        for k in range(4):
            p, lt = (torch.flip(t, dims=(3,)) if flip else t for t in (pixel, latent))
            y = diffusers_forward(model, torch.rot90(p, k, dims=(2, 3)), torch.rot90(lt, k, dims=(2, 3))).clip(0, 1)
            y = torch.rot90(y, -k, dims=(2, 3))
            outputs.append(torch.flip(y, dims=(3,)) if flip else y)
    return torch.median(torch.stack(outputs), dim=0).values
