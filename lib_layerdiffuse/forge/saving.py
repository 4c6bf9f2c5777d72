"""Keeping the alpha channel of LayerDiffuse outputs when Forge saves and returns them.

Current Forge writes "stealth infotext" into every saved PNG (setting `stealth_pnginfo_option`,
"Alpha" by default) before its `before_image_saved` callbacks run, on the very image object
that also goes into the results and the grid:
- "Alpha" sets the alpha to 255 and hides the parameters in its lowest bits;
- "RGB" hides them in the lowest bits of R, G and B, and raises on an RGBA image (its writer
  unpacks three values per pixel).
So the image LayerDiffuse hands Forge carries its alpha on the side (`keep_alpha`): an RGBA
image, or in "RGB" mode the RGB image, which the writer can mark. Our `before_image_saved`
callback then puts the alpha in with `putalpha`, which changes the same object in place (an RGB
image becomes RGBA): the file, the API response and the gallery all get the real alpha, and in
"RGB" mode also the hidden parameters. Images that are not saved get their alpha when the job
ends (`finish_outputs`). The parameters stay in the PNG's text chunk whenever Forge writes it.

Grids: Forge builds them from the results (current Forge as RGBA, then stealth-writes over it;
early Forge as RGB; the X/Y/Z plot draws labels around them in RGB), so when a grid holds
LayerDiffuse images the same grid is composed with alpha when Forge asks for it
(`remember_grid`, the `image_grid` callback) and its alpha is put into Forge's grid object
when that is saved or returned, found by its colours. JPEG and WebP have no alpha at all:
then LayerDiffuse also saves a PNG copy with the suffix "-transparent", of each image and of
each grid (Forge Neo saves grids as JPEG by default), unless Settings -> LayerDiffuse says not to.
Previews (the result over a checkerboard, a colour or nothing) follow the same settings page.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
from PIL import Image

from ..previews import preview
from . import settings_page

KEEP_ATTRIBUTE = "layerdiffuse_alpha"
EXTRAS_ATTRIBUTE = "layerdiffuse_extras"  # an Extras result (`extras.py`), which gets a PNG copy here
SUFFIX = "-transparent"
PREVIEW_SUFFIX = "-preview"
STEALTH_OPTION = "stealth_pnginfo_option"


def keep_alpha(image: Image.Image, alpha: Image.Image) -> Image.Image:
    """Mark `image` (RGB or RGBA) as a LayerDiffuse output whose alpha is `alpha` (mode L)."""
    setattr(image, KEEP_ATTRIBUTE, alpha)
    return image


def kept_alpha(image: Any) -> Optional[Image.Image]:
    alpha = getattr(image, KEEP_ATTRIBUTE, None)
    return alpha if alpha is not None and alpha.size == getattr(image, "size", None) else None


def put_kept_alpha(image: Image.Image) -> bool:
    """Give a marked image its alpha, in place; False for images that are not ours."""
    alpha = kept_alpha(image)
    if alpha is None:
        return False
    image.putalpha(alpha)
    return True


def restore_alpha(params: Any) -> None:
    """`script_callbacks.on_before_image_saved` callback: our images get their alpha back after
    the stealth-infotext writer, grids of our images theirs; a grid about to be saved in a
    format without alpha also gets a transparent PNG copy."""
    image = getattr(params, "image", None)
    if image is None:
        return
    extension = str(getattr(params, "filename", "")).rsplit(".", 1)[-1]
    if put_kept_alpha(image):
        if getattr(image, EXTRAS_ATTRIBUTE, False) and wants_png_copy(extension):
            save_png_beside(params, grid=False)  # Extras saves no copy of its own
        return
    if _restore_grid(image) and wants_png_copy(extension):
        save_png_beside(params, grid=True)


def finish_outputs(images: Iterable[Any]) -> None:
    """At the end of a job: the results that were not saved get their alpha too (and grids)."""
    for image in images:
        if isinstance(image, Image.Image) and not put_kept_alpha(image):
            _restore_grid(image)
    _grids.clear()


# ---- grids --------------------------------------------------------------------------------

@dataclass
class _Grid:
    """A grid composed with alpha, as Forge composes it from the same images."""

    rgb: np.ndarray  # (H, W, 3)
    alpha: Image.Image
    cols: int
    rows: int
    cell: tuple[int, int]
    covered: np.ndarray  # (H, W) where an image lies (the gaps' colour differs between Forges)

    def alpha_for(self, rgb: np.ndarray) -> Optional[Image.Image]:
        """The alpha for Forge's grid with colours `rgb` (H, W, 3) when it shows these cells:
        as composed, or as the X/Y/Z plot draws it (`draw_grid_annotations`: labels left, a
        quarter cell wider than nothing, and on top; margins between the cells); None if not."""
        found = self._layout(rgb)
        if found is None:
            return None
        left, top, margin = found
        w, h = self.cell
        alpha = Image.new("L", (rgb.shape[1], rgb.shape[0]), 255)  # labels and margins stay opaque
        for row in range(self.rows):
            for col in range(self.cols):
                alpha.paste(self.alpha.crop((col * w, row * h, (col + 1) * w, (row + 1) * h)),
                            (left + (w + margin) * col, top + (h + margin) * row))
        return alpha

    def _layout(self, rgb: np.ndarray) -> Optional[tuple[int, int, int]]:
        height, width = rgb.shape[:2]
        w, h = self.cell
        spare_w, spare_h = width - self.cols * w, height - self.rows * h
        if spare_w < 0 or spare_h < 0:
            return None
        for left in sorted({0, w * 3 // 4}):
            room = spare_w - left
            if room < 0 or (self.cols == 1 and room) or (self.cols > 1 and room % (self.cols - 1)):
                continue
            margins = [room // (self.cols - 1)] if self.cols > 1 else \
                range(spare_h // (self.rows - 1) + 1) if self.rows > 1 else [0]
            for margin in margins:
                top = spare_h - margin * (self.rows - 1)
                if top >= 0 and self._cells_match(rgb, left, top, margin):
                    return left, top, margin
        return None

    def _cells_match(self, rgb: np.ndarray, left: int, top: int, margin: int) -> bool:
        w, h = self.cell
        for row in range(self.rows):
            for col in range(self.cols):
                x, y = left + (w + margin) * col, top + (h + margin) * row
                cell = np.s_[row * h:(row + 1) * h, col * w:(col + 1) * w]
                covered = self.covered[cell]
                if not np.array_equal(rgb[y:y + h, x:x + w][covered], self.rgb[cell][covered]):
                    return False
        return True


# grids composed for the running job's results: one per job, the X/Y/Z plot one per Z value
# and one of those (the grids are kept until the next job ends)
_grids: "deque[_Grid]" = deque(maxlen=8)


def remember_grid(params: Any) -> None:
    """`script_callbacks.on_image_grid` callback (called with the images, columns and rows
    right before Forge composes a grid): when any image is ours, or a grid of ours (the X/Y/Z
    plot's sub-grids, which Forge saves only later), compose the same grid with alpha, in
    Forge's layout (cells of the largest size, smaller images centred), gaps transparent."""
    images = list(getattr(params, "imgs", None) or [])
    for image in images:
        if kept_alpha(image) is None:
            _restore_grid(image)
    if not any(kept_alpha(i) is not None for i in images):
        return
    cols, rows = int(params.cols), int(params.rows)
    w, h = (max(sizes) for sizes in zip(*(i.size for i in images)))
    grid = Image.new("RGBA", (cols * w, rows * h), (0, 0, 0, 0))
    covered = np.zeros((rows * h, cols * w), bool)
    for index, image in enumerate(images):
        cell = image.convert("RGBA")
        alpha = kept_alpha(image)
        if alpha is not None:
            cell.putalpha(alpha)
        x, y = index % cols * w + (w - image.width) // 2, index // cols * h + (h - image.height) // 2
        grid.paste(cell, (x, y))
        covered[y:y + image.height, x:x + image.width] = True
    _grids.append(_Grid(np.asarray(grid)[..., :3].copy(), grid.getchannel("A"), cols, rows, (w, h), covered))


def _restore_grid(image: Any) -> bool:
    """Put the alpha of a remembered grid into Forge's grid object (in place, marked as ours)
    when it shows that grid's cells."""
    if not isinstance(image, Image.Image) or image.mode not in ("RGB", "RGBA") or not _grids:
        return False
    rgb = np.asarray(image.convert("RGB"))
    for grid in reversed(_grids):
        alpha = grid.alpha_for(rgb)
        if alpha is not None:
            image.putalpha(alpha)
            keep_alpha(image, alpha)
            return True
    return False


# ---- settings -----------------------------------------------------------------------------

def _setting(opts: Any, name: str, default: Any) -> Any:
    data = getattr(opts, "data", None)
    if isinstance(data, dict) and name in data:
        return data[name]
    return getattr(opts, name, default)


def image_format(opts: Any) -> str:
    return str(_setting(opts, "samples_format", "png")).lower().lstrip(".")


def stealth_mode(opts: Any) -> Optional[str]:
    """The stealth-infotext mode Forge will write into saved PNGs ("Alpha", "RGB"), or None
    (off, PNG info off, or a Forge without stealth infotext)."""
    mode = _setting(opts, STEALTH_OPTION, None)
    if mode in (None, "None", "") or not _setting(opts, "enable_pnginfo", True):
        return None
    return str(mode)


def alpha_notes(opts: Any) -> list[str]:
    """What the host's settings would do to transparent outputs, for the panel."""
    notes = []
    fmt = image_format(opts)
    if fmt != "png":
        notes.append(f"Images are saved as {fmt.upper()}, which has no alpha channel: LayerDiffuse "
                     f"also saves each transparent result as a PNG ending in '{SUFFIX}'.")
    if stealth_mode(opts) == "Alpha":
        notes.append("'Stealth infotext' is set to 'Alpha': Forge would overwrite the alpha of saved PNGs; "
                     "LayerDiffuse restores it in its own outputs (the parameters stay in the PNG text).")
    return notes


# ---- outputs ------------------------------------------------------------------------------

def alpha_carrier(image: Image.Image, alpha: Image.Image) -> Image.Image:
    """A new object for Forge to save or return, marked with `alpha`: RGB while Forge's stealth
    writer works in "RGB" mode (which cannot take RGBA), else an RGBA copy."""
    from modules import shared  # Forge

    carrier = image.convert("RGB") if stealth_mode(shared.opts) == "RGB" else image.convert("RGBA")
    return keep_alpha(carrier, alpha)


def wants_png_copy(extension: str) -> bool:
    """Whether a transparent image saved with `extension` also gets a PNG copy: the format has
    no alpha here and the setting is on."""
    return extension.lower().lstrip(".") != "png" and bool(settings_page.value(settings_page.TRANSPARENT_COPY))


def show_transparent(p: Any, image: Image.Image, index: int) -> Image.Image:
    """The object to make Forge's result for an RGBA image, marked with its alpha. When Forge
    saves JPEG or WebP, a PNG copy is saved too (unless switched off in the settings)."""
    from modules import shared  # Forge

    alpha = image.getchannel("A")
    result = alpha_carrier(image, alpha)
    if wants_png_copy(image_format(shared.opts)) and p.save_samples():
        save_beside(p, alpha_carrier(image, alpha), index, SUFFIX, "png")
    return result


def add_preview(p: Any, rgba: np.ndarray, index: int) -> None:
    """The preview of a transparent result as an extra image, in the style the settings ask for
    (none: no preview); saved too when the settings say so."""
    style, colour = settings_page.preview_style()
    shown = preview(rgba, style, colour)
    if shown is None:
        return
    image = Image.fromarray(shown, "RGB")
    p.extra_result_images.append(image)
    if settings_page.value(settings_page.SAVE_PREVIEW) and p.save_samples():
        from modules import shared  # Forge

        save_beside(p, image, index, PREVIEW_SUFFIX, image_format(shared.opts))


def save_beside(p: Any, image: Image.Image, index: int, suffix: str, extension: str) -> Optional[str]:
    """Save `image` next to Forge's own output of image `index`, with `suffix` and the same
    parameters; returns its path."""
    from modules import images, processing  # Forge, present when this runs

    try:
        info = processing.create_infotext(p, p.prompts, p.seeds, p.subseeds, index=index,
                                          all_negative_prompts=p.negative_prompts)
    except Exception:
        info = None
    path, _ = images.save_image(image, p.outpath_samples, "", p.seeds[index], p.prompts[index], extension,
                                info=info, p=p, suffix=suffix)
    return path


def save_png_beside(params: Any, grid: bool) -> Optional[str]:
    """Save a transparent PNG of the image Forge is saving as JPEG/WebP (`params`, the
    `before_image_saved` arguments, its alpha put in: a grid, or an Extras result) beside it with
    the suffix "-transparent" and the same parameters; returns its path."""
    from modules import images  # Forge, present when this runs

    folder, name = os.path.split(str(params.filename))
    copy = alpha_carrier(params.image, kept_alpha(params.image))
    pnginfo = getattr(params, "pnginfo", None) or {}
    section = next((k for k in ("parameters", "postprocessing", "extras") if pnginfo.get(k)), "parameters")
    path, _ = images.save_image(copy, folder, "", extension="png", info=pnginfo.get(section),
                                p=getattr(params, "p", None), forced_filename=os.path.splitext(name)[0] + SUFFIX,
                                grid=grid, pnginfo_section_name=section)
    return path
