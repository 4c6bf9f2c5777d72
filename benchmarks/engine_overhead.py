"""Diffusers engine: cost of patching and per-step overhead, as ratios measured in one run.

Real-size SD1.5 / SDXL UNets with seeded random weights (`--size full`, the default; the
official files cannot be downloaded here, and timings do not depend on the values) or the
tiny test UNets (`--size tiny`). Patch files are random tensors in the official layouts
(rank-256 LoRA, full diffs, widened conv_in).

1. Patch apply / remove time for each kind of patch, against reloading the UNet's weights from
   memory (`load_state_dict`, the least a pipeline reload costs; public ports reload the whole
   pipeline for "Stop At").
2. Per-step UNet time with LayerDiffuse against the plain UNet: SD1.5 attention sharing with 1
   and 3 frames (batch = frames x 2 for CFG), the SDXL concat methods (fg2ble: conv_in 8 plus
   the concat hook), and the plain UNet again after removal (must be 1.00: nothing left behind).

    python benchmarks/engine_overhead.py                  # full size, 256x256 (32x32 latents)
    python benchmarks/engine_overhead.py --size tiny --latent 8
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_layerdiffuse.engine.sharing import AttentionSharingWeights, SharingState, install_attention_sharing  # noqa: E402
from lib_layerdiffuse.engine.unet_hook import UNetStepHook  # noqa: E402
from lib_layerdiffuse.patches import apply_frozen_patches, parse_frozen_patches  # noqa: E402
from lib_layerdiffuse.testing.layer_files import unet_file_layout  # noqa: E402
from lib_layerdiffuse.testing.unet_specs import FULL, TINY, diffusers_unet_config  # noqa: E402

PATCH_FILES = {
    "lora (attn, rank 256)": "layer_xl_transparent_attn.safetensors",
    "diff (conv, every tensor)": "layer_xl_transparent_conv.safetensors",
    "diff + conv_in 4->8 (fg2ble)": "layer_xl_fg2ble.safetensors",
}


def random_unet(family: str, size: str, dtype: torch.dtype, device: str | torch.device = "cpu"):
    """A UNet with seeded random weights, built on meta and filled in place (fast at full size)."""
    from diffusers import UNet2DConditionModel

    spec = (FULL if size == "full" else TINY)[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**diffusers_unet_config(spec))
    unet = unet.to_empty(device=device).to(dtype)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    return unet.eval(), spec


def random_tensors(layout: dict, dtype=torch.float16, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=gen) * 0.01).to(dtype) for k, s in layout.items()}


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_patches(size: str, repeats: int) -> list[tuple[str, float, float, float]]:
    unet, spec = random_unet("sdxl", size, torch.float16)
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    reload = timed(lambda: unet.load_state_dict(original), repeats)
    del original  # keep the peak inside a 24 GB machine: UNet + patch + backup
    gc.collect()
    rows = []
    for label, name in PATCH_FILES.items():
        rank = 256 if size == "full" else 4
        patches = parse_frozen_patches(random_tensors(unet_file_layout(name, spec, rank=rank)))
        applies, removes = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            handle = apply_frozen_patches(unet, patches, "sdxl", 1.0)
            applies.append(time.perf_counter() - start)
            start = time.perf_counter()
            handle.restore()
            removes.append(time.perf_counter() - start)
        rows.append((label, statistics.median(applies), statistics.median(removes), reload))
        del patches
        gc.collect()
    del unet
    gc.collect()
    return rows


def unet_inputs(unet, spec, batch: int, latent: int):
    gen = torch.Generator().manual_seed(2)
    args = (torch.randn(batch, 4, latent, latent, generator=gen), torch.tensor(500))
    kwargs = {"encoder_hidden_states": torch.randn(batch, 77, spec.context_dim, generator=gen)}
    if spec.adm_in_channels:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, spec.pooled_dim, generator=gen),
                                       "time_ids": torch.randn(batch, 6, generator=gen)}
    return args, kwargs


def bench_sharing(size: str, latent: int, repeats: int) -> list[tuple[str, float, float]]:
    unet, spec = random_unet("sd15", size, torch.float32)
    rows = []
    for frames, name in ((1, "layer_sd15_transparent_attn.safetensors"), (3, "layer_sd15_joint.safetensors")):
        rank, width = (256, 256) if size == "full" else (4, 8)
        state_dict = random_tensors(unet_file_layout(name, spec, rank, width), torch.float32)
        weights = AttentionSharingWeights.from_state_dict(state_dict, unet)
        args, kwargs = unet_inputs(unet, spec, 2 * frames, latent)
        with torch.no_grad():
            plain = timed(lambda: unet(*args, **kwargs), repeats)
            installed = install_attention_sharing(unet, weights, SharingState(frames, images=frames))
            shared = timed(lambda: unet(*args, **kwargs), repeats)
            installed.remove()
            after = timed(lambda: unet(*args, **kwargs), repeats)
        rows.append((f"SD1.5 attention sharing, {frames} frame(s), batch {2 * frames}", plain, shared))
        rows.append((f"SD1.5 plain UNet after removal, batch {2 * frames}", plain, after))
        del weights, state_dict
        gc.collect()
    del unet
    gc.collect()
    return rows


def bench_concat(size: str, latent: int, repeats: int) -> list[tuple[str, float, float]]:
    unet, spec = random_unet("sdxl", size, torch.float32)
    rank = 256 if size == "full" else 4
    patches = parse_frozen_patches(random_tensors(unet_file_layout("layer_xl_fg2ble.safetensors", spec, rank)))
    args, kwargs = unet_inputs(unet, spec, 2, latent)
    cond = torch.randn(1, 4, latent, latent)
    with torch.no_grad():
        plain = timed(lambda: unet(*args, **kwargs), repeats)
        handle = apply_frozen_patches(unet, patches, "sdxl", 1.0)
        with UNetStepHook(unet, cond):
            hooked = timed(lambda: unet(*args, **kwargs), repeats)
        handle.restore()
        after = timed(lambda: unet(*args, **kwargs), repeats)
    return [("SDXL concat (fg2ble: conv_in 8 + hook), batch 2", plain, hooked),
            ("SDXL plain UNet after removal, batch 2", plain, after)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="patches,sharing,concat")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    parts = args.parts.split(",")
    print(f"# engine overhead: {args.size} UNets, {torch.get_num_threads()} threads, "
          f"latent {args.latent}x{args.latent}, torch {torch.__version__}, CPU\n")
    if "patches" in parts:
        print("| SDXL patch | apply s | remove s | reload s | apply / reload | remove / reload |")
        print("|---|---|---|---|---|---|")
        for label, apply_s, remove_s, reload_s in bench_patches(args.size, args.repeats):
            print(f"| {label} | {apply_s:.2f} | {remove_s:.2f} | {reload_s:.2f} | "
                  f"{apply_s / reload_s:.2f} | {remove_s / reload_s:.2f} |", flush=True)
        print()
    rows = []
    if "sharing" in parts:
        rows += bench_sharing(args.size, args.latent, args.repeats)
    if "concat" in parts:
        rows += bench_concat(args.size, args.latent, args.repeats)
    if rows:
        print("| UNet call | plain s | with LayerDiffuse s | ratio |")
        print("|---|---|---|---|")
        for label, plain, other in rows:
            print(f"| {label} | {plain:.3f} | {other:.3f} | {other / plain:.2f} |")


if __name__ == "__main__":
    main()
