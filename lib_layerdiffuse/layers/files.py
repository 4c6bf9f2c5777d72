"""Writing RGBA layers the way image editors and pipelines take them: one PNG per layer, a
layered PSD (psd-tools, imported here only; full canvas, bottom layer first) and a ZIP of all."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..atomic import write_atomic


def layered_psd(layers: Sequence[tuple[str, Image.Image]], path: Path, hidden: Sequence[str] = ()) -> Path:
    """A PSD with one pixel layer per (name, image), the first at the bottom; layers named in
    `hidden` are switched off."""
    try:
        from psd_tools import PSDImage
        from psd_tools.api.layers import PixelLayer
    except ImportError:
        raise RuntimeError("layered PSD files need psd-tools: pip install psd-tools (or the `batch` extra)") from None
    size = (max(im.width for _, im in layers), max(im.height for _, im in layers))
    psd = PSDImage.new("RGBA", size)
    for name, image in layers:
        layer = PixelLayer.frompil(image.convert("RGBA"), psd, name)
        layer.visible = name not in hidden
        psd.append(layer)
    write_atomic(Path(path), lambda temp: psd.save(str(temp)))
    return Path(path)


def zip_files(paths: Sequence[Path], path: Path) -> Path:
    """A ZIP (stored: PNG and PSD are compressed already) of `paths` under their own names."""
    def write(temp: Path) -> None:
        with zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED) as archive:
            for item in paths:
                archive.write(item, Path(item).name)
    write_atomic(Path(path), write)
    return Path(path)

