"""Batch cutouts of files and folders (the `cutout` command), with a progress bar.

Each file is read upright (EXIF orientation), cut out and written as PNG with the settings
in its text chunks (the WebUI's "parameters" line, as the app writes it, and JSON). A file that fails is reported and the batch goes on; nothing is written
for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from ..images import read_image_file, save_png
from .options import CutoutSettings
from .run import cut_out

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def image_files(inputs: Iterable[Union[str, os.PathLike]]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.casefold() in IMAGE_SUFFIXES))
        elif path.exists():
            out.append(path)
        else:
            raise ValueError(f"input {str(path)!r} does not exist")
    return out


def output_path(source: Path, out: Path, single: bool) -> Path:
    """`out` itself when one file goes to a name ending in .png, else `out/<stem>.png`."""
    if single and out.suffix.casefold() == ".png":
        return out
    return out / f"{source.stem}.png"


@dataclass
class BatchReport:
    written: list[Path]
    failed: list[tuple[Path, str]]


def cut_out_files(inputs: Sequence[Union[str, os.PathLike]], out: Union[str, os.PathLike],
                  settings: CutoutSettings, *, progress: bool = True,
                  report: Optional[Callable[[str], None]] = None, **cut_kwargs) -> BatchReport:
    """Cut out every image of `inputs` into `out`; `cut_kwargs` go to `cut_out`."""
    from tqdm.auto import tqdm

    files = image_files(inputs)
    if not files:
        raise ValueError("no image files found in the inputs")
    out = Path(out).expanduser()
    single = len(files) == 1
    result = BatchReport([], [])
    seen_notes: set[str] = set()
    for source in tqdm(files, desc="cutting out", unit="image", disable=not progress or single):
        target = output_path(source, out, single)
        try:
            cut = cut_out(read_image_file(source, "input"), settings, progress=progress, **cut_kwargs)
            target.parent.mkdir(parents=True, exist_ok=True)
            save_png(cut.render(), target, cut.parameters(), cut.infotext())
        except (ValueError, RuntimeError, OSError) as exc:
            result.failed.append((source, str(exc)))
            if report is not None:
                report(f"FAILED {source}: {exc}")
            continue
        for note in cut.notes:
            if report is not None and note not in seen_notes:
                report(f"note: {note}")
            seen_notes.add(note)
        result.written.append(target)
    return result
