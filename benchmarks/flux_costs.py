"""What LayerDiffuse-Flux adds to a Flux generation: the transparent decoder per image, and merging
/ removing the LoRA, as ratios to the SD decoder and to one plain Flux transformer step measured
in the same run.

Random weights (speed does not depend on them). The transformer has FLUX.1's full width (3072,
24 heads, MLP 12288) but, by default, 2 double and 4 single blocks instead of 19 and 38, so it
fits a 24 GB CPU machine: step time and LoRA merge time both grow with the number of blocks, so
their ratio carries over to the full model (the embedders are a negligible part of both). On a
GPU with room, `--full` builds all 57 blocks. The LoRA is a rank `--rank` PEFT LoRA on every
attention projection and the single blocks' MLP (the layers a Flux LoRA usually trains; the
release's exact layout is not known here).

    python benchmarks/flux_costs.py                       # CPU: 512 px, decoder at 1 pass and 8 passes
    python benchmarks/flux_costs.py --full --size 1024    # a GPU with >= 40 GB
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_layerdiffuse.methods import Family  # noqa: E402
from lib_layerdiffuse.patches import apply_frozen_patches, attach_lora_branches, parse_transformer_lora  # noqa: E402
from lib_layerdiffuse.testing.flux import lora_layout  # noqa: E402
from lib_layerdiffuse.vae import UNet1024, estimate_augmented  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (multiple of 64)")
    parser.add_argument("--full", action="store_true", help="all 19 double and 38 single blocks")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)

    from diffusers import FluxTransformer2DModel

    blocks = (19, 38) if args.full else (2, 4)
    transformer = FluxTransformer2DModel(num_layers=blocks[0], num_single_layers=blocks[1],
                                         guidance_embeds=True).to(device, dtype).eval()
    tokens, text = (args.size // 16) ** 2, 512
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, generator=g).to(device, dtype),
                  encoder_hidden_states=torch.randn(1, text, 4096, generator=g).to(device, dtype),
                  pooled_projections=torch.randn(1, 768, generator=g).to(device, dtype),
                  timestep=torch.tensor([0.5], device=device, dtype=dtype),
                  guidance=torch.tensor([3.5], device=device, dtype=dtype),
                  img_ids=torch.zeros(tokens, 3, device=device, dtype=dtype),
                  txt_ids=torch.zeros(text, 3, device=device, dtype=dtype))
    lora = parse_transformer_lora({k: torch.randn(s, generator=g) * 0.01
                                   for k, s in lora_layout(transformer, args.rank).items()})

    with torch.no_grad():
        step = _timed(lambda: transformer(**inputs), device, args.repeats)
        merges, restores = [], []
        for _ in range(args.repeats):
            _sync(device)
            start = time.perf_counter()
            applied = apply_frozen_patches(transformer, lora, Family.FLUX, 1.0, backup_device="cpu")
            _sync(device)
            middle = time.perf_counter()
            applied.restore()
            _sync(device)
            merges.append(middle - start)
            restores.append(time.perf_counter() - middle)
        applied = apply_frozen_patches(transformer, lora, Family.FLUX, 1.0, backup_device="cpu")
        merged_step = _timed(lambda: transformer(**inputs), device, args.repeats)
        applied.restore()
        branches = attach_lora_branches(transformer, lora)
        branch_step = _timed(lambda: transformer(**inputs), device, args.repeats)
        branches.restore()
    del transformer

    side, latent = args.size, args.size // 8
    decoders = {}
    for name, channels in (("SD (4 latent channels)", 4), ("Flux (16 latent channels)", 16)):
        model = UNet1024(latent_channels=channels).to(device, dtype).eval()
        pixel = torch.rand(1, 3, side, side, generator=g).to(device, dtype)
        raw = torch.randn(1, channels, latent, latent, generator=g).to(device, dtype)
        decoders[name] = {passes: _timed(lambda: estimate_augmented(model, pixel, raw, passes), device, args.repeats)
                          for passes in (1, 8)}
        del model

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Device: {name}, {str(dtype).replace('torch.', '')}; {side}x{side} px ({tokens} image tokens + {text} text "
          f"tokens); transformer width 3072 with {blocks[0]} double + {blocks[1]} single blocks; LoRA rank {args.rank} "
          f"on {len(lora)} layers; median of {args.repeats}\n")
    print("| cost | seconds | ratio |")
    print("|---|---|---|")
    print(f"| plain transformer step | {step:.3f} | 1.00 (step) |")
    print(f"| step with the LoRA merged | {merged_step:.3f} | {merged_step / step:.2f} (step) |")
    print(f"| step with the LoRA beside the layers (quantised path) | {branch_step:.3f} | {branch_step / step:.2f} (step) |")
    print(f"| merge the LoRA | {statistics.median(merges):.3f} | {statistics.median(merges) / step:.2f} (step) |")
    print(f"| take it out again | {statistics.median(restores):.3f} | {statistics.median(restores) / step:.2f} (step) |")
    sd = decoders["SD (4 latent channels)"]
    for dec, times in decoders.items():
        for passes, seconds in times.items():
            print(f"| {dec} decoder, {passes} pass{'es' * (passes > 1)} | {seconds:.3f} | "
                  f"{seconds / sd[passes]:.2f} (SD decoder), {seconds / step:.2f} (step) |")


if __name__ == "__main__":
    main()
