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


def transformer_costs(blocks: tuple[int, int], size: int, rank: int, device, dtype, repeats: int) -> dict:
    """Seconds of a plain step, a step with the LoRA merged and beside the layers, a merge and a removal."""
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel(num_layers=blocks[0], num_single_layers=blocks[1],
                                         guidance_embeds=True).to(device, dtype).eval()
    tokens, text = (size // 16) ** 2, 512
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, generator=g).to(device, dtype),
                  encoder_hidden_states=torch.randn(1, text, 4096, generator=g).to(device, dtype),
                  pooled_projections=torch.randn(1, 768, generator=g).to(device, dtype),
                  timestep=torch.tensor([0.5], device=device, dtype=dtype),
                  guidance=torch.tensor([3.5], device=device, dtype=dtype),
                  img_ids=torch.zeros(tokens, 3, device=device, dtype=dtype),
                  txt_ids=torch.zeros(text, 3, device=device, dtype=dtype))
    lora = parse_transformer_lora({k: torch.randn(s, generator=g) * 0.01
                                   for k, s in lora_layout(transformer, rank).items()})

    def step():
        transformer(**inputs)

    out = {"layers": len(lora), "tokens": tokens, "text": text}
    with torch.no_grad():
        out["step"] = _timed(step, device, repeats)
        merges, restores = [], []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            applied = apply_frozen_patches(transformer, lora, Family.FLUX, 1.0, backup_device="cpu")
            _sync(device)
            middle = time.perf_counter()
            applied.restore()
            _sync(device)
            merges.append(middle - start)
            restores.append(time.perf_counter() - middle)
        out["merge"], out["restore"] = statistics.median(merges), statistics.median(restores)
        applied = apply_frozen_patches(transformer, lora, Family.FLUX, 1.0, backup_device="cpu")
        out["merged step"] = _timed(step, device, repeats)
        applied.restore()
        branches = attach_lora_branches(transformer, lora)
        out["branch step"] = _timed(step, device, repeats)
        branches.restore()
    return out


def decoder_seconds(channels: int, size: int, passes: int, device, dtype, repeats: int) -> float:
    model = UNet1024(latent_channels=channels).to(device, dtype).eval()
    g = torch.Generator().manual_seed(2)
    pixel = torch.rand(1, 3, size, size, generator=g).to(device, dtype)
    raw = torch.randn(1, channels, size // 8, size // 8, generator=g).to(device, dtype)
    return _timed(lambda: estimate_augmented(model, pixel, raw, passes), device, repeats)


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
    blocks = (19, 38) if args.full else (2, 4)
    t = transformer_costs(blocks, args.size, args.rank, device, dtype, args.repeats)
    decoders = {name: {passes: decoder_seconds(channels, args.size, passes, device, dtype, args.repeats)
                       for passes in (1, 8)}
                for name, channels in (("SD (4 latent channels)", 4), ("Flux (16 latent channels)", 16))}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    step = t["step"]
    print(f"Device: {name}, {str(dtype).replace('torch.', '')}; {args.size}x{args.size} px ({t['tokens']} image tokens "
          f"+ {t['text']} text tokens); transformer width 3072 with {blocks[0]} double + {blocks[1]} single blocks; "
          f"LoRA rank {args.rank} on {t['layers']} layers; median of {args.repeats}\n")
    print("| cost | seconds | ratio |")
    print("|---|---|---|")
    print(f"| plain transformer step | {step:.3f} | 1.00 (step) |")
    print(f"| step with the LoRA merged | {t['merged step']:.3f} | {t['merged step'] / step:.2f} (step) |")
    print(f"| step with the LoRA beside the layers (quantised path) | {t['branch step']:.3f} | "
          f"{t['branch step'] / step:.2f} (step) |")
    print(f"| merge the LoRA | {t['merge']:.3f} | {t['merge'] / step:.2f} (step) |")
    print(f"| take it out again | {t['restore']:.3f} | {t['restore'] / step:.2f} (step) |")
    sd = decoders["SD (4 latent channels)"]
    for dec, times in decoders.items():
        for passes, seconds in times.items():
            print(f"| {dec} decoder, {passes} pass{'es' * (passes > 1)} | {seconds:.3f} | "
                  f"{seconds / sd[passes]:.2f} (SD decoder), {seconds / step:.2f} (step) |")


if __name__ == "__main__":
    main()
