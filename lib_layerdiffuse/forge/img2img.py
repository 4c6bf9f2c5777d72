"""Transparent img2img on current Forge: an RGBA init image is encoded with its transparency.

Forge calls `before_process_init_images` just before it VAE-encodes the init images. The init
images are flattened over 50% grey here (the transparent latent space has grey where the
image is transparent; Forge's own flattening would use white), and the VAE gets a regulation
that returns `mean + std * 300 * offset`, the offset coming from the method's offset encoder
for the same image fitted the same way Forge fits it.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ..vae.frontends import OFFSET_SCALE, encoder_for
from ..vae.pixels import flatten_over_grey, to_uint8
from .job import Job
from .unet_files import weight_store


def has_transparency(image: Image.Image) -> bool:
    if image.mode not in ("RGBA", "LA", "PA") and not (image.mode == "P" and "transparency" in image.info):
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def _fitted(p: Any, image: Image.Image, crop_region: Optional[tuple]) -> np.ndarray:
    """The RGBA init image fitted to the generation size as Forge fits the flattened one."""
    from modules import images  # Forge

    rgba = image.convert("RGBA")
    if crop_region is not None:
        rgba = images.resize_image(2, rgba.crop(crop_region), p.width, p.height, force_RGBA=True)
    else:
        rgba = images.resize_image(p.resize_mode if p.resize_mode != 3 else 0, rgba, p.width, p.height,
                                   force_RGBA=True)
    return np.asarray(rgba.convert("RGBA"))


@torch.no_grad()
def prepare_transparent_init(p: Any, job: Job, crop_region: Optional[tuple]) -> bool:
    """Set up the transparent encode; returns False when there is nothing to do."""
    spec = job.params.method.spec
    inits = list(getattr(p, "init_images", None) or [])
    if not spec.transparent or not inits or not any(has_transparency(img) for img in inits):
        return False  # opaque methods keep Forge's own flattening
    if not spec.encoder_file:
        job.note(p, f"{job.params.method.value} has no transparent encoder; the init image's "
                    "transparency was flattened over grey")
        p.init_images = [_over_grey(img) for img in inits]
        return False
    host = job.host
    if not host.supports_transparent_img2img:
        job.note(p, f"transparent img2img needs current Forge; on {host.label} the init image's "
                    "transparency was flattened over grey")
        p.init_images = [_over_grey(img) for img in inits]
        return False
    fitted = [_fitted(p, img, crop_region) for img in inits]
    encoder = encoder_for(job.family, weight_store(), host.torch_device(), torch.float32)
    offset = encoder.offset(fitted) * OFFSET_SCALE
    p.init_images = [_over_grey(img) for img in inits]

    def regulation(posterior):
        mean, std = posterior.mean, posterior.std
        o = offset.to(mean.device, torch.float32)
        if o.shape[0] != mean.shape[0]:
            o = o[:1].expand(mean.shape[0], -1, -1, -1)
        return (mean.float() + std.float() * o).to(mean.dtype)

    host.set_vae_regulation(p, regulation)
    return True


def _over_grey(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"))
    return Image.fromarray(to_uint8(flatten_over_grey(rgba)), "RGB")
