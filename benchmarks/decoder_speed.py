"""Transparent decoder: time, peak memory and alpha error of each TTA setting.

Real-size UNet1024 with seeded random weights (the official file cannot be downloaded here;
speed and memory do not depend on the values, but the alpha differences do: a random network
is far less flip/rotation-consistent than the trained one, so the differences printed here
overstate what fewer passes cost with the real weights). Every setting runs in its own subprocess so
its peak memory (max RSS on CPU, max allocated on CUDA) is its own. Figures are ratios to the
sequential 8-pass fp32 baseline measured in the same run; "max |d alpha|" compares each
setting's alpha with that baseline's.

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

from lib_layerdiffuse.vae import UNet1024, estimate_augmented  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(device: str, dtype: torch.dtype) -> UNet1024:
    """Real-size decoder allocated directly in `dtype` (no fp32 copy inflating the memory
    high-water mark), with the same seeded values whatever the dtype."""
    with torch.device("meta"):
        model = UNet1024()
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for i, (name, p) in enumerate(model.state_dict().items()):
            g = torch.Generator().manual_seed(i)
            values = torch.randn(p.shape, generator=g) * (0.5 / max(p[0].numel(), 1) ** 0.5)
            if "norm" in name and name.endswith("weight"):
                values += 1.0
            p.copy_(values)
    return model.eval()


def run_one(size: int, passes: int, batched: bool, dtype: str, device: str, out: str) -> dict:
    model = build_model(device, DTYPES[dtype])
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
    ap.add_argument("--one", nargs=6, metavar=("SIZE", "PASSES", "BATCHED", "DTYPE", "DEVICE", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        size, passes, batched, dtype, device, out = args.one
        print(json.dumps(run_one(int(size), int(passes), batched == "1", dtype, device, out)))
        return

    devices = [("cpu", d) for d in args.dtypes]
    if torch.cuda.is_available():
        devices += [("cuda", "fp32"), ("cuda", "fp16")]
    print(f"# UNet1024 decode, 1 image, torch {torch.__version__}, {os.cpu_count()} CPU cores"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows = []
            for device, dtype in devices:
                for passes in args.passes:
                    for batched in ([False] if passes == 1 else [False, True]):
                        out = os.path.join(tmp, f"{size}_{device}_{dtype}_{passes}_{int(batched)}.npy")
                        cmd = [sys.executable, __file__, "--one", str(size), str(passes),
                               "1" if batched else "0", dtype, device, out]
                        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                        rows.append((device, dtype, passes, batched, res, np.load(out)))
                        print(f"  measured {size}px {device} {dtype} passes={passes} "
                              f"{'batched' if batched else 'sequential'}: {res['seconds']:.1f} s", file=sys.stderr)
            base = next(r for r in rows if r[:4] == ("cpu", "fp32", 8, False))
            print(f"\n## {size}x{size}  (baseline: CPU fp32, 8 passes, sequential = "
                  f"{base[4]['seconds']:.1f} s, peak +{base[4]['peak_bytes'] / 2**20:.0f} MiB)\n")
            print("| device | dtype | passes | mode | seconds | time vs baseline | peak MiB | memory vs baseline | max abs alpha diff vs baseline |")
            print("|---|---|---|---|---|---|---|---|---|")
            for device, dtype, passes, batched, res, alpha in rows:
                print(f"| {device} | {dtype} | {passes} | {'batched' if batched else 'sequential'} | "
                      f"{res['seconds']:.2f} | {res['seconds'] / base[4]['seconds']:.2f} | "
                      f"{res['peak_bytes'] / 2**20:.0f} | {res['peak_bytes'] / max(base[4]['peak_bytes'], 1):.2f} | "
                      f"{np.abs(alpha - base[5]).max():.4f} |")


if __name__ == "__main__":
    main()
