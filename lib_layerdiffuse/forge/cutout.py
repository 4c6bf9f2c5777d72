"""The "Cutout (rembg fallback)" of the Forge panel: cut out every image that is not already
transparent (another checkpoint, LayerDiffuse off, an opaque method); an image with alpha of
its own (a native-RGBA model such as Qwen-Image-2.1 in Forge Neo) is kept as it is.

Results are shown and saved like the transparent outputs: the cutout becomes the main image
(its pixels kept through Forge's stealth-infotext step), a checkerboard preview follows as an
extra image, the settings and the model that ran go into the infotext.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..cutout.options import CutoutSettings
from ..images import has_real_alpha
from ..params import LayerDiffuseParams
from ..settings import name_key
from .job import Job
from .saving import add_preview, show_transparent


def split_script_args(args: tuple) -> tuple[tuple, tuple]:
    """(LayerDiffuse values, cutout values) from the script's arguments.

    Positional: the LayerDiffuse fields first, the cutout fields after them. Named (a dict as
    the first value): each key goes to the group that knows it, LayerDiffuse first (so
    "enabled" is LayerDiffuse's and "cutout" switches the cutout on); a dict with only cutout
    keys leaves LayerDiffuse off.
    """
    if args and isinstance(args[0], Mapping):
        cutout_names = CutoutSettings.name_table()
        layer_names = LayerDiffuseParams.name_table()
        layer, cut = {}, {}
        for key, value in args[0].items():
            known = name_key(key) if isinstance(key, str) else None
            (cut if known in cutout_names and known not in layer_names else layer)[key] = value
        return ((layer,) if layer else (False,)), ((cut,) if cut else ())
    count = len(LayerDiffuseParams.field_names())
    return tuple(args[:count]), tuple(args[count:])


def looks_enabled(args: tuple) -> bool:
    if not args:
        return False
    first = args[0]
    return isinstance(first, Mapping) or first is True or str(first).strip().casefold() in ("true", "1")


def start_cutout(p: Any, job: Job, args: tuple) -> None:
    """Parse the cutout settings and write them into the infotext."""
    try:
        job.cutout = CutoutSettings.from_values(*args)
    except (TypeError, ValueError) as exc:
        if looks_enabled(args):
            job.fail_cutout(p, f"invalid cutout settings: {exc}")
        return
    if job.cutout.enabled:
        p.extra_generation_params.update(job.cutout.to_infotext())


def cut_out_image(p: Any, pp: Any, job: Job) -> None:
    """Replace `pp.image` by its cutout. An image the backend cannot cut out (no subject, a
    busy background for the weight-free model) is kept as it is, with a note; a backend that
    cannot run at all (rembg missing, a model that will not load) stops the cutout for the job."""
    from ..cutout import CutoutError, cut_out
    from ..cutout.rembg_backend import CutoutModelError, CutoutUnavailable

    if has_real_alpha(pp.image):  # a native-RGBA model (Qwen-Image-2.1 in Forge Neo) made it transparent
        job.note(p, f"image {p.batch_index + 1} already has transparency of its own; it was not cut out")
        return
    try:
        result = cut_out(np.asarray(pp.image.convert("RGB")), job.cutout)
    except CutoutError as exc:
        job.note(p, f"image {p.batch_index + 1} was not cut out: {exc}")
        return
    except (CutoutUnavailable, CutoutModelError, ValueError) as exc:
        job.fail_cutout(p, str(exc))
        return
    for note in result.notes:
        job.note(p, note)
    out = result.render()
    if out.mode == "RGBA":
        pp.image = show_transparent(p, out, p.batch_index)
        add_preview(p, np.asarray(out), p.batch_index)
    else:
        pp.image = out.convert("RGB")
    p.extra_generation_params.update(result.infotext())
