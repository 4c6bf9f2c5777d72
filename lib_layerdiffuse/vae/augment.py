"""Running the transparent decoder: padding to its size grid and test-time augmentation.

`estimate_augmented(model, pixel, latent, passes=8)` reproduces the reference: the 8 variants
{no flip, flip along W} x {rot90 by k = 0..3} (flip first, then rotate, on pixel and latent
alike), each output clipped to [0, 1] and mapped back, then the element-wise lower median
(`torch.median`) in fp32. Fewer passes trade quality for speed: 1 = plain pass, 2 = identity
and flip (averaged: the lower median of two values would be their minimum), 4 = {identity,
flip} x {0, 180 degrees} (lower median, as with 8).

Batching: on a GPU, variants of one orientation (k even keeps HxW, k odd turns it to WxH) run
together, as many per forward pass as fit in half the free memory at the measured cost per
pixel; if a pass still runs out of memory the batch is halved and retried, down to one. On the
CPU the default is one sample per pass: benchmarks/decoder_speed.py measured batching there as
no faster (1.0-1.3x the time) for 1.6-3.4x the peak memory.

Memory layout: on the CPU the decoder runs channels-last (NHWC). oneDNN's convolutions work in
that layout, so in the default NCHW layout every convolution reorders its input and output;
channels-last removes those copies: 1.33x faster at 8 passes at 512x512 and 1.34x at 1024x1024
on the 2-core test machine (benchmarks/decoder_speed.py), outputs within 1e-5 of the NCHW run
(the same arithmetic, summed in another order).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

Variant = tuple[bool, int]  # (flip along W, quarter turns)

ALL_VARIANTS: tuple[Variant, ...] = tuple((flip, k) for flip in (False, True) for k in range(4))
VARIANTS: dict[int, tuple[Variant, ...]] = {
    1: ((False, 0),),
    2: ((False, 0), (True, 0)),
    4: ((False, 0), (True, 0), (False, 2), (True, 2)),
    8: ALL_VARIANTS,
}
# Peak working memory of one decoder sample per input pixel, in values: UNet1024 without
# gradients at 512x512 peaked at about 400 MiB per sample in fp32 (benchmarks/decoder_speed.py).
_VALUES_PER_PIXEL = 400


def pad_to_multiple(pixel: torch.Tensor, latent: torch.Tensor, multiple: int = 64):
    """Pad pixel `[B,3,H,W]` and latent `[B,4,H/8,W/8]` at the bottom/right to multiples of
    `multiple` (the latent by the matching /8 amount, by edge replication; never resized).
    Returns the padded pair and the original (H, W) to crop back to."""
    if pixel.ndim != 4 or latent.ndim != 4:
        raise ValueError(f"pixel and latent must be [B,C,H,W] tensors, got shapes "
                         f"{tuple(pixel.shape)} and {tuple(latent.shape)}")
    if pixel.shape[0] != latent.shape[0]:
        raise ValueError(f"pixel batch {pixel.shape[0]} does not match latent batch {latent.shape[0]}")
    h, w = pixel.shape[-2:]
    lh, lw = latent.shape[-2:]
    if h != 8 * lh or w != 8 * lw:
        raise ValueError(
            f"the image is {w}x{h} but the latent is {lw}x{lh}; the image must be exactly 8 times "
            f"the latent size ({8 * lw}x{8 * lh}). Decode the same latent that produced the image.")
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        pixel = F.pad(pixel, (0, pw, 0, ph), mode="replicate")
        latent = F.pad(latent, (0, pw // 8, 0, ph // 8), mode="replicate")
    return pixel, latent, (h, w)


def _apply(x: torch.Tensor, variant: Variant) -> torch.Tensor:
    flip, k = variant
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def _undo(y: torch.Tensor, variant: Variant) -> torch.Tensor:
    flip, k = variant
    if k:
        y = torch.rot90(y, -k, dims=(2, 3))
    return torch.flip(y, dims=(3,)) if flip else y


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """The layout the decoder runs in on `device`: channels-last on the CPU (measured faster),
    the default elsewhere (not measured on GPUs yet; benchmarks/gpu_suite.py compares both)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def auto_batch_size(device: torch.device, dtype: torch.dtype, height: int, width: int) -> int:
    """Samples per decoder pass: on CUDA as many as fit in half the free memory (1 to 8);
    elsewhere 1 (no speed-up on the CPU; MPS memory cannot be queried reliably)."""
    if device.type != "cuda":
        return 1
    per_sample = _VALUES_PER_PIXEL * height * width * torch.finfo(dtype).bits // 8
    free = torch.cuda.mem_get_info(device)[0]
    return max(1, min(8, (free // 2) // max(per_sample, 1)))


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or \
        "out of memory" in text or "can't allocate memory" in text


def _run_batched(model: torch.nn.Module, pixel: torch.Tensor, latent: torch.Tensor,
                 batch: int) -> tuple[torch.Tensor, int]:
    """Outputs clipped to [0, 1], and the batch size that worked (smaller after an OOM)."""
    outputs = []
    start = 0
    while start < pixel.shape[0]:
        end = min(start + batch, pixel.shape[0])
        try:
            outputs.append(model(pixel[start:end], latent[start:end]).clamp(0, 1))
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc) or batch == 1:
                raise
            batch = max(1, batch // 2)
            if pixel.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start = end
    return torch.cat(outputs), batch


@torch.no_grad()
def estimate_augmented(model: torch.nn.Module, pixel: torch.Tensor, latent: torch.Tensor,
                       passes: int = 8, batch_size: Optional[int] = None) -> torch.Tensor:
    """Alpha + straight RGB `[B,4,H,W]` (fp32, in [0,1]) from the decoder with TTA.

    `pixel` is the ordinary VAE decode in [0,1] `[B,3,H,W]`, `latent` the raw VAE latent
    `[B,4,H/8,W/8]` (model latent / scaling factor). Any H, W that are 8 x the latent size work.
    `batch_size` = samples per forward pass (default: chosen from free memory).
    """
    if passes not in VARIANTS:
        raise ValueError(f"passes must be one of {sorted(VARIANTS)}, got {passes!r}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    multiple = getattr(model, "size_multiple", 64)
    pixel, latent, (h, w) = pad_to_multiple(pixel.to(device, dtype), latent.to(device, dtype), multiple)
    n = pixel.shape[0]
    if batch_size is None:
        batch_size = auto_batch_size(device, dtype, *pixel.shape[-2:])
    variants = VARIANTS[passes]
    layout = preferred_memory_format(device)
    if layout is not torch.contiguous_format:
        model.to(memory_format=layout)  # a no-op once converted
    results: dict[Variant, torch.Tensor] = {}
    for odd in (False, True):
        group = [v for v in variants if (v[1] % 2 == 1) == odd]
        if not group:
            continue
        px = torch.cat([_apply(pixel, v) for v in group]).contiguous(memory_format=layout)
        lt = torch.cat([_apply(latent, v) for v in group])
        out, batch_size = _run_batched(model, px, lt, batch_size)
        for i, v in enumerate(group):
            results[v] = _undo(out[i * n:(i + 1) * n], v)
    reduce_device = torch.device("cpu") if device.type == "mps" else device  # no fp16/sort median on MPS
    stack = torch.stack([results[v].to(reduce_device, torch.float32) for v in variants])
    merged = stack.mean(0) if passes == 2 else torch.median(stack, dim=0).values
    return merged[..., :h, :w]
