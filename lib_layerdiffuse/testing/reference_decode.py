"""The reference extension's transparent decode, read independently from its report: the
yardstick for `vae.augment.estimate_augmented` in the tests and the baseline of the decoder
benchmarks."""

from __future__ import annotations

import torch


@torch.no_grad()
def reference_tta(model: torch.nn.Module, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """8 variants one after another, in the model's layout as it is: flip along W (or not),
    rotate by k quarter turns, run, clip to [0, 1], rotate back, flip back; then the
    element-wise lower median (`torch.median`)."""
    outputs = []
    for flip in (False, True):
        for k in range(4):
            p, lt = (torch.flip(t, dims=(3,)) if flip else t for t in (pixel, latent))
            y = model(torch.rot90(p, k, dims=(2, 3)), torch.rot90(lt, k, dims=(2, 3))).clip(0, 1)
            y = torch.rot90(y, -k, dims=(2, 3))
            outputs.append(torch.flip(y, dims=(3,)) if flip else y)
    return torch.median(torch.stack(outputs), dim=0).values
