"""Condition images of the layer methods: fitting them to the generation size and turning
them into what the UNet consumes (SDXL: clean VAE latents to concatenate; SD1.5: the control
image of the attention-sharing modules)."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..params import ResizeMode
from ..vae.pixels import flatten_over_grey


def _resize_float(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an HxWxC float image: area filtering to shrink, Lanczos to enlarge."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    shrink = width * height < w * h
    resample = Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]), "F")
                           .resize((width, height), resample)) for c in range(img.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def fit_image(rgb: np.ndarray, width: int, height: int,
              mode: Union[ResizeMode, str, int] = ResizeMode.CROP_AND_RESIZE) -> np.ndarray:
    """Fit an HxWx3 float image in [0,1] to `width` x `height`.

    "Just Resize" stretches; "Crop and Resize" scales by the larger ratio and crops the centre;
    "Resize and Fill" scales by the smaller ratio, centres, and fills the rest with the median
    colour of the scaled image's border.
    """
    mode = ResizeMode.parse(mode)
    h, w = rgb.shape[:2]
    if mode is ResizeMode.RESIZE:
        return _resize_float(rgb, width, height)
    ratio = (max if mode is ResizeMode.CROP_AND_RESIZE else min)(width / w, height / h)
    sw, sh = max(1, round(w * ratio)), max(1, round(h * ratio))
    scaled = _resize_float(rgb, sw, sh)
    if mode is ResizeMode.CROP_AND_RESIZE:
        top, left = (sh - height) // 2, (sw - width) // 2
        return scaled[top:top + height, left:left + width]
    border = np.concatenate([scaled[0], scaled[-1], scaled[:, 0], scaled[:, -1]])
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = np.median(border, axis=0)
    top, left = (height - sh) // 2, (width - sw) // 2
    canvas[top:top + sh, left:left + sw] = scaled
    return canvas


def prepare_condition(rgba: np.ndarray, width: int, height: int,
                      mode: Union[ResizeMode, str, int] = ResizeMode.CROP_AND_RESIZE) -> np.ndarray:
    """A condition image (HxWx4 uint8, straight alpha) flattened over 50% grey and fitted to
    the generation size: HxWx3 float32 in [0,1]."""
    return fit_image(flatten_over_grey(rgba), width, height, mode).astype(np.float32)


@torch.no_grad()
def condition_latents(vae, images: Sequence[np.ndarray], width: int, height: int,
                      mode: Union[ResizeMode, str, int] = ResizeMode.CROP_AND_RESIZE) -> torch.Tensor:
    """SDXL concat condition: each image prepared, VAE-encoded (the mean), times the VAE's
    scaling factor: `[len(images), 4, height/8, width/8]` in the VAE's dtype."""
    batch = np.stack([prepare_condition(img, width, height, mode) for img in images])
    p = next(vae.parameters())
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2)).to(p.device, p.dtype) * 2.0 - 1.0
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def control_pixels(rgba: np.ndarray, width: int, height: int,
                   mode: Union[ResizeMode, str, int] = ResizeMode.CROP_AND_RESIZE) -> torch.Tensor:
    """SD1.5 control image for the attention-sharing encoder: `[1, 3, height, width]` fp32 in
    [-1, 1]."""
    rgb = prepare_condition(rgba, width, height, mode)
    return torch.from_numpy(rgb.transpose(2, 0, 1)[None].copy()) * 2.0 - 1.0
