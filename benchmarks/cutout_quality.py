"""Cutout quality and speed against rembg's own defaults, on composites with known alpha.

Cases: synthetic foregrounds (soft-edged disc, hair-like strands, a glass-like panel of 50%
alpha) over solid, gradient and textured backgrounds, plus the real LayerDiffuse RGBA outputs in
`--rgba` (default ../shared/data/rgba) over solid and gradient backgrounds. Each is scored with
SAD, MSE, gradient and connectivity error and the edge colour error (0..255, where the true alpha
is soft) for:
- `rembg.remove(image, session=...)` with its default options, the baseline, on the same model;
- our cutout with each refinement (none / decontaminate / alpha matting) on that model;
- the weight-free backend with each refinement (no model at all).
The model is a rembg session by name (needs its file in U2NET_HOME) or an ONNX file (`--onnx`);
without either, only the weight-free rows and the baseline-free columns run.
Then the time per image with one cached session against a new session per image (what
`rembg.remove` without `session=` and the A1111 extension do).

    python benchmarks/cutout_quality.py --onnx isnet.onnx --size 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_layerdiffuse.cutout import CutoutError, cut_out  # noqa: E402
from lib_layerdiffuse.cutout import rembg_backend  # noqa: E402
from lib_layerdiffuse.cutout.metrics import all_metrics  # noqa: E402
from lib_layerdiffuse.testing.composites import rgba_cases, synthetic_cases  # noqa: E402

REFINES = ("none", "decontaminate", "alpha matting")
METRICS = ("SAD", "MSE", "Grad", "Conn", "FG err")


def baseline(session, image: np.ndarray):
    """rembg.remove with its defaults: alpha, and the colour it writes (premultiplied by alpha)."""
    import rembg
    from PIL import Image

    out = np.asarray(rembg.remove(Image.fromarray(image), session=session), np.float32) / 255.0
    alpha = out[..., 3]
    return alpha, out[..., :3]


def run(args: argparse.Namespace) -> None:
    cases = list(synthetic_cases(args.size))
    if args.rgba and Path(args.rgba).is_dir():
        cases += list(rgba_cases(Path(args.rgba), size=args.size))
    model_kwargs = None
    if args.onnx:
        home = tempfile.mkdtemp(prefix="cutout-bench-")
        model_kwargs = dict(model="local file", model_path=args.onnx, models_dir=home)
    elif args.model:
        model_kwargs = dict(model=args.model, allow_download=False)
    session = rembg_backend.get_session(model_kwargs["model"], model_kwargs.get("model_path", ""),
                                        home=model_kwargs.get("models_dir"), allow_download=False) \
        if model_kwargs else None
    rows: dict[str, list[dict]] = {}

    def score(label, alpha, fg, case, seconds):
        rows.setdefault(label, []).append({**all_metrics(alpha, fg, case.alpha, case.fg), "s": seconds,
                                           "case": case.name})

    for case in cases:
        print(f"{case.name} ...", file=sys.stderr)
        if session is not None:
            t = time.perf_counter()
            alpha, fg = baseline(session.session, case.image)
            score("rembg.remove (defaults)", alpha, fg, case, time.perf_counter() - t)
            for refine in REFINES:
                t = time.perf_counter()
                res = cut_out(case.image, refine=refine, **model_kwargs)
                score(f"ours, model, {refine}", res.alpha, res.foreground, case, time.perf_counter() - t)
        for refine in REFINES:
            t = time.perf_counter()
            try:
                res = cut_out(case.image, model="weight-free", refine=refine)
            except CutoutError:
                rows.setdefault(f"weight-free, {refine}", []).append({"case": case.name, "refused": True})
                continue
            score(f"weight-free, {refine}", res.alpha, res.foreground, case, time.perf_counter() - t)
    report(rows, cases, session)
    if session is not None:
        timing(args, model_kwargs, cases[0].image)


def report(rows: dict, cases: list, session) -> None:
    model = session.describe() if session is not None else "no model"
    print(f"\n### Quality ({len(cases)} cases, {model}; means over the cases each row scored)\n")
    print("| method | cases scored | " + " | ".join(METRICS) + " | s/image |")
    print("|---|---|" + "---|" * (len(METRICS) + 1))
    for label, entries in rows.items():
        scored = [e for e in entries if not e.get("refused")]
        cells = [f"{statistics.mean(e[m] for e in scored):.3f}" if scored else "-" for m in METRICS + ("s",)]
        print(f"| {label} | {len(scored)}/{len(entries)} | " + " | ".join(cells) + " |")
    groups = sorted({c.name.split("/")[0] for c in cases})
    print("\nSAD by foreground (mean over its backgrounds):\n")
    print("| method | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for label, entries in rows.items():
        cells = []
        for g in groups:
            values = [e["SAD"] for e in entries if e["case"].split("/")[0] == g and not e.get("refused")]
            cells.append(f"{statistics.mean(values):.2f}" if values else "refused")
        print(f"| {label} | " + " | ".join(cells) + " |")


def timing(args: argparse.Namespace, model_kwargs: dict, image: np.ndarray, repeats: int = 4) -> None:
    cached, fresh = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        cut_out(image, refine="none", **model_kwargs)
        cached.append(time.perf_counter() - t)
        rembg_backend.release_sessions()
        t = time.perf_counter()
        cut_out(image, refine="none", **model_kwargs)
        fresh.append(time.perf_counter() - t)
    c, f = statistics.median(cached[1:]), statistics.median(fresh)
    print(f"\n### Time per image, {args.size}x{args.size}, refine none (median of {repeats})\n")
    print("| session | s/image | ratio to cached |\n|---|---|---|")
    print(f"| cached (one per model) | {c:.2f} | 1.00 |\n| new per image | {f:.2f} | {f / c:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", help="an ONNX segmentation model (320 or 1024 px input)")
    parser.add_argument("--model", help="a rembg model name whose file is in U2NET_HOME")
    parser.add_argument("--size", type=int, default=384, help="side of the synthetic cases")
    parser.add_argument("--rgba", default=str(ROOT.parent / "shared" / "data" / "rgba"),
                        help="folder of real RGBA PNGs to composite (skipped when absent)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
