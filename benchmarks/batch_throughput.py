"""Batch throughput: images per minute for one job run one item at a time against items sampled
together (`--batch-size`), on the same engine in the same run.

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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_layerdiffuse.batch import load_job, run_job  # noqa: E402
from lib_layerdiffuse.engine import LayerDiffuse  # noqa: E402
from lib_layerdiffuse.methods import Method  # noqa: E402
from lib_layerdiffuse.testing.layer_files import write_unet_files  # noqa: E402
from lib_layerdiffuse.testing.pipelines import tiny_pipeline  # noqa: E402
from lib_layerdiffuse.testing.unet_specs import TINY  # noqa: E402
from lib_layerdiffuse.weights import WeightStore  # noqa: E402

METHODS = {"sdxl": Method.FG_ONLY_CONV, "sd15": Method.FG_ONLY_ATTN_SD15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=tuple(METHODS), default="sdxl")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = WeightStore(tmp / "w", allow_download=False, progress=False,
                            catalog=write_unet_files(tmp / "w", TINY[args.family]))
        engine = LayerDiffuse(tiny_pipeline(args.family), store=store, progress=False, decoder_passes=1)
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
            rates[size] = args.items / seconds * 60
    print(f"\n{args.family} tiny pipeline, {args.items} items, {args.size}x{args.size}, {args.steps} steps, "
          f"{METHODS[args.family].value}\n")
    print("| mode | images / min | ratio to one at a time |\n|---|---|---|")
    base = rates[sizes[0]]
    for size, rate in rates.items():
        label = "one at a time" if size == 1 else f"grouped, batch {size}"
        print(f"| {label} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
