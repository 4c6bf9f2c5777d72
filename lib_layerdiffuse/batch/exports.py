"""What a batch run's outputs become for the people who use them: a sprite sheet (one PNG and a
frame map in TexturePacker's "JSON hash" format, which game engines and Phaser/Pixi read) and,
for the layer methods, a layered PSD per item (psd-tools, imported here only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from ..atomic import write_atomic
from ..layers.files import layered_psd
from .manifest import Manifest

FRAME_ORDER = ("bg", "blend", "fg")  # bottom to top in a PSD: the background under the subject
HIDDEN = ("blend",)  # the blended image is a reference: in the PSD, switched off


def pack(sizes: Sequence[tuple[int, int]], padding: int, max_width: int) -> tuple[list[tuple[int, int]], int, int]:
    """Shelf packing: positions (x, y) for boxes of `sizes`, tallest first, rows at most
    `max_width` wide; returns (positions in the given order, sheet width, sheet height)."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][1], -sizes[i][0]))
    positions: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    x = y = shelf = width = 0
    for i in order:
        w, h = sizes[i]
        if x and x + w > max_width:
            x, y, shelf = 0, y + shelf + padding, 0
        positions[i] = (x, y)
        x += w + padding
        shelf = max(shelf, h)
        width = max(width, x - padding)
    return positions, width, y + shelf


def sprite_sheet(frames: Iterable[tuple[str, Image.Image]], image_name: str, padding: int = 2,
                 max_width: int = 4096) -> tuple[Image.Image, dict]:
    """(sheet, frame map) of named RGBA images; the map is TexturePacker's JSON hash."""
    frames = list(frames)
    if not frames:
        raise ValueError("a sprite sheet needs at least one transparent image")
    widest = max(im.width for _, im in frames)
    positions, width, height = pack([im.size for _, im in frames], padding, max(max_width, widest))
    sheet = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    mapping = {}
    for (name, image), (x, y) in zip(frames, positions):
        sheet.paste(image.convert("RGBA"), (x, y))
        w, h = image.size
        mapping[name] = {"frame": {"x": x, "y": y, "w": w, "h": h}, "rotated": False, "trimmed": False,
                         "spriteSourceSize": {"x": 0, "y": 0, "w": w, "h": h}, "sourceSize": {"w": w, "h": h}}
    meta = {"app": "lib_layerdiffuse", "image": image_name, "format": "RGBA8888",
            "size": {"w": width, "h": height}, "scale": "1"}
    return sheet, {"frames": mapping, "meta": meta}


def export_sprite_sheet(folder: "str | Path", name: str = "sprites", padding: int = 2) -> tuple[Path, Path]:
    """Every transparent image the manifest of `folder` lists, packed into NAME.png + NAME.json."""
    folder = Path(folder)
    manifest = Manifest(folder)
    frames = []
    for _key, record in manifest.records.items():
        if record.get("status") != "done":
            continue
        for entry in record["files"]:
            if entry.get("transparent"):
                with Image.open(folder / entry["name"]) as image:
                    frames.append((entry["name"], image.convert("RGBA")))
    sheet, mapping = sprite_sheet(frames, f"{name}.png", padding)
    png, frame_map = folder / f"{name}.png", folder / f"{name}.json"
    write_atomic(png, lambda temp: sheet.save(temp, format="PNG"))
    write_atomic(frame_map, lambda temp: temp.write_text(json.dumps(mapping, indent=1)))
    return png, frame_map


def export_psds(folder: "str | Path") -> list[Path]:
    """One layered PSD per item of a layer method (several frames per image set), layers named
    by frame: background, then blended (hidden reference), then foreground on top."""
    folder = Path(folder)
    written = []
    for key, record in Manifest(folder).records.items():
        frames = {e["frame"]: e for e in record.get("files", [])}
        if record.get("status") != "done" or len(frames) < 2 or record.get("kind") == "decompose":  # has its own
            continue
        layers = []
        for frame in FRAME_ORDER:
            if frame in frames:
                with Image.open(folder / frames[frame]["name"]) as image:
                    layers.append((frame, image.convert("RGBA")))
        written.append(layered_psd(layers, folder / f"{key}.psd", hidden=HIDDEN))
    return written
