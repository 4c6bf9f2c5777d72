"""One run, one table: the transparent decoder, UNet steps with every LayerDiffuse patch, and
patch apply / remove, on the GPU when there is one (else the CPU at small sizes).

Real-size networks with seeded random weights (timings do not depend on the values; the
official files cannot be downloaded where this was written):
1. the transparent decoder (UNet1024) at 1024x1024: 1, 2 and 8 passes, fp16 and bf16 (fp32
   too on the CPU), batch 1 and 4 images, time per image against the reference extension's
   loop (8 variants one after another, in the same dtype) measured in the same run; on CUDA
   also the 8-pass run in channels-last against the default layout;
2. one UNet step, SD1.5 and SDXL, plain against: SD1.5 attention sharing with 1 and 3 frames,
   SDXL with the attention LoRA merged, with the conv diff merged, and the fg2ble concat
   method (conv_in widened to 8 channels plus its step hook); CFG batch of 2 per image;
3. SDXL patch apply / remove for the LoRA, the conv diff and fg2ble, against reloading the
   UNet's weights from memory (`load_state_dict`).

    python benchmarks/gpu_suite.py                 # CUDA if present; else CPU, small sizes
    python benchmarks/gpu_suite.py --size 512      # decoder size; UNet latent = size / 8
    python benchmarks/gpu_suite.py --parts decoder,steps --tiny   # tiny UNets (a smoke test)

Under 10 minutes on one H100-class GPU. On the CPU the default is a 256x256 decoder and 32x32
latents (full-size networks still: ~18 GB RAM for the SDXL patch part); `--tiny` uses the tiny
test UNets and a 64x64 decoder and finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from decoder_speed import build_model  # noqa: E402
from engine_overhead import PATCH_FILES, random_tensors, random_unet, unet_inputs  # noqa: E402
from lib_layerdiffuse.engine.sharing import AttentionSharingWeights, SharingState, install_attention_sharing  # noqa: E402
from lib_layerdiffuse.engine.unet_hook import UNetStepHook  # noqa: E402
from lib_layerdiffuse.patches import apply_frozen_patches, parse_frozen_patches  # noqa: E402
from lib_layerdiffuse.testing.layer_files import TINY_DECODER_CONFIG, unet_file_layout  # noqa: E402
from lib_layerdiffuse.testing.reference_decode import reference_tta  # noqa: E402
from lib_layerdiffuse.vae import augment, estimate_augmented  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Row = tuple[str, str, float, str]  # part, setting, seconds, ratio text


class Clock:
    """Median wall time of a call after one warm-up, synchronising the GPU around it; without
    autograd, as a sampler runs."""

    def __init__(self, device: torch.device, repeats: int):
        self.device, self.repeats = device, repeats

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def __call__(self, fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def bench_decoder(device: torch.device, size: int, dtypes: list[str], tiny: bool, clock: Clock) -> list[Row]:
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(1)
    for name in dtypes:
        dtype = DTYPES[name]
        model = build_model(device, dtype, **(TINY_DECODER_CONFIG if tiny else {}))
        pixel = torch.rand(4, 3, size, size, generator=gen).to(device, dtype)
        latent = torch.randn(4, 4, size // 8, size // 8, generator=gen).to(device, dtype)
        reference = clock(lambda: reference_tta(model, pixel[:1], latent[:1]))
        rows.append(("decoder", f"{size}px {name}, reference loop, 8 passes, per image", reference, "1.00"))
        for images in (1, 4):
            for passes in (1, 2, 8):
                seconds = clock(lambda: estimate_augmented(model, pixel[:images], latent[:images], passes)) / images
                rows.append(("decoder", f"{size}px {name}, ours, {passes} pass(es), batch {images}, per image",
                             seconds, f"{reference / seconds:.2f}x faster"))
        if device.type == "cuda":
            rows += _layout_rows(model, pixel[:1], latent[:1], size, name, clock)
        del model, pixel, latent
        _free(device)
    return rows


def _layout_rows(model, pixel, latent, size: int, name: str, clock: Clock) -> list[Row]:
    """8 passes in the default layout against channels-last (which the CPU uses)."""
    rows = []
    default = clock(lambda: estimate_augmented(model, pixel, latent, 8))
    chosen = augment.preferred_memory_format
    try:
        augment.preferred_memory_format = lambda _device: torch.channels_last
        model.to(memory_format=torch.channels_last)
        last = clock(lambda: estimate_augmented(model, pixel, latent, 8))
    finally:
        augment.preferred_memory_format = chosen
        model.to(memory_format=torch.contiguous_format)
    rows.append(("decoder", f"{size}px {name}, 8 passes, default layout", default, "1.00"))
    rows.append(("decoder", f"{size}px {name}, 8 passes, channels-last", last, f"{default / last:.2f}x faster"))
    return rows


def bench_steps(device: torch.device, latent: int, dtype: torch.dtype, tiny: bool, clock: Clock) -> list[Row]:
    size = "tiny" if tiny else "full"
    rank, width = (4, 8) if tiny else (256, 256)
    rows: list[Row] = []
    unet, spec = random_unet("sd15", size, dtype, device)
    for frames, name in ((1, "layer_sd15_transparent_attn.safetensors"), (3, "layer_sd15_joint.safetensors")):
        weights = AttentionSharingWeights.from_state_dict(
            random_tensors(unet_file_layout(name, spec, rank, width), dtype), unet)
        args, kwargs = _on(unet_inputs(unet, spec, 2 * frames, latent), device, dtype)
        plain = clock(lambda: unet(*args, **kwargs))
        installed = install_attention_sharing(unet, weights, SharingState(frames, images=frames))
        try:
            shared = clock(lambda: unet(*args, **kwargs))
        finally:
            installed.remove()
        rows.append(("UNet step", f"SD1.5 batch {2 * frames}, plain", plain, "1.00"))
        rows.append(("UNet step", f"SD1.5 attention sharing, {frames} frame(s)", shared, f"{shared / plain:.2f}x"))
        del weights
    del unet
    _free(device)
    unet, spec = random_unet("sdxl", size, dtype, device)
    args, kwargs = _on(unet_inputs(unet, spec, 2, latent), device, dtype)
    plain = clock(lambda: unet(*args, **kwargs))
    rows.append(("UNet step", "SDXL batch 2, plain", plain, "1.00"))
    for label, name in PATCH_FILES.items():
        if "diff (conv" in label and device.type == "cpu" and not tiny:
            rows.append(("UNet step", f"SDXL with {label}: skipped on the CPU (fp32 UNet, file and "
                         "backup exceed 24 GB; merged weights cost what plain ones do)", float("nan"), "-"))
            continue
        patches = parse_frozen_patches(random_tensors(unet_file_layout(name, spec, rank=rank)))
        handle = apply_frozen_patches(unet, patches, "sdxl", 1.0, backup_device=device)
        try:
            if unet.conv_in.in_channels == 8:
                cond = torch.randn(1, 4, latent, latent, device=device, dtype=dtype)
                with UNetStepHook(unet, cond):
                    seconds = clock(lambda: unet(*args, **kwargs))
            else:
                seconds = clock(lambda: unet(*args, **kwargs))
        finally:
            handle.restore()
        rows.append(("UNet step", f"SDXL with {label}", seconds, f"{seconds / plain:.2f}x"))
        del patches
        _free(device)
    del unet
    _free(device)
    return rows


def bench_patches(device: torch.device, dtype: torch.dtype, tiny: bool, clock: Clock) -> list[Row]:
    unet, spec = random_unet("sdxl", "tiny" if tiny else "full", dtype, device)
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    reload = clock(lambda: unet.load_state_dict(original))
    del original
    _free(device)
    rows: list[Row] = [("patch", "SDXL reload weights (load_state_dict)", reload, "1.00")]
    for label, name in PATCH_FILES.items():
        patches = parse_frozen_patches(random_tensors(unet_file_layout(name, spec, rank=4 if tiny else 256)))
        applies, removes = [], []
        for _ in range(clock.repeats):
            clock.sync()
            start = time.perf_counter()
            handle = apply_frozen_patches(unet, patches, "sdxl", 1.0)
            clock.sync()
            applies.append(time.perf_counter() - start)
            start = time.perf_counter()
            handle.restore()
            clock.sync()
            removes.append(time.perf_counter() - start)
        apply_s, remove_s = statistics.median(applies), statistics.median(removes)
        rows.append(("patch", f"apply {label}", apply_s, f"{apply_s / reload:.2f}x reload"))
        rows.append(("patch", f"remove {label}", remove_s, f"{remove_s / reload:.2f}x reload"))
        del patches
        _free(device)
    return rows


def _on(inputs, device: torch.device, dtype: torch.dtype):
    args, kwargs = inputs
    move = lambda t: t.to(device, dtype) if t.is_floating_point() else t.to(device)  # noqa: E731
    args = tuple(move(a) for a in args)
    kwargs = {k: ({kk: move(vv) for kk, vv in v.items()} if isinstance(v, dict) else move(v)) for k, v in kwargs.items()}
    return args, kwargs


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, help="decoder image side; UNet latent = size / 8 "
                        "(default 1024 on a GPU, 256 on the CPU, 64 with --tiny)")
    parser.add_argument("--parts", default="decoder,steps,patches")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets and decoder: checks that the suite runs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    size = args.size or (64 if args.tiny else 1024 if gpu else 256)
    half = torch.float16 if gpu else torch.float32
    clock = Clock(device, args.repeats)
    parts = args.parts.split(",")
    print(f"# LayerDiffuse GPU suite on {device_name(device)}, torch {torch.__version__}, "
          f"{'tiny' if args.tiny else 'full-size'} networks, decoder {size}px, UNet latent {size // 8}, "
          f"UNet dtype {str(half).split('.')[-1]}\n", flush=True)
    rows: list[Row] = []
    if "decoder" in parts:
        rows += bench_decoder(device, size, ["fp16", "bf16"] if gpu else ["fp32", "bf16"], args.tiny, clock)
    if "steps" in parts:
        rows += bench_steps(device, size // 8, half, args.tiny, clock)
    if "patches" in parts:
        rows += bench_patches(device, torch.float16, args.tiny, clock)
    print("| part | setting | seconds | ratio |\n|---|---|---|---|")
    for part, setting, seconds, ratio in rows:
        print(f"| {part} | {setting} | {seconds:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
