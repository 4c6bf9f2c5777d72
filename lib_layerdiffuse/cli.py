"""Command line: `python -m lib_layerdiffuse [status|download] ...`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__
from .methods import Family, Method
from .weights import CATALOG, State, WeightError, WeightStore


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def cmd_status(args: argparse.Namespace) -> int:
    store = WeightStore(args.models_dir, progress=not args.quiet)
    statuses = {s.entry.name: s for s in store.statuses(verify=args.verify)}
    out = sys.stdout
    out.write(f"LayerDiffuse {__version__}\n")
    out.write(f"Weight folder: {store.folder}\n  (chosen by: {store.location.source})\n\n")
    out.write("Methods (family, files needed, ready?):\n")
    for m in Method:
        not_ready = [f for f in m.weight_files if statuses[f].state is not State.VERIFIED]
        ready = "ready" if not not_ready else f"needs {len(not_ready)} of {len(m.weight_files)} files"
        out.write(f"  {m.name:<18} {m.value}\n  {'':<18} {m.family.label}; {', '.join(m.weight_files)}; {ready}\n")
    out.write("\nWeight files:\n")
    for s in statuses.values():
        out.write(f"  {s.state.value:<26} {_size(s.entry.approx_size):>8}  {s.entry.family.label:<5} {s.entry.name}\n")
        if s.detail:
            out.write(f"  {'':<26} {'':>8}  {'':<5} {s.detail}\n")
        if s.state is not State.VERIFIED:
            out.write(f"  {'':<26} {'':>8}  {'':<5} from {s.entry.url}\n")
            out.write(f"  {'':<26} {'':>8}  {'':<5} to   {s.path}\n")
    if not args.verify and any(s.state is State.PRESENT for s in statuses.values()):
        out.write("\nFiles marked 'present' are checked against their SHA-256 on first use "
                  "(or now with --verify).\n")
    corrupt = [s for s in statuses.values() if s.state is State.CORRUPT]
    return 1 if corrupt else 0


def _selected_files(args: argparse.Namespace) -> list[str]:
    names: list[str] = []
    for text in args.method or []:
        names.extend(Method.parse(text).weight_files)
    for fam in args.family or []:
        names.extend(n for n, e in CATALOG.items() if e.family is Family(fam))
    names.extend(args.files or [])
    return list(dict.fromkeys(names)) or list(CATALOG)


def cmd_download(args: argparse.Namespace) -> int:
    store = WeightStore(args.models_dir, progress=not args.quiet)
    failed = 0
    for name in _selected_files(args):
        try:
            path = store.ensure(name)
            print(f"ok        {path}")
        except WeightError as exc:
            failed += 1
            print(f"FAILED    {name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


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
    sub = parser.add_subparsers(dest="command")
    status = sub.add_parser("status", parents=[common], help="methods and weight files (default)")
    status.add_argument("--verify", action="store_true", help="hash present files now")
    status.set_defaults(func=cmd_status)
    download = sub.add_parser("download", parents=[common],
                              help="download and verify weight files (all by default)")
    download.add_argument("files", nargs="*", help="file names from the catalog")
    download.add_argument("--method", action="append", help="the files a method needs (repeatable)")
    download.add_argument("--family", action="append", choices=[f.value for f in Family],
                          help="every file of a family (repeatable)")
    download.set_defaults(func=cmd_download)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "status")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, WeightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
