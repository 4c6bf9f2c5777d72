"""Transparent decoding inside Forge, from the final latents of each batch.

`post_sample` hands over the batch's model-space latents after sampling, except with hires
fix: both Forge generations decode the hires pass themselves and `post_sample` then gets
pixels (`DecodedSamples`). The latents are therefore also kept where the sampler hands them
back (`keep_sampler_output`), and `post_sample` only replaces them when it has a tensor (what
Forge is about to decode, possibly changed by another script). `postprocess_batch` hands over
the ordinary VAE decode as floats in [0,1]. Both hooks exist in both Forge generations, so
decoding does not depend on a VAE-decode wrapper (early Forge) or on 8-bit,
overlay-composited pixels (current Forge's `pixels_after_sampling`), and it always feeds the
decoder the raw (unscaled) latent it was trained on. The Flux decoder takes the ordinary decode
unclipped, as its release feeds it; Forge's comes clipped, so for Flux it is decoded again.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..methods import Family
from ..vae.conventions import convention_of
from ..vae.frontends import decoder_for
from .job import Job
from .unet_files import weight_store

_KEPT = "_layerdiffuse_keeps_output"


def keep_sampler_output(p: Any, job: Job) -> None:
    """Make the sampler of the coming pass (`p.sampler`, created before
    `process_before_every_sampling` in txt2img, img2img and the hires pass) store the latents
    it returns in `job.latents`."""
    sampler = getattr(p, "sampler", None)
    if sampler is None or getattr(sampler, _KEPT, False):
        return
    for name in ("sample", "sample_img2img"):
        method = getattr(sampler, name, None)
        if callable(method):
            setattr(sampler, name, _keeping(method, job))
    setattr(sampler, _KEPT, True)


def _keeping(sample: Callable, job: Job) -> Callable:
    @functools.wraps(sample)
    def run(*args: Any, **kwargs: Any) -> Any:
        samples = sample(*args, **kwargs)
        if isinstance(samples, torch.Tensor):
            job.latents = samples.detach()
        return samples
    return run


def transparent_indices(job: Job, batch: int) -> list[int]:
    """Batch indices whose frame the method decodes transparently (interleaved frames)."""
    spec = job.params.method.spec
    return [i for i in range(batch) if i % spec.frame_count in spec.transparent]


# Forge's Flux predictor has 10000 pseudo-timesteps and sigma(t) = t: a scheduler that reads the
# model's sigma range (Euler's "Automatic") starts at sigma 10000 (seen in real Forge, dfdcbab6)
_NAN_HINTS = {Family.FLUX: "on Flux, set the scheduler to Simple as Forge's Flux preset does; with "
                           "\"Automatic\" Forge starts Flux at sigma 10000"}


@torch.no_grad()
def decode_batch(p: Any, job: Job, images: torch.Tensor) -> None:
    """Fill `job.outputs` with the RGBA arrays of this batch's transparent images."""
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
    if not bool(torch.isfinite(raw).all()):
        job.note(p, "transparent decoding skipped: sampling produced NaN or infinite latents (" + _NAN_HINTS.get(
            job.family, "a model or prompt encoding that overflows, e.g. in fp16: try --no-half or another "
                        "checkpoint") + ")")
        return
    if not convention_of(job.family).clip_pixel:
        pixels = host.decode_unclipped(p, raw).cpu()  # Forge's own decode came clipped
    dtype = torch.float16 if host.should_use_fp16() else torch.float32
    decoder = decoder_for(job.family, weight_store(), "cpu", dtype)
    device = host.load_module(decoder.model)
    indices = transparent_indices(job, raw.shape[0])
    for i in tqdm(indices, desc="LayerDiffuse transparent decoding", disable=len(indices) < 2):
        out = decoder.decode(raw[i:i + 1].to(device, dtype), pixels[i:i + 1].to(device, dtype))
        job.outputs[i] = out.rgba[0]
