"""Batch throughput: images per minute for one job run one item at a time, with items sampled
together (`--batch-size`), and on a local Ray cluster with two workers, in the same run.

The engine is the tiny SD1.5 or SDXL test pipeline with tiny weight files in the official
layouts (the real ones cannot be downloaded here); what batching saves is per-call overhead and
the better use of wide matrix products, so the ratio grows with the model's width and the
device's parallelism. Each mode writes its own output folder and manifest, as a real run does
(PNG encoding, SHA-256, alpha checks included). The first mode is run once before timing.

    python benchmarks/batch_throughput.py                       # SDXL, 16 items, 128 px, 4 steps
    python benchmarks/batch_throughput.py --family sd15 --items 32 --batch-sizes 1,2,4,8
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_layerdiffuse.batch import load_job, run_job  # noqa: E402
from lib_layerdiffuse.methods import Method  # noqa: E402
from lib_layerdiffuse.testing.batch import tiny_engine  # noqa: E402
from lib_layerdiffuse.testing.layer_files import write_unet_files  # noqa: E402
from lib_layerdiffuse.testing.unet_specs import TINY  # noqa: E402

METHODS = {"sdxl": Method.FG_ONLY_CONV, "sd15": Method.FG_ONLY_ATTN_SD15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=tuple(METHODS), default="sdxl")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--ray-workers", type=int, default=2, help="also run on a local Ray cluster with this "
                                                                   "many workers (0: not)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = write_unet_files(tmp / "w", TINY[args.family])
        engine_for = functools.partial(tiny_engine, args.family, str(tmp / "w"), catalog)
        engine = engine_for("tiny")
        prompts = ", ".join(f'"item {i}"' for i in range(args.items))
        job_path = tmp / "job.toml"
        job_path.write_text(f'model = "tiny"\nmethod = "{METHODS[args.family].name}"\n[defaults]\n'
                            f'steps = {args.steps}\nsize = "{args.size}x{args.size}"\nseed = 1\n'
                            f'[matrix]\nprompts = [{prompts}]\n')
        job = load_job(job_path)
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        run_job(job, tmp / "warm", lambda model: engine, progress=False, batch_size=sizes[0])
        rates = {}
        for size in sizes:
            start = time.perf_counter()
            summary = run_job(job, tmp / f"b{size}", lambda model: engine, progress=False, batch_size=size)
            seconds = time.perf_counter() - start
            assert len(summary.made) == args.items
            rates[f"grouped, batch {size}" if size > 1 else "one at a time"] = args.items / seconds * 60
        if args.ray_workers:
            import ray

            from lib_layerdiffuse.batch.ray_runner import run_job_on_ray

            ray.init(num_cpus=args.ray_workers, include_dashboard=False, log_to_driver=False)
            try:
                # the first run starts the workers and loads their models: timed separately
                start = time.perf_counter()
                run_job_on_ray(job, tmp / "ray-warm", engine_for, workers=args.ray_workers, progress=False,
                               batch_size=sizes[-1])
                startup = time.perf_counter() - start
                start = time.perf_counter()
                run_job_on_ray(job, tmp / "ray", engine_for, workers=args.ray_workers, progress=False,
                               batch_size=sizes[-1])
                seconds = time.perf_counter() - start
            finally:
                ray.shutdown()
            rates[f"Ray, {args.ray_workers} workers, batch {sizes[-1]} (first run {startup:.0f} s)"] = \
                args.items / seconds * 60
    print(f"\n{args.family} tiny pipeline, {args.items} items, {args.size}x{args.size}, {args.steps} steps, "
          f"{METHODS[args.family].value}\n")
    print("| mode | images / min | ratio to the first |\n|---|---|---|")
    base = next(iter(rates.values()))
    for label, rate in rates.items():
        print(f"| {label} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
