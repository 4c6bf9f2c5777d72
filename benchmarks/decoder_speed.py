"""Transparent decoder: time, peak memory and alpha error of each TTA setting.

Real-size UNet1024 with seeded random weights (the official file cannot be downloaded here;
speed and memory do not depend on the values, but the alpha differences do: a random network
is far less flip/rotation-consistent than the trained one, so the differences printed here
overstate what fewer passes cost with the real weights). Every setting runs in its own subprocess so
its peak memory (max RSS on CPU, max allocated on CUDA) is its own. Figures are ratios to the
baseline measured in the same run: the reference extension's loop (8 variants one after another,
each flipped and rotated, the network in its default NCHW layout, clipped, turned back, then
the element-wise median), fp32 on the CPU. "max |d alpha|" compares each setting's alpha with
the baseline's. "ours, NCHW" is ours with the CPU's channels-last layout switched off.

    python benchmarks/decoder_speed.py                      # 512 and 1024, CPU (+ CUDA if present)
    python benchmarks/decoder_speed.py --sizes 512 --dtypes fp32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_layerdiffuse.testing.reference_decode import reference_tta  # noqa: E402
from lib_layerdiffuse.vae import UNet1024, augment, estimate_augmented  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(device: str, dtype: torch.dtype, **config) -> UNet1024:
    """Real-size decoder (or one of `config`'s widths) allocated directly in `dtype` (no fp32
    copy inflating the memory high-water mark), with the same seeded values whatever the dtype."""
    with torch.device("meta"):
        model = UNet1024(**config)
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for i, (name, p) in enumerate(model.state_dict().items()):
            g = torch.Generator().manual_seed(i)
            values = torch.randn(p.shape, generator=g) * (0.5 / max(p[0].numel(), 1) ** 0.5)
            if "norm" in name and name.endswith("weight"):
                values += 1.0
            p.copy_(values)
    return model.eval()


def run_one(size: int, passes: int, batched: bool, dtype: str, device: str, out: str, mode: str = "ours") -> dict:
    model = build_model(device, DTYPES[dtype])
    if mode == "ours, NCHW":
        augment.preferred_memory_format = lambda _device: torch.contiguous_format
    g = torch.Generator().manual_seed(1)
    pixel = torch.rand(1, 3, size, size, generator=g)
    latent = torch.randn(1, 4, size // 8, size // 8, generator=g)
    batch = 8 if batched else 1  # 8 = every variant of one orientation group in one pass
    if device == "cuda":
        estimate_augmented(model, pixel[..., :64, :64], latent[..., :8, :8], passes=1)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    t0 = time.perf_counter()
    if mode == "reference":
        y = reference_tta(model, pixel.to(device, model.conv_in.weight.dtype),
                           latent.to(device, model.conv_in.weight.dtype))
    else:
        y = estimate_augmented(model, pixel, latent, passes=passes, batch_size=batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    np.save(out, y[0, 0].float().cpu().numpy())
    return {"seconds": seconds, "peak_bytes": max(peak, 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--batched", action="store_true", help="also run the TTA variants batched on the CPU")
    ap.add_argument("--one", nargs=7, metavar=("SIZE", "PASSES", "BATCHED", "DTYPE", "DEVICE", "OUT", "MODE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        size, passes, batched, dtype, device, out, mode = args.one
        print(json.dumps(run_one(int(size), int(passes), batched == "1", dtype, device, out, mode)))
        return

    settings = [("reference", "cpu", "fp32", 8, False)]
    settings += [("ours, NCHW", "cpu", "fp32", p, False) for p in args.passes]
    devices = [("cpu", d) for d in args.dtypes]
    if torch.cuda.is_available():
        devices += [("cuda", "fp32"), ("cuda", "fp16")]
    for device, dtype in devices:
        for passes in args.passes:
            batching = [False, True] if passes > 1 and (device == "cuda" or args.batched) else [False]
            settings += [("ours", device, dtype, passes, batched) for batched in batching]
    print(f"# UNet1024 decode, 1 image, torch {torch.__version__}, {os.cpu_count()} CPU cores"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows = []
            for i, (mode, device, dtype, passes, batched) in enumerate(settings):
                out = os.path.join(tmp, f"{size}_{i}.npy")
                cmd = [sys.executable, __file__, "--one", str(size), str(passes),
                       "1" if batched else "0", dtype, device, out, mode]
                res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                rows.append((mode, device, dtype, passes, batched, res, np.load(out)))
                print(f"  measured {size}px {mode} {device} {dtype} passes={passes} "
                      f"{'batched' if batched else 'sequential'}: {res['seconds']:.1f} s", file=sys.stderr)
            base = rows[0]
            print(f"\n## {size}x{size}  (baseline: the reference loop, CPU fp32, 8 passes = "
                  f"{base[5]['seconds']:.1f} s, peak +{base[5]['peak_bytes'] / 2**20:.0f} MiB)\n")
            print("| code | device | dtype | passes | mode | seconds | time vs reference | speed-up | peak MiB | "
                  "max abs alpha diff vs reference |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for mode, device, dtype, passes, batched, res, alpha in rows:
                ratio = res["seconds"] / base[5]["seconds"]
                print(f"| {mode} | {device} | {dtype} | {passes} | {'batched' if batched else 'sequential'} | "
                      f"{res['seconds']:.2f} | {ratio:.2f} | {1 / ratio:.2f}x | {res['peak_bytes'] / 2**20:.0f} | "
                      f"{np.abs(alpha - base[6]).max():.1e} |")


if __name__ == "__main__":
    main()
