"""Peak memory and time of one cutout at 4, 16 and 36 megapixels, against `rembg.remove` on the
same model in the same run.

Each measurement runs in a fresh process: the image (a synthetic subject over a gradient,
made at 1024 px and scaled up, so edges are soft as in real photos) is built and every library
is warmed up on a small image first; then the kernel's peak-RSS mark is reset
(`/proc/self/clear_refs`) and the cutout runs. The figure is the peak resident memory above
what the process held with the input loaded, in bytes per pixel of the image (the RGBA input
itself is 4 B/px). Rows:
- `rembg.remove` (defaults) with a tiny ONNX segmenter: the baseline, what a user runs today;
- our cutout with that model (the rembg path: model mask, then our refinement);
- our weight-free cutout with each refinement.
The tiny segmenter (built here, 320 px input) stands in for a real model: its own memory is
what a real model adds on top, a constant that does not grow with the image.

    python benchmarks/cutout_memory.py                 # 4, 16 and 36 MP (needs about 4 GB)
    python benchmarks/cutout_memory.py --megapixels 4  # one size
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNS = ("rembg.remove", "ours, model, decontaminate", "weight-free, none", "weight-free, decontaminate",
        "weight-free, alpha matting")


def _measure(run: str, megapixels: float, model: str) -> dict:
    """In this process: build the image, warm up, reset the peak mark, cut out, report."""
    import time

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from lib_layerdiffuse.cutout import cut_out
    from lib_layerdiffuse.testing.composites import synthetic_case

    def status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    side = int(round((megapixels * 1e6) ** 0.5))
    small = synthetic_case("strands", "gradient", 1024).image
    image = np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC).convert("RGBA"))
    kwargs = dict(model="local file", model_path=model) if "model" in run or run == "rembg.remove" else \
        dict(model="weight-free")
    refine = run.split(", ")[-1]

    def once(picture):
        if run == "rembg.remove":
            import rembg

            from lib_layerdiffuse.cutout.rembg_backend import get_session

            session = get_session("local file", model, home=Path(model).parent).session
            return rembg.remove(Image.fromarray(picture), session=session)
        return cut_out(picture, refine=refine, **kwargs).render()

    once(np.asarray(Image.fromarray(small).resize((256, 256)).convert("RGBA")))  # imports, JIT, sessions
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    start = time.perf_counter()
    once(image)
    seconds = time.perf_counter() - start
    return {"run": run, "megapixels": side * side / 1e6, "seconds": seconds,
            "bytes_per_pixel": (status("VmHWM:") - base) / (side * side)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=[4, 16, 36])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--child", nargs=3, metavar=("RUN", "MP", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child[0], float(args.child[1]), args.child[2])))
        return
    sys.path.insert(0, str(ROOT))
    from lib_layerdiffuse.testing.onnx_models import write_segmenter

    with tempfile.TemporaryDirectory() as tmp:
        model = str(write_segmenter(Path(tmp) / "u2net" / "tiny.onnx", weights=(2.0, 1.0, -3.0)))
        print(f"{'cutout':<30} {'MP':>5} {'seconds':>8} {'peak B/px':>10}")
        for megapixels in args.megapixels:
            for run in args.runs:
                res = subprocess.run([sys.executable, __file__, "--child", run, str(megapixels), model],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{run:<30} {megapixels:>5} failed: {res.stderr.strip().splitlines()[-1]}")
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{row['run']:<30} {row['megapixels']:>5.1f} {row['seconds']:>8.1f} "
                      f"{row['bytes_per_pixel']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
