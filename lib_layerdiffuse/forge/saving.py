"""Keeping the alpha channel of LayerDiffuse outputs when Forge saves and returns them.

Current Forge writes "stealth infotext" into every saved PNG by default (setting
`stealth_pnginfo_option`, "Alpha"): it sets the alpha of the very image object that also goes
into the results to 255 and hides the parameters in its lowest bits, so both the file and the
API response lose the transparency. Its `before_image_saved` callback runs right after that
step; ours puts the pixels back (in place, so the results and the grid keep them too). The
parameters stay in the PNG's text chunk. JPEG and WebP have no alpha at all: then LayerDiffuse
also saves a PNG copy with the suffix "-transparent".
"""

from __future__ import annotations

from typing import Any, Optional

from PIL import Image

KEEP_ATTRIBUTE = "layerdiffuse_pixels"
SUFFIX = "-transparent"


def keep_pixels(image: Image.Image) -> Image.Image:
    """Mark an RGBA output so its pixels survive Forge's save step."""
    setattr(image, KEEP_ATTRIBUTE, image.copy())
    return image


def restore_pixels(params: Any) -> None:
    """`script_callbacks.on_before_image_saved` callback: undo what the stealth-infotext
    writer did to a marked image."""
    image = getattr(params, "image", None)
    kept: Optional[Image.Image] = getattr(image, KEEP_ATTRIBUTE, None)
    if kept is None or kept.size != image.size:
        return
    if image.mode == kept.mode:
        image.paste(kept)
    else:
        params.image = keep_pixels(kept.copy())


def _setting(opts: Any, name: str, default: Any) -> Any:
    data = getattr(opts, "data", None)
    if isinstance(data, dict) and name in data:
        return data[name]
    return getattr(opts, name, default)


def image_format(opts: Any) -> str:
    return str(_setting(opts, "samples_format", "png")).lower().lstrip(".")


def alpha_notes(opts: Any) -> list[str]:
    """What the host's settings would do to transparent outputs, for the panel."""
    notes = []
    fmt = image_format(opts)
    if fmt != "png":
        notes.append(f"Images are saved as {fmt.upper()}, which has no alpha channel: LayerDiffuse "
                     f"also saves each transparent result as a PNG ending in '{SUFFIX}'.")
    stealth = _setting(opts, "stealth_pnginfo_option", None)
    if stealth not in (None, "None", "") and _setting(opts, "enable_pnginfo", True):
        notes.append(f"'Stealth infotext' is set to '{stealth}': Forge would overwrite the alpha of saved "
                     "PNGs; LayerDiffuse restores it in its own outputs (the parameters stay in the PNG text).")
    return notes


def show_transparent(p: Any, image: Image.Image, index: int) -> Image.Image:
    """Make an RGBA result the image Forge saves and returns: its pixels are kept through the
    stealth-infotext step and, when Forge saves JPEG or WebP, a PNG copy is saved too."""
    from modules import shared  # Forge

    keep_pixels(image)
    if image_format(shared.opts) != "png" and p.save_samples():
        save_png_copy(p, image, index)
    return image


def save_png_copy(p: Any, image: Image.Image, index: int) -> Optional[str]:
    """Save a transparent PNG next to Forge's own (JPEG/WebP) output; returns its path."""
    from modules import images, processing  # Forge, present when this runs

    try:
        info = processing.create_infotext(p, p.prompts, p.seeds, p.subseeds, index=index,
                                          all_negative_prompts=p.negative_prompts)
    except Exception:
        info = None
    path, _ = images.save_image(image, p.outpath_samples, "", p.seeds[index], p.prompts[index], "png",
                                info=info, p=p, suffix=SUFFIX)
    return path
