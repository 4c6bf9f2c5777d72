"""Background replacement that keeps the subject exactly.

1. Cut the subject out (`cut_out`).
2. Get a new background: given by the user, or generated around the subject with the SDXL
   "From Foreground to Blending" method (the cutout is its foreground condition, so the scene's
   light and perspective fit the subject). The generation runs at the image's aspect, scaled
   so its long side is `max_side` (rounded to multiples of 64), and is resized back.
3. Composite: `alpha * F + (1 - alpha) * new`, where F is the estimated foreground colour at
   soft edges and the original pixel wherever alpha is 1, so every fully opaque subject pixel is
   the input's own, bit for bit, and the edge blends softly into the new scene.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from ..images import save_png, to_rgba_uint8
from ..methods import Method
from ..params import ResizeMode
from .options import CutoutSettings, Refine
from .result import CutoutResult, fit_cover
from .run import cut_out

GENERATION_MULTIPLE = 64


@dataclass
class Replacement:
    image: Image.Image  # the final RGB composite at the input's size
    cutout: CutoutResult
    background: Image.Image  # the new background at the input's size
    generated: list[Image.Image] = field(default_factory=list)  # FG_TO_BLEND outputs, when generated
    infotext: str = ""  # how the background was made (generation parameters) and the cutout settings

    def save(self, folder: Union[str, os.PathLike], stem: str) -> list[Path]:
        """Write `<stem>-replaced.png` (the composite, with the generation's parameters) and
        `<stem>-cutout.png` (the straight-alpha cutout), both with the cutout settings."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{stem}-replaced.png", folder / f"{stem}-cutout.png"]
        settings = self.cutout.infotext()
        save_png(self.image, paths[0], self.infotext, settings)
        save_png(Image.fromarray(self.cutout.rgba(), "RGBA"), paths[1], settings=settings)
        return paths


def generation_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The image's aspect with the long side `max_side`, both rounded to multiples of 64."""
    scale = max_side / max(width, height)
    return tuple(max(GENERATION_MULTIPLE, int(round(v * scale / GENERATION_MULTIPLE)) * GENERATION_MULTIPLE)
                 for v in (width, height))  # type: ignore[return-value]


def replace_background(image: Any, prompt: str = "", *, engine=None, background: Any = None,
                       settings: Optional[CutoutSettings] = None, max_side: int = 1024,
                       cutout: Optional[CutoutResult] = None, **generate_kwargs: Any) -> Replacement:
    """Put the subject of `image` on a new background.

    With `background` (an image), no model is needed besides the cutout's. Otherwise `engine`
    (a `LayerDiffuse` on an SDXL pipeline) generates the scene from `prompt`;
    `generate_kwargs` go to `engine.generate` (seed, steps, cfg, negative_prompt, weight, ...).
    A ready `cutout` can be passed to skip step 1.
    """
    rgba = to_rgba_uint8(image, "image")
    if rgba is None:
        raise ValueError("image: no image was given")
    if cutout is None:
        settings = settings or CutoutSettings(refine=Refine.DECONTAMINATE)
        cutout = cut_out(rgba, settings)
    h, w = cutout.alpha.shape
    generated: list[Image.Image] = []
    if background is not None:
        given = to_rgba_uint8(background, "background")
        backdrop = fit_cover(given, w, h, cutout.settings.rgb)
        infotext = (f"Background: given image {given.shape[1]}x{given.shape[0]} scaled to cover {w}x{h}, "
                    f"{cutout.parameters()}")
    elif engine is not None:
        if not prompt.strip():
            raise ValueError("a prompt is needed to generate the new background")
        gw, gh = generation_size(w, h, max_side)
        result = engine.generate(prompt, Method.FG_TO_BLEND, fg=cutout.rgba(), width=gw, height=gh,
                                 resize_mode=ResizeMode.RESIZE, **generate_kwargs)
        generated = result.rgba
        infotext = f"{result.infotext}, {cutout.parameters()}"  # one parameters line, as the WebUI reads it
        backdrop = np.asarray(generated[0].convert("RGB").resize((w, h), Image.LANCZOS))
    else:
        raise ValueError("give a background image, or an engine (an SDXL LayerDiffuse) and a prompt to "
                         "generate one")
    colour = cutout.colour.copy()
    opaque = cutout.mask() == 255
    colour[opaque] = cutout.image[opaque]
    composite = dataclasses.replace(cutout, colour=colour).over(backdrop)
    composite[opaque] = cutout.image[opaque]
    return Replacement(image=Image.fromarray(composite, "RGB"), cutout=cutout,
                       background=Image.fromarray(backdrop, "RGB"), generated=generated, infotext=infotext)
