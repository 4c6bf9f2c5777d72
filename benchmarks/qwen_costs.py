"""Qwen-Image: what our wrapper costs over calling the pipeline directly, and what the exports
and checks cost per 1024x1024 image, as ratios and milliseconds measured in one run.

1. `LayerDiffuse(pipe).generate(...)` (checks, straight RGBA, opaque colour, checkerboard preview,
   infotext) against `pipe(..., output_type="pil")` on the same pipeline, seed and size,
   interleaved, median of `--repeats`. A random QwenImage21Pipeline built from the real config
   scaled down (`--size small`: a 4-block transformer 512 wide and a VAE 32 wide, so the
   pipeline's own work is not negligible; `--size tiny`: the test pipeline). The goal is 1.02x
   at most; on a real 20B model the pipeline's share only grows.
2. Per 1024x1024 image: the alpha floor (`clean_alpha`), the alpha checks with all six checks,
   writing the layer PNG, and a 4-layer PSD (per layer), on a decoder-like alpha (a soft disc
   with specks and a faint 16-px grid in the background).

    python benchmarks/qwen_costs.py                       # small pipeline, 256x256, 5 repeats
    python benchmarks/qwen_costs.py --size tiny --px 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_layerdiffuse.batch.qa import CHECKS, check_alpha  # noqa: E402
from lib_layerdiffuse.engine import LayerDiffuse  # noqa: E402
from lib_layerdiffuse.engine.qwen import clean_alpha  # noqa: E402
from lib_layerdiffuse.images import save_png  # noqa: E402
from lib_layerdiffuse.layers.files import layered_psd  # noqa: E402
from lib_layerdiffuse.testing import qwen  # noqa: E402


def small_pipeline():
    """The test pipeline with a wider transformer and VAE (same text encoder and processor)."""
    from diffusers import AutoencoderKLQwenImage21, QwenImage21Transformer2DModel

    pipe = qwen.tiny_qwen21_pipeline()
    torch.manual_seed(1)
    pipe.transformer = QwenImage21Transformer2DModel(**{**qwen.TINY_QWEN21_TRANSFORMER, "num_layers": 4,
                                                        "num_attention_heads": 4, "attention_head_dim": 128,
                                                        "axes_dims_rope": (32, 48, 48)}).eval()
    pipe.vae = AutoencoderKLQwenImage21(base_dim=32, decoder_base_dim=32, z_dim=qwen.LATENT,
                                        dim_mult=[1, 2, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                        temperal_downsample=[False, True, True, True],
                                        latents_mean=[0.0] * qwen.LATENT, latents_std=[1.0] * qwen.LATENT).eval()
    return pipe


def wrapper_cost(pipe, px: int, steps: int, repeats: int) -> tuple[float, float, float]:
    """(median direct s, median wrapped s, ratio)."""
    engine = LayerDiffuse(pipe, progress=False)

    def direct():
        return pipe("a glass teapot", num_inference_steps=steps, width=px, height=px,
                    generator=torch.Generator("cpu").manual_seed(1), output_type="pil").images

    def wrapped():
        return engine.generate("a glass teapot", steps=steps, width=px, height=px, seed=1).rgba

    assert np.array_equal(np.asarray(direct()[0]), np.asarray(wrapped()[0]))  # the same image, and a warm-up
    times: dict[str, list[float]] = {"direct": [], "wrapped": []}
    for _ in range(repeats):
        for name, run in (("direct", direct), ("wrapped", wrapped)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    d, w = statistics.median(times["direct"]), statistics.median(times["wrapped"])
    return d, w, w / d


def decoder_like_alpha(size: int = 1024) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    alpha = np.clip((size * 0.35 - r) / 6.0, 0, 1) * 255
    rng = np.random.default_rng(0)
    background = alpha == 0
    alpha[background & ((yy // 16 + xx // 16) % 2 == 0)] = 3
    alpha[background & (rng.random(alpha.shape) < 0.02)] = 2
    return alpha.astype(np.uint8)


def export_costs(repeats: int) -> dict[str, float]:
    """Milliseconds per 1024x1024 image (median of `repeats`)."""
    from PIL import Image

    alpha = decoder_like_alpha()
    rgba = np.dstack([np.full(alpha.shape + (3,), 140, np.uint8), alpha])
    image = Image.fromarray(rgba, "RGBA")
    out: dict[str, list[float]] = {"alpha floor": [], "alpha checks (6)": [], "PNG with parameters": [],
                                   "PSD, per layer (4 layers)": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            for name, run in (("alpha floor", lambda: clean_alpha(rgba, 5)),
                              ("alpha checks (6)", lambda: check_alpha(alpha, CHECKS)),
                              ("PNG with parameters", lambda: save_png(image, Path(folder) / "l.png", "x\nSeed: 1",
                                                                       {"Seed": 1})),
                              ("PSD, per layer (4 layers)", lambda: layered_psd(
                                  [(f"Layer {i}", image) for i in range(4)], Path(folder) / "l.psd"))):
                start = time.perf_counter()
                run()
                out[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1000 / (4 if k.startswith("PSD") else 1) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("small", "tiny"), default="small")
    parser.add_argument("--px", type=int, default=256, help="image size for the wrapper cost (a multiple of 32)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    pipe = small_pipeline() if args.size == "small" else qwen.tiny_qwen21_pipeline()
    direct, wrapped, ratio = wrapper_cost(pipe, args.px, args.steps, args.repeats)
    print(f"Qwen-Image-2.1 wrapper ({args.size} pipeline, {args.px}x{args.px}, {args.steps} steps, median of "
          f"{args.repeats}, {torch.get_num_threads()} threads)\n")
    print("| Call | s | x direct |\n|---|---|---|")
    print(f"| pipe(..., output_type=\"pil\") | {direct:.3f} | 1.00 |")
    print(f"| LayerDiffuse(pipe).generate(...) | {wrapped:.3f} | {ratio:.3f} |")
    print("\nPer 1024x1024 image (ms, median of 5)\n\n| Step | ms |\n|---|---|")
    for name, ms in export_costs(5).items():
        print(f"| {name} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
