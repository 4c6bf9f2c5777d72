"""Command line: `python -m lib_layerdiffuse [status|download|convert|generate|decompose|batch|cutout|replace-bg|app] ...`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__
from .methods import Family, Method
from .weights import CATALOG, State, WeightError, WeightStore, human_size
from .weights.store import USABLE


def cmd_status(args: argparse.Namespace) -> int:
    store = WeightStore(args.models_dir, progress=not args.quiet)
    statuses = {s.entry.name: s for s in store.statuses(verify=args.verify)}
    out = sys.stdout
    out.write(f"LayerDiffuse {__version__}\n")
    out.write(f"Weight folder: {store.folder}\n  (chosen by: {store.location.source})\n\n")
    out.write("Methods (family, files needed, ready?):\n")
    for m in Method:
        states = [statuses[f].state for f in m.weight_files]
        present = sum(state in USABLE + (State.PRESENT,) for state in states)
        ready = f"{len(states)} file{'s' * (len(states) != 1)} needed, {present} present"
        if State.PRESENT in states:
            ready += " (not verified yet)"
        if all(state in USABLE for state in states):
            ready = "ready" if State.UNPINNED not in states else "ready (with unpinned files)"
        files = ", ".join(m.weight_files) or "no weight files (the model's own VAE makes the alpha)"
        out.write(f"  {m.name:<18} {m.value}\n  {'':<18} {m.family.label}; {files}; {ready}\n")
        if m.spec.licence:
            out.write(f"  {'':<18} Licence: {m.spec.licence}\n")
    out.write("\nWeight files:\n")
    for s in statuses.values():
        out.write(f"  {s.state.value:<26} {human_size(s.entry.approx_size):>8}  {s.entry.family.label:<5} {s.entry.name}\n")
        if s.detail:
            out.write(f"  {'':<26} {'':>8}  {'':<5} {s.detail}\n")
        if s.state not in USABLE and s.entry.converted_from:
            out.write(f"  {'':<26} {'':>8}  {'':<5} made from {s.entry.converted_from} by "
                      "`python -m lib_layerdiffuse convert`\n")
        elif s.state not in USABLE:
            out.write(f"  {'':<26} {'':>8}  {'':<5} from {s.entry.url}\n")
            out.write(f"  {'':<26} {'':>8}  {'':<5} to   {s.path}\n")
    if not args.verify and any(s.state is State.PRESENT for s in statuses.values()):
        out.write("\nFiles marked 'present' are checked against their SHA-256 on first use "
                  "(or now with --verify).\n")
    refused = [s for s in statuses.values() if s.state in (State.CORRUPT, State.NOT_OFFICIAL)]
    if any(s.state is State.NOT_OFFICIAL and "official ones" in s.detail for s in refused):
        out.write("\nA file that is not the official one but has its layout (converted, fine-tuned, mirrored) "
                  "is used when LAYERDIFFUSE_ALLOW_UNPINNED=1 is set.\n")
    return 1 if refused else 0


def _selected_files(args: argparse.Namespace) -> list[str]:
    names: list[str] = []
    for text in args.method or []:
        names.extend(Method.parse(text).weight_files)
    for fam in args.family or []:
        names.extend(n for n, e in CATALOG.items() if e.family is Family(fam))
    names.extend(args.files or [])
    return list(dict.fromkeys(names)) or list(CATALOG)


def cmd_download(args: argparse.Namespace) -> int:
    store = WeightStore(args.models_dir, allow_download=not args.offline, progress=not args.quiet)
    failed = 0
    for name in _selected_files(args):
        try:
            path = _ensure_or_convert(store, name)
            print(f"ok        {path}")
        except WeightError as exc:
            failed += 1
            print(f"FAILED    {name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _ensure_or_convert(store: WeightStore, name: str):
    """`store.ensure(name)`; a missing converted file is made from its source, which is
    downloaded first if needed (this command was asked to fetch it)."""
    entry = store.entry(name)
    if entry.converted_from and store.status(name).state is State.MISSING:
        from .vae.convert import convert_flux_vae

        convert_flux_vae(store.ensure(entry.converted_from), store)
    return store.ensure(name)


def cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .weights.catalog import FLUX_VAE_PICKLE as SOURCE

    store = WeightStore(args.models_dir, allow_download=args.download, progress=not args.quiet)
    if args.source:
        source = Path(args.source).expanduser()
        if not source.is_file():
            raise WeightError(f"{source} is not there (or not a file). Give the path of LayerDiffuse-Flux's {SOURCE}.")
    elif args.download:
        source = store.ensure(SOURCE)
    else:
        source = store.path(SOURCE)
        if not source.is_file():
            raise WeightError(f"{source} is not there. Give the path of LayerDiffuse-Flux's {SOURCE}, or add "
                              f"--download to fetch it from {store.entry(SOURCE).url}.")
    from .vae.convert import convert_flux_vae  # torch: only once there is something to convert

    for path in convert_flux_vae(source, store):
        print(f"wrote     {path}")
    print(f"Licence: {Method.FLUX_FG_ONLY.spec.licence}")
    return 0


def _read_image(path: Optional[str], flag: str):
    """An image file as RGBA uint8, or None; unreadable files are a clear error."""
    if path is None:
        return None
    from .images import read_image_file

    return read_image_file(path, flag)


def cmd_generate(args: argparse.Namespace) -> int:
    import warnings

    # the library warns (model kinds that do not work, DPM on blend-to-layer); say it plainly
    with warnings.catch_warnings():
        warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
        return _generate(args)


def _fetch_weights(args: argparse.Namespace, method: Method) -> WeightStore:
    """Download / verify the method's weight files before the (larger) model loads."""
    store = WeightStore(args.models_dir, allow_download=not args.offline, progress=not args.quiet)
    for name in method.weight_files:
        store.ensure(name)
    return store


def _add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPUs, fp32 on CPU")


def _torch_dtype(args: argparse.Namespace):
    """The torch dtype of --dtype (None: the device's default)."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype]


def _load_engine(args: argparse.Namespace, method: Method, store: WeightStore):
    from .engine import LayerDiffuse

    print(f"Loading model {args.model} ...", file=sys.stderr)
    return LayerDiffuse.from_model(args.model, method, device=args.device, dtype=_torch_dtype(args), store=store,
                                   local_files_only=args.offline, decoder_passes=getattr(args, "passes", 8),
                                   progress=not args.quiet)


def _generate(args: argparse.Namespace) -> int:
    from .engine import check_method_family, locate_model
    from .engine.samplers import parse_sampler

    family = locate_model(args.model, args.offline).family
    method = Method.parse(args.method or Method.default(family), family=family)
    check_method_family(method, family)
    if args.sampler:
        parse_sampler(args.sampler)
    _check_family_size(args, family)
    if args.alpha_floor is not None and not family.native_rgba:
        raise ValueError(f"--alpha-floor cleans the alpha of a native-RGBA model (Qwen-Image-2.1); {args.model} is "
                         f"{family.label}, whose transparent decoder it does not apply to")
    images = {flag: _read_image(getattr(args, flag), f"--{flag}") for flag in ("fg", "bg", "blend", "init")}
    engine = _load_engine(args, method, _fetch_weights(args, method))
    optional = {name: getattr(args, name) for name in ("strength", "alpha_floor") if getattr(args, name) is not None}
    result = engine.generate(
        args.prompt, method, negative_prompt=args.negative, steps=args.steps, cfg=args.cfg, seed=args.seed,
        width=args.width, height=args.height, batch=args.batch, fg=images["fg"], bg=images["bg"],
        blend=images["blend"], weight=args.weight, stop_at=args.stop_at, resize_mode=args.resize_mode,
        fg_prompt=args.fg_prompt, bg_prompt=args.bg_prompt, blend_prompt=args.blend_prompt,
        sampler=args.sampler, init_image=images["init"], **optional)
    for path in result.save(args.out, originals=args.originals, previews=args.previews):
        print(path)
    return 0


def _check_family_size(args: argparse.Namespace, family: Family) -> None:
    """Sizes the model family cannot take, refused before the model loads (Flux: multiples of
    16, Qwen-Image-2.1: of 32; every family: of 8, checked when parsing)."""
    multiple = {Family.FLUX: 16, Family.QWEN21: 32}.get(family, 8)
    for flag in ("width", "height"):
        value = getattr(args, flag)
        if value is not None and value % multiple:
            low = max(multiple, value // multiple * multiple)
            raise ValueError(f"--{flag} {value}: {family.label} sizes are multiples of {multiple}; "
                             f"try {low} or {low + multiple}")


def _add_generate(sub, common: argparse.ArgumentParser) -> None:
    from .params import LayerDiffuseParams, ResizeMode

    gen = sub.add_parser("generate", parents=[common], help="generate images with a LayerDiffuse method",
                         description="Generate with a LayerDiffuse method on a diffusers pipeline. "
                                     "Transparent outputs are written as straight-alpha RGBA PNGs with "
                                     "the generation parameters embedded.")
    gen.add_argument("--model", required=True,
                     help="hub id, diffusers folder or single-file .safetensors checkpoint: SD1.5, SDXL, FLUX.1 "
                          "or Qwen-Image-2.1 (native RGBA; a folder or hub id)")
    gen.add_argument("--method", help="method name or member (default: the transparent foreground of the "
                                      "model's family); see `status` for the list")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--steps", type=_at_least_one)
    gen.add_argument("--cfg", type=float, help="guidance scale (default 7)")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--width", type=_size, help="pixels, a multiple of 8 (default: the family's size)")
    gen.add_argument("--height", type=_size, help="pixels, a multiple of 8 (default: the family's size)")
    gen.add_argument("--batch", type=_at_least_one, help="images per run (SD1.5 multi-frame methods: a multiple "
                                               "of their frames; default one set)")
    gen.add_argument("--fg", help="foreground image (methods that take one)")
    gen.add_argument("--bg", help="background image")
    gen.add_argument("--blend", help="blended image")
    gen.add_argument("--resize-mode", default=ResizeMode.CROP_AND_RESIZE.value,
                     help="how condition images are fitted: " + ", ".join(m.value for m in ResizeMode))
    gen.add_argument("--fg-prompt", default="", help="additional prompt of the foreground frame (SD1.5)")
    gen.add_argument("--bg-prompt", default="", help="additional prompt of the background frame (SD1.5)")
    gen.add_argument("--blend-prompt", default="", help="additional prompt of the blended frame (SD1.5)")
    gen.add_argument("--weight", type=_number_in(*_bounds(LayerDiffuseParams, "weight")), default=1.0,
                     help="patch strength 0..2 (SDXL)")
    gen.add_argument("--stop-at", type=_number_in(*_bounds(LayerDiffuseParams, "stop_at")), default=1.0,
                     help="fraction of the steps run with LayerDiffuse (0..1)")
    gen.add_argument("--sampler", help="Euler a, Euler, UniPC, DDIM, DPM++ 2M [Karras|SDE Karras] "
                                       "(default: the model's own; Euler a for the blend-to-layer methods)")
    gen.add_argument("--init", help="init image for img2img (RGBA keeps its transparency)")
    gen.add_argument("--strength", type=_number_in(0, 1, low_open=True),
                     help="img2img denoising strength, over 0 up to 1 (default 0.7; Flux 0.8; Qwen-Image-2.1 edits "
                          "the --init image by the prompt and takes none)")
    gen.add_argument("--alpha-floor", type=_whole_in(0, 254),
                     help="Qwen-Image-2.1: alpha at or under this becomes 0 (clears the specks RGBA decoders leave "
                          "in empty background; alpha above it is never changed). Default 0: off")
    gen.add_argument("--passes", type=int, default=8, choices=(1, 2, 4, 8),
                     help="transparent decoder passes (8 = the reference's quality)")
    _add_device_flags(gen)
    gen.add_argument("--offline", action="store_true",
                     help="never download weight files or the model (hub models come from the Hugging "
                          "Face cache); say what is missing and where it goes")
    gen.add_argument("--out", default="outputs", help="output folder (default: ./outputs)")
    gen.add_argument("--originals", action="store_true", help="also save the opaque decode of "
                                                              "transparent images")
    gen.add_argument("--previews", action="store_true", help="also save checkerboard previews")
    gen.set_defaults(func=cmd_generate)


def cmd_decompose(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engine.family import locate_layered_model
    from .layers.decompose import LayerDecomposer

    image = _read_image(args.image, "IMAGE")
    locate_layered_model(args.model, args.offline)  # a wrong or missing model is said before loading
    print(f"Loading model {args.model} ...", file=sys.stderr)
    decomposer = LayerDecomposer.from_model(args.model, device=args.device, dtype=_torch_dtype(args),
                                            local_files_only=args.offline, progress=not args.quiet)
    result = decomposer.decompose(image, args.layers, prompt=args.prompt, steps=args.steps, cfg=args.cfg,
                                  seed=args.seed, resolution=args.resolution)
    for path in result.save(args.out, Path(args.image).stem, psd=not args.no_psd, archive=args.zip):
        print(path)
    report = result.report()
    empty = ", ".join(map(str, report["empty"])) or "none"
    print(f"{report['layers']} layers of {report['size'][0]}x{report['size'][1]}, seed {report['seed']}; the layers "
          f"put together differ from the image by {report['composite_error']:.2f} of 255 on average (premultiplied "
          f"RGBA); empty layers: {empty}", file=sys.stderr)
    return 0


def _add_decompose(sub, common: argparse.ArgumentParser) -> None:
    from .layers.options import (
        DEFAULT_CFG,
        DEFAULT_LAYERS,
        DEFAULT_MODEL,
        DEFAULT_STEPS,
        LICENCE,
        MAX_LAYERS,
        RESOLUTIONS,
    )

    dec = sub.add_parser("decompose", parents=[common], help="split an image into RGBA layers (Qwen-Image-Layered)",
                         description="Split an image into transparent layers with Qwen-Image-Layered: every layer "
                                     "as a PNG (1 = bottom) and a layered PSD, with how far the layers put back "
                                     f"together are from the image and which came out empty. {LICENCE}")
    dec.add_argument("image", help="the image (PNG, JPEG, WebP; its alpha is kept)")
    dec.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or diffusers folder (default {DEFAULT_MODEL})")
    dec.add_argument("--layers", type=_whole_in(1, MAX_LAYERS), default=DEFAULT_LAYERS,
                     help=f"how many layers (default {DEFAULT_LAYERS})")
    dec.add_argument("--prompt", default="", help="what the image shows (default: the model captions it itself)")
    dec.add_argument("--steps", type=_at_least_one, help=f"default {DEFAULT_STEPS}")
    dec.add_argument("--cfg", type=_number_in(1, 20), help=f"true CFG scale (default {DEFAULT_CFG})")
    dec.add_argument("--seed", type=int)
    dec.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=RESOLUTIONS[0],
                     help="the model's size bucket (default 640, recommended)")
    dec.add_argument("-o", "--out", default="outputs", help="output folder (default: ./outputs)")
    dec.add_argument("--zip", action="store_true", help="also write a ZIP of the layers and the PSD")
    dec.add_argument("--no-psd", action="store_true", help="PNG layers only")
    _add_device_flags(dec)
    dec.add_argument("--offline", action="store_true", help="never download the model (Hugging Face cache only)")
    dec.set_defaults(func=cmd_decompose)


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import load_job, run_job

    job = load_job(args.job)
    generated = [it for it in job.items if not it.decompose]
    splits = len(job.items) - len(generated)
    if splits and (args.forge_url or args.ray):
        raise ValueError(f"{args.job}: its {splits} [[decompose]] entries run on this machine with Qwen-Image-Layered "
                         f"(no WebUI runs it, and they are not sharded over Ray): run them without "
                         f"{'--forge-url' if args.forge_url else '--ray'}, or put them in a job of their own")
    if args.forge_url:
        from .batch.forge_api import ForgeEngine

        missing = [it.key for it in generated if not it.settings.get("method")]
        if missing:
            raise ValueError(f"{args.job}: {len(missing)} items have no method; through Forge every item needs one "
                             "(method = ... at the top of the job file or in the item)")
        print(f"{len(job.items)} items in {args.job} through Forge at {args.forge_url}; outputs and manifest in "
              f"{args.out}", file=sys.stderr)
        summary = run_job(job, args.out, lambda model: ForgeEngine(args.forge_url, model), progress=not args.quiet)
        print(summary.line(), file=sys.stderr)
        return _batch_exports(args)
    from .engine import check_method_family, locate_model

    first = None
    store = WeightStore(args.models_dir, allow_download=not args.offline, progress=not args.quiet)
    if generated:
        local = f"set `model` in the job file {args.job} to a local .safetensors checkpoint or diffusers folder"
        family = locate_model(job.model, args.offline, local=local).family
        methods = {Method.parse(it.settings.get("method") or Method.default(family), family=family)
                   for it in generated}
        for method in methods:
            check_method_family(method, family)
        for name in sorted({n for m in methods for n in m.weight_files}):
            store.ensure(name)
        first = sorted(methods, key=str)[0]
    if splits:
        from .engine.family import locate_layered_model

        locate_layered_model(job.layers_model, args.offline,
                             local=f"set `layers_model` in the job file {args.job} to a local diffusers folder")
    print(f"{len(job.items)} items in {args.job}; outputs and manifest in {args.out}", file=sys.stderr)
    if args.ray:
        import functools

        from .batch.ray_runner import run_job_on_ray

        options = {k: v for k, v in vars(args).items() if k != "func"}
        summary = run_job_on_ray(job, args.out, functools.partial(ray_engine, options, first.name),
                                 address=None if args.ray == "local" else args.ray, workers=args.workers,
                                 batch_size=args.batch_size, progress=not args.quiet)
    else:
        def decomposer(model: str):
            from .layers.decompose import LayerDecomposer

            return LayerDecomposer.from_model(model, device=args.device, dtype=_torch_dtype(args),
                                              local_files_only=args.offline, progress=not args.quiet)

        summary = run_job(job, args.out, lambda model: _load_engine(
            argparse.Namespace(**{**vars(args), "model": model}), first, store),
            progress=not args.quiet, batch_size=args.batch_size, decomposer_for=decomposer)
    print(summary.line(), file=sys.stderr)
    return _batch_exports(args)


def ray_engine(options: dict, method: str, model: str):
    """The engine on a Ray worker: its own weight store (downloading what the node lacks unless
    --offline) and the model, loaded once per worker."""
    args = argparse.Namespace(**{**options, "model": model, "quiet": True})
    parsed = Method.parse(method)
    store = WeightStore(args.models_dir, allow_download=not args.offline, progress=False)
    for name in parsed.weight_files:
        store.ensure(name)
    return _load_engine(args, parsed, store)


def _batch_exports(args: argparse.Namespace) -> int:
    if args.sprite_sheet:
        from .batch.exports import export_sprite_sheet

        for path in export_sprite_sheet(args.out, args.sprite_sheet):
            print(path)
    if args.psd:
        from .batch.exports import export_psds

        for path in export_psds(args.out):
            print(path)
    return 0


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _size(text: str) -> int:
    """A width or height: the engine works on latents of 1/8 the size."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8 (pixels), got {text!r}"
                                         + (f"; the nearest are {value // 8 * 8 or 8} and {value // 8 * 8 + 8}"
                                            if value > 0 else ""))
    return value


def _number_in(low: float, high: float, low_open: bool = False):
    """An argparse type: a number from `low` (excluded with `low_open`) to `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low < value <= high if low_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number {'over' if low_open else 'from'} {low:g} "
                                             f"{'up ' if low_open else ''}to {high:g}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def _bounds(settings: type, name: str) -> tuple[float, float]:
    """The range a settings dataclass allows for its field `name`."""
    return settings.__dataclass_fields__[name].metadata["range"]


def _whole_in(low: float, high: float):
    """An argparse type: a whole number from `low` to `high`."""
    low, high = int(low), int(high)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got {text!r}")
        return value
    parse.__name__ = "whole number"
    return parse


def _add_batch(sub, common: argparse.ArgumentParser) -> None:
    batch = sub.add_parser("batch", parents=[common], help="run a job file of many generations (resumable)",
                           description="Run every item of a job file (TOML, or YAML with PyYAML): a model, "
                                       "defaults, a matrix of prompts x seeds x methods x sizes and single "
                                       "items. Each output is written atomically and recorded in "
                                       "OUT/manifest.jsonl with its settings, seed, SHA-256 and alpha checks; "
                                       "a rerun skips what is done and intact. See the README's \"Batch "
                                       "production\".")
    batch.add_argument("job", help="the job file")
    batch.add_argument("--out", default="batch-out", help="output folder (default: ./batch-out)")
    batch.add_argument("--passes", type=int, default=8, choices=(1, 2, 4, 8),
                       help="transparent decoder passes (8 = the reference's quality)")
    batch.add_argument("--batch-size", type=_at_least_one,
                       help="items that differ only in prompt and seed are sampled this many at a time "
                            "(one-frame methods; default 8 on CUDA, halved while a batch does not fit in "
                            "memory, 4 elsewhere; 1 = one at a time)")
    _add_device_flags(batch)
    batch.add_argument("--offline", action="store_true", help="never download weight files or the model")
    batch.add_argument("--forge-url", metavar="URL", help="run the items through a running Forge's API (started "
                                                          "with --api), e.g. http://127.0.0.1:7860; the job's "
                                                          "model is Forge's checkpoint name, or \"forge\" for "
                                                          "the loaded one")
    batch.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: its address (ray://host:10001), "
                                                        "\"auto\" (the cluster this machine belongs to) or "
                                                        "\"local\" (start one here); needs `pip install ray`")
    batch.add_argument("--workers", type=_at_least_one, help="Ray workers, each holding a loaded model (default: "
                                                             "one per GPU of the cluster, or 2 without GPUs)")
    batch.add_argument("--sprite-sheet", metavar="NAME", help="afterwards, pack every transparent output into "
                                                              "OUT/NAME.png with a TexturePacker JSON hash map")
    batch.add_argument("--psd", action="store_true", help="afterwards, write a layered PSD per item of a layer "
                                                          "method (needs psd-tools)")
    batch.set_defaults(func=cmd_batch)


def _cutout_model(args: argparse.Namespace) -> str:
    """--cutout-model, or the default: isnet-general-use when it is downloaded or can be
    downloaded now, else the weight-free cutout (with a note saying why)."""
    if args.cutout_model:
        return args.cutout_model
    from .cutout.availability import CutoutModels

    model, note = CutoutModels(args.cutout_models_dir, allow_download=not args.offline).default()
    if note:
        print(f"note: {note}", file=sys.stderr)
    return model


def _cutout_settings(args: argparse.Namespace):
    """CutoutSettings from the shared cutout flags; --bg is a colour or an image file."""
    from .cutout import CutoutSettings, Output, parse_color

    output, color, background = Output.RGBA, None, None
    if args.bg:
        try:
            color = "#%02x%02x%02x" % parse_color(args.bg)
            output = Output.COLOR
        except ValueError:
            background = _read_image(args.bg, "--bg")
            output = Output.IMAGE
    if getattr(args, "mask", False):
        output = Output.MASK
    return CutoutSettings(model=_cutout_model(args), model_path=args.model_path or "", refine=args.refine,
                          edge_band=args.edge_band, fg_threshold=args.fg_threshold,
                          bg_threshold=args.bg_threshold, output=output, color=color, background=background)


def _providers(args: argparse.Namespace) -> Optional[list[str]]:
    return [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None


def cmd_cutout(args: argparse.Namespace) -> int:
    from .cutout.files import cut_out_files

    settings = _cutout_settings(args)
    report = cut_out_files(args.inputs, args.out, settings, progress=not args.quiet,
                           report=lambda line: print(line, file=sys.stderr), providers=_providers(args),
                           models_dir=args.cutout_models_dir, allow_download=not args.offline)
    for path in report.written:
        print(path)
    if report.failed:
        print(f"{len(report.failed)} of {len(report.failed) + len(report.written)} images failed",
              file=sys.stderr)
    return 1 if report.failed else 0


def cmd_replace_bg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .cutout import cut_out
    from .cutout.replace import replace_background

    if not args.prompt and not args.background:
        raise ValueError("give --prompt to generate a new background, or --background IMAGE")
    image = _read_image(args.image, "IMAGE")
    background = _read_image(args.background, "--background")
    settings = _cutout_settings(args)
    engine = None
    if background is None:
        from .engine import check_method_family, locate_model

        check_method_family(Method.FG_TO_BLEND, locate_model(args.model, args.offline).family)
        store = _fetch_weights(args, Method.FG_TO_BLEND)
    cut = cut_out(image, settings, providers=_providers(args), models_dir=args.cutout_models_dir,
                  allow_download=not args.offline, progress=not args.quiet)
    for note in cut.notes:
        print(f"note: {note}", file=sys.stderr)
    if background is None:
        engine = _load_engine(args, Method.FG_TO_BLEND, store)
    result = replace_background(image, args.prompt or "", engine=engine, background=background, cutout=cut,
                                max_side=args.max_side, **({} if engine is None else dict(
                                    negative_prompt=args.negative, steps=args.steps, cfg=args.cfg,
                                    seed=args.seed, weight=args.weight, stop_at=args.stop_at)))
    for path in result.save(args.out, Path(args.image).stem):
        print(path)
    return 0


def _add_cutout_flags(parser: argparse.ArgumentParser) -> None:
    from .cutout.models import DEFAULT_MODEL, MODEL_CHOICES
    from .cutout.options import CutoutSettings, Refine

    group = parser.add_argument_group("cutout")
    group.add_argument("--cutout-model", metavar="MODEL",
                       help=f"{', '.join(MODEL_CHOICES)}, or local:FILE.onnx for an ONNX file in the cutout "
                            f"models folder (default {DEFAULT_MODEL} when it is downloaded or can be "
                            "downloaded, else weight-free; 'weight-free' needs no download and suits flat or "
                            "smooth backgrounds)")
    group.add_argument("--model-path", help="ONNX file for --cutout-model 'local file' (a BiRefNet, IS-Net or "
                                            "U2-Net export)")
    group.add_argument("--refine", default=Refine.DECONTAMINATE.value,
                       help="edge refinement: " + ", ".join(r.value for r in Refine) + " (default decontaminate)")
    group.add_argument("--edge-band", type=_whole_in(*_bounds(CutoutSettings, "edge_band")), default=10,
                       help="width in pixels of the band solved by matting")
    group.add_argument("--fg-threshold", type=_whole_in(*_bounds(CutoutSettings, "fg_threshold")), default=240, help="alpha (0-255) above which matting "
                                                                     "takes a pixel as sure foreground")
    group.add_argument("--bg-threshold", type=_whole_in(*_bounds(CutoutSettings, "bg_threshold")), default=10, help="alpha (0-255) below which matting "
                                                                    "takes a pixel as sure background")
    group.add_argument("--providers", help="onnxruntime execution providers, comma-separated (default: "
                                           "CUDA or ROCm when available, else CPU)")
    group.add_argument("--cutout-models-dir", help="rembg's model folder (default: U2NET_HOME, Forge's "
                                                   "models/u2net, or the project's models/u2net)")


def _add_cutout(sub, common: argparse.ArgumentParser) -> None:
    from .params import LayerDiffuseParams

    cut = sub.add_parser("cutout", parents=[common], help="cut the subject out of images (files or folders)",
                         description="Cut the subject out of images. Writes straight-alpha PNGs (or masks, "
                                     "or composites with --bg) with the settings in the PNG text.")
    cut.add_argument("inputs", nargs="+", metavar="IN", help="image files and folders of images")
    cut.add_argument("-o", "--out", required=True, help="output folder (or a .png file for one input)")
    cut.add_argument("--bg", help="composite over a colour ('#rrggbb', 'r,g,b', 'white') or an image file")
    cut.add_argument("--mask", action="store_true", help="write the alpha mask instead")
    cut.add_argument("--offline", action="store_true", help="never download models; say what is missing")
    _add_cutout_flags(cut)
    cut.set_defaults(func=cmd_cutout)

    rep = sub.add_parser("replace-bg", parents=[common], help="put the subject of an image on a new background",
                         description="Cut the subject out and put it on a new background: generated around "
                                     "it with the SDXL 'From Foreground to Blending' method (--prompt, "
                                     "--model), or a given image (--background). Opaque subject pixels stay "
                                     "exactly as they were.")
    rep.add_argument("image", metavar="IMAGE")
    rep.add_argument("--prompt", help="what the new scene shows")
    rep.add_argument("--background", help="use this image as the new background (no generation)")
    rep.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0",
                     help="SDXL hub id, diffusers folder or .safetensors checkpoint for generating")
    rep.add_argument("--negative", default="", help="negative prompt")
    rep.add_argument("--steps", type=_at_least_one)
    rep.add_argument("--cfg", type=float)
    rep.add_argument("--seed", type=int)
    rep.add_argument("--weight", type=_number_in(*_bounds(LayerDiffuseParams, "weight")), default=1.0,
                     help="patch strength 0..2")
    rep.add_argument("--stop-at", type=_number_in(*_bounds(LayerDiffuseParams, "stop_at")), default=1.0,
                     help="fraction of the steps run with LayerDiffuse (0..1)")
    rep.add_argument("--max-side", type=_size, default=1024, help="long side of the generated scene (pixels, a "
                                                                   "multiple of 8)")
    _add_device_flags(rep)
    rep.add_argument("--offline", action="store_true", help="never download weights or models")
    rep.add_argument("-o", "--out", default="outputs", help="output folder (default: ./outputs)")
    rep.set_defaults(func=cmd_replace_bg, bg=None)
    _add_cutout_flags(rep)


def cmd_app(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise RuntimeError("the web app needs gradio: pip install -e \".[app]\"")
    from .app import Backend
    from .app.page import serve

    def report(state) -> None:
        told = f"{state.family.label}, {state.source}" if state.ready else state.problem.replace("**", "")
        print(f"Model {state.model}: {told}", file=sys.stderr)

    backend = Backend(args.model, models_dir=args.models_dir, offline=args.offline, device=args.device,
                      dtype=_torch_dtype(args), passes=args.passes, out_dir=args.out,
                      cutout_models_dir=args.cutout_models_dir, providers=_providers(args), on_checked=report,
                      **({"layers_model": args.layers_model} if args.layers_model else {}))
    serve(backend, host=args.host, port=args.port, open_browser=args.open)
    return 0


def _add_app(sub, common: argparse.ArgumentParser) -> None:
    from .app.readiness import DEFAULT_MODEL

    app = sub.add_parser("app", parents=[common], help="start the web app (generate, cut out, replace backgrounds)",
                         description="Start the local web page: generate transparent images with every "
                                     "LayerDiffuse method, cut out images, replace backgrounds. Needs the "
                                     "`app` extra (pip install -e \".[app]\").")
    app.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"hub id, diffusers folder or .safetensors checkpoint, SD1.5 or SDXL (default {DEFAULT_MODEL})")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    app.add_argument("--port", type=int, help="port (default: gradio's, 7860 or the next free one)")
    app.add_argument("--open", action="store_true", help="open the page in the browser")
    app.add_argument("--out", default="outputs", help="folder for the PNG files (default: ./outputs)")
    app.add_argument("--passes", type=int, default=8, choices=(1, 2, 4, 8),
                     help="default transparent decoder passes (8 = the reference's quality)")
    _add_device_flags(app)
    app.add_argument("--offline", action="store_true",
                     help="never download: the model from the Hugging Face cache, weight files and cutout "
                          "models from their folders; the page says what is missing and where it goes")
    app.add_argument("--layers-model", help="the Layers tab's Qwen-Image-Layered: hub id or diffusers folder "
                                            "(default Qwen/Qwen-Image-Layered)")
    app.add_argument("--providers", help="onnxruntime execution providers for the cutout models")
    app.add_argument("--cutout-models-dir", help="rembg's model folder (default: U2NET_HOME, Forge's "
                                                 "models/u2net, or the project's models/u2net)")
    app.set_defaults(func=cmd_app)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: arguments it does not know are reported with its own usage (argparse
    would hand them up and print the top-level usage instead)."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_layerdiffuse",
        description="LayerDiffuse: transparent images from Stable Diffusion. Without a command, "
                    "lists the methods and the state of every weight file.")
    parser.add_argument("--version", action="version", version=__version__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", help="weight folder (default: LAYERDIFFUSE_MODELS_DIR, "
                                             "Forge's models/layer_model, or the project's models/)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    status = sub.add_parser("status", parents=[common], help="methods and weight files (default)",
                            description="List every LayerDiffuse method with the weight files it needs, and "
                                        "the state of each file (missing, partial, present, verified, corrupt) "
                                        "with its URL and the path it goes to. Downloads nothing.")
    status.add_argument("--verify", action="store_true", help="hash present files now")
    status.set_defaults(func=cmd_status)
    download = sub.add_parser("download", parents=[common],
                              help="download and verify weight files (all by default)",
                              description="Download the weight files of the chosen methods, families or names "
                                          "(all by default), resuming partial downloads, and verify each by "
                                          "SHA-256. With --offline nothing is downloaded: present files are "
                                          "verified and each missing one is listed with its URL and target path.")
    download.add_argument("files", nargs="*", help="file names from the catalog")
    download.add_argument("--method", action="append", help="the files a method needs (repeatable)")
    download.add_argument("--family", action="append", choices=[f.value for f in Family],
                          help="every file of a family (repeatable)")
    download.add_argument("--offline", action="store_true",
                          help="download nothing: verify what is there and say what is missing and where it goes")
    download.set_defaults(func=cmd_download)
    convert = sub.add_parser("convert", parents=[common], help="make the Flux VAE files from TransparentVAE.pth",
                             description="LayerDiffuse-Flux publishes its transparent VAE as a pickle "
                                         "(TransparentVAE.pth), which is never loaded as it is. This reads it once "
                                         "without running code from it (torch.load weights_only), checks every key "
                                         "against the networks, and writes the decoder and encoder as safetensors "
                                         "into the weight folder.")
    convert.add_argument("source", nargs="?", help="path of TransparentVAE.pth (default: the weight folder's)")
    convert.add_argument("--download", action="store_true", help="download TransparentVAE.pth first if it is missing")
    convert.set_defaults(func=cmd_convert)
    _add_generate(sub, common)
    _add_decompose(sub, common)
    _add_batch(sub, common)
    _add_cutout(sub, common)
    _add_app(sub, common)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "status")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, WeightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
