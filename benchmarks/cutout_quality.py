"""Cutout quality against a hard colour key and oracle-trimap matting, on composites of known alpha.

Cases: the real LayerDiffuse RGBA outputs in `--rgba` (default ../shared/data/rgba: glass, fur,
curly hair, pixel art, people cut by the frame) over seeded backdrops (`--backdrops`):
a flat colour with a mild vignette, a linear gradient, a strong cos^4 vignette, a colour close to
the subject's, and a vignette saved as a noisy JPEG (quality 75) - at each size in `--sizes`.
`--synthetic` adds the soft disc, hair-like strands and glass panel over solid, gradient and
textured backgrounds. `--cut` frames every subject so that it runs out of the image at the
bottom and one side (fur, jackets and bodies cut by the frame: where matting tiles meet the
frame). Every case is scored with SAD (sum |a - a*| / 1000), the gradient error, the edge
colour error (0..255 where the true alpha is soft) and straight seams (`metrics.straight_seams`:
rows or columns along which alpha steps for 24+ px where the true alpha does not; a tile edge
or a block decided whole) for:
- anchors in the same run: the hard key against the border median (distance > 0.12) and
  closed-form matting with an oracle trimap (true alpha > 0.95 / < 0.05, eroded 3 px);
- the weight-free cutout with each refinement (none / decontaminate / alpha matting);
- with `--onnx FILE` (any ONNX segmenter: BiRefNet, IS-Net or U2-Net exports) or `--model NAME`
  (a rembg model in U2NET_HOME): that model alone through `rembg.remove` with its defaults, and
  ours on it with refinement none and alpha matting (does matting after a model help, and is it
  ever worse than the model alone? the summary counts the cases).

    python benchmarks/cutout_quality.py                       # 384 px, vignette + gradient
    python benchmarks/cutout_quality.py --backdrops all --sizes 384,1024 --seeds 0,1,2
    python benchmarks/cutout_quality.py --cut --backdrops vignette,jpeg --sizes 1024,2048 --refines decontaminate
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_layerdiffuse.cutout import CutoutError, cut_out  # noqa: E402
from lib_layerdiffuse.cutout.metrics import edge_color_error, gradient_error, sad, straight_seams  # noqa: E402
from lib_layerdiffuse.testing.anchors import colour_key, oracle_matting  # noqa: E402
from lib_layerdiffuse.testing.composites import BACKDROPS, backdrop_cases, synthetic_cases  # noqa: E402

KEY, ORACLE = "hard key (border median, d > 0.12)", "closed-form, oracle trimap"
REFINES = ("none", "decontaminate", "alpha matting")
MODEL_REFINES = ("none", "alpha matting")


def baseline(session, image: np.ndarray):
    """rembg.remove with its defaults: alpha, and the colour it writes (premultiplied by alpha)."""
    import rembg
    from PIL import Image

    out = np.asarray(rembg.remove(Image.fromarray(image), session=session), np.float32) / 255.0
    return out[..., 3], out[..., :3]


def cases(args: argparse.Namespace):
    backdrops = BACKDROPS if args.backdrops == "all" else tuple(args.backdrops.split(","))
    for size in (int(s) for s in args.sizes.split(",")):
        if args.rgba and Path(args.rgba).is_dir():
            for seed in (int(s) for s in args.seeds.split(",")):
                for case in backdrop_cases(Path(args.rgba), size, seed, backdrops, cut=args.cut):
                    case.name = f"{case.name} s{seed} {size}"
                    yield case
        if args.synthetic:
            for case in synthetic_cases(size):
                case.name = f"{case.name} {size}"
                yield case


def methods(args: argparse.Namespace, model: dict):
    """(label, function case -> (alpha, foreground float), or None when refused)."""
    yield KEY, lambda case: (colour_key(case.image), case.image / 255.0)
    yield ORACLE, lambda case: (oracle_matting(case.image, case.alpha), case.image / 255.0)

    def ours(refine: str, **model):
        def run(case):
            try:
                result = cut_out(case.image, refine=refine, **model)
            except CutoutError:
                return None
            return result.alpha, result.foreground
        return run

    for refine in args.refines.split(","):
        yield f"weight-free, {refine}", ours(refine, model="weight-free")
    if model:
        from lib_layerdiffuse.cutout import rembg_backend

        session = rembg_backend.get_session(model["model"], model.get("model_path", ""),
                                            home=model.get("models_dir"), allow_download=False)
        yield f"model alone: rembg.remove ({session.model}, defaults)", \
            lambda case: baseline(session.session, case.image)
        for refine in MODEL_REFINES:
            yield f"model, {refine}", ours(refine, **model)


def model_kwargs(args: argparse.Namespace) -> dict:
    """cut_out's keywords for the model in `--onnx` / `--model`; empty without one."""
    if args.onnx:
        return dict(model="local file", model_path=args.onnx)
    if args.model:
        return dict(model=args.model, allow_download=False)
    return {}


def run(args: argparse.Namespace) -> None:
    model = model_kwargs(args)
    scorers = list(methods(args, model))
    table: dict[str, dict[str, dict]] = {}
    names, first = [], None
    for case in cases(args):
        names.append(case.name)
        first = case if first is None else first
        print(f"{case.name} ...", file=sys.stderr, flush=True)
        for label, method in scorers:
            t = time.perf_counter()
            out = method(case)
            seconds = time.perf_counter() - t
            if out is None:
                table.setdefault(label, {})[case.name] = {"refused": True}
                continue
            alpha, fg = out
            table.setdefault(label, {})[case.name] = {
                "SAD": sad(alpha, case.alpha), "Grad": gradient_error(alpha, case.alpha),
                "FG err": edge_color_error(fg, case.fg, case.alpha), "s": seconds,
                "seams": straight_seams(alpha, case.alpha)}
    report(table, names)
    if model and first is not None:
        timing(model, first.image)


def timing(model: dict, image: np.ndarray, repeats: int = 4) -> None:
    """Time per image with one cached session against a new session per image (what
    `rembg.remove` without `session=` and the A1111 extension do)."""
    from lib_layerdiffuse.cutout import rembg_backend

    cached, fresh = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        cut_out(image, refine="none", **model)
        cached.append(time.perf_counter() - t)
        rembg_backend.release_sessions()
        t = time.perf_counter()
        cut_out(image, refine="none", **model)
        fresh.append(time.perf_counter() - t)
    c, f = statistics.median(cached[1:]), statistics.median(fresh)
    h, w = image.shape[:2]
    print(f"\n### Time per image, {w}x{h}, refine none (median of {repeats})\n")
    print("| session | s/image | ratio to cached |\n|---|---|---|")
    print(f"| cached (one per model) | {c:.2f} | 1.00 |\n| new per image | {f:.2f} | {f / c:.2f} |")


def _group(name: str) -> str:
    """'cat/vignette s0 384' -> 's0 384 vignette'; 'cat cut/jpeg s0 1024' -> 's0 1024 jpeg cut'."""
    subject, tail = name.split("/", 1)
    backdrop, *rest = tail.split(" ")
    return " ".join(rest + [backdrop] + (["cut"] if subject.endswith(" cut") else []))


def _mean(entries, metric: str) -> str:
    values = [e[metric] for e in entries if not e.get("refused")]
    return f"{statistics.mean(values):.2f}" if values else "-"


def report(table: dict, names: list[str]) -> None:
    key = table[KEY]
    groups = sorted({_group(n) for n in names})
    print(f"\n### Summary ({len(names)} cases; means over the cases each row scored)\n")
    print("| method | scored | SAD | Grad | FG err | s/image | cases worse than the key | cases with seams |")
    print("|---|---|---|---|---|---|---|---|")
    for label, rows in table.items():
        entries = list(rows.values())
        scored = [e for e in entries if not e.get("refused")]
        worse = sum(1 for n, e in rows.items() if not e.get("refused") and e["SAD"] > key[n]["SAD"])
        seamed = sum(1 for e in scored if e["seams"][0])
        print(f"| {label} | {len(scored)}/{len(entries)} | {_mean(entries, 'SAD')} | {_mean(entries, 'Grad')} | "
              f"{_mean(entries, 'FG err')} | {_mean(entries, 's')} | {'' if label == KEY else worse} | {seamed} |")
    plain, matted = (f"model, {r}" for r in MODEL_REFINES)
    if plain in table and matted in table:
        pairs = [(table[plain][n], table[matted][n]) for n in names]
        diffs = [m["SAD"] - p["SAD"] for p, m in pairs if not p.get("refused") and not m.get("refused")]
        worse = [d for d in diffs if d > 0]
        print(f"\n{matted} against {plain}: better on {sum(d < 0 for d in diffs)} of {len(diffs)} cases, "
              f"worse on {len(worse)}" + (f" (by at most {max(worse):.2f})" if worse else ""))
    print("\n### Mean SAD by backdrop, seed and size\n")
    labels = list(table)
    print("| cases | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for group in groups:
        members = [n for n in names if _group(n) == group]
        print(f"| {group} ({len(members)}) | " + " | ".join(_mean([table[m][n] for n in members], "SAD") for m in labels) + " |")
    print("\n### SAD per case (seams: lines, longest run in px)\n")
    print("| case | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for name in names:
        cells = []
        for label in labels:
            e = table[label][name]
            cell = "refused" if e.get("refused") else f"{e['SAD']:.2f}"
            if not e.get("refused") and e["seams"][0]:
                cell += " (seams: {}, {} px)".format(*e["seams"])
            if label != KEY and not e.get("refused") and e["SAD"] > key[name]["SAD"]:
                cell += " (worse than key)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rgba", default=str(ROOT.parent / "shared" / "data" / "rgba"),
                        help="folder of straight-alpha RGBA PNGs to composite (skipped when absent)")
    parser.add_argument("--backdrops", default="vignette,gradient", help=f"comma list of {', '.join(BACKDROPS)}, or all")
    parser.add_argument("--sizes", default="384", help="comma list of square sizes, e.g. 384,1024")
    parser.add_argument("--seeds", default="0", help="comma list of backdrop seeds")
    parser.add_argument("--synthetic", action="store_true", help="add the synthetic disc, strands and glass panel")
    parser.add_argument("--cut", action="store_true", help="frame each RGBA subject so it runs out of the image")
    parser.add_argument("--refines", default=",".join(REFINES),
                        help="comma list of the weight-free refinements to score (decontaminate and none give the "
                             "same alpha)")
    parser.add_argument("--onnx", help="an ONNX segmentation model (square input), e.g. a BiRefNet or IS-Net export")
    parser.add_argument("--model", help="a rembg model name whose file is in U2NET_HOME")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
