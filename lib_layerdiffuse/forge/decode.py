"""Transparent decoding inside Forge, from the final latents of each batch.

`post_sample` hands over the batch's model-space latents after all sampling (hires fix
included); `postprocess_batch` hands over the ordinary VAE decode as floats in [0,1]. Both
exist in both Forge generations, so decoding does not depend on a VAE-decode wrapper (early
Forge) or on 8-bit, overlay-composited pixels (current Forge's `pixels_after_sampling`), and
it always feeds the decoder the raw (unscaled) latent it was trained on.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..vae.frontends import decoder_for
from .job import Job
from .unet_files import weight_store


def transparent_indices(job: Job, batch: int) -> list[int]:
    """Batch indices whose frame the method decodes transparently (interleaved frames)."""
    spec = job.params.method.spec
    return [i for i in range(batch) if i % spec.frame_count in spec.transparent]


@torch.no_grad()
def decode_batch(p: Any, job: Job, images: torch.Tensor) -> None:
    """Fill `job.outputs` with (RGBA, preview) arrays for this batch's transparent images."""
    job.outputs = {}
    latents, job.latents = job.latents, None
    if latents is None:
        return
    host = job.host
    raw = host.raw_latents(p, latents).float()
    pixels = images.float()
    if tuple(pixels.shape[-2:]) != tuple(s * 8 for s in raw.shape[-2:]):
        job.note(p, f"transparent decoding skipped: the images ({pixels.shape[-1]}x{pixels.shape[-2]}) do "
                    f"not match the latents ({raw.shape[-1] * 8}x{raw.shape[-2] * 8})")
        return
    dtype = torch.float16 if host.should_use_fp16() else torch.float32
    decoder = decoder_for(job.family, weight_store(), "cpu", dtype)
    device = host.load_module(decoder.model)
    indices = transparent_indices(job, raw.shape[0])
    for i in tqdm(indices, desc="LayerDiffuse transparent decoding", disable=len(indices) < 2):
        out = decoder.decode(raw[i:i + 1].to(device, dtype), pixels[i:i + 1].to(device, dtype))
        job.outputs[i] = (out.rgba[0], out.preview[0])
