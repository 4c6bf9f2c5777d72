"""Turning whatever a UI, an API client or a script hands us into an RGBA uint8 array.

Accepted: None or "" (no image), PIL images of any mode, numpy arrays (HxW, HxWx1, HxWx3,
HxWx4; uint8, or floats in [0, 1]), base64 strings with or without a `data:image/...;base64,`
prefix, and the dicts gradio image editors produce (`background`, `image` or `composite` key).
Images without alpha become opaque. Errors name the field they came from.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

MAX_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; larger inputs are refused, not resized
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_EDITOR_KEYS = ("background", "image", "composite")


def _check_size(h: int, w: int, field: str) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"{field}: the image is empty ({w}x{h}).")
    if h * w > MAX_PIXELS:
        raise ValueError(f"{field}: the image is {w}x{h}, more than the {MAX_PIXELS // 2**20} "
                         "megapixels accepted; scale it down first.")


def _from_pil(img: Image.Image, field: str) -> np.ndarray:
    _check_size(img.height, img.width, field)
    if img.mode != "RGBA":
        img = img.convert("RGBA")  # palette transparency, LA and RGB all land here correctly
    return np.array(img, dtype=np.uint8)


def _from_base64(text: str, field: str) -> np.ndarray:
    payload = _DATA_URL.sub("", text.strip(), count=1)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field}: expected a base64-encoded image or a data URL, "
                         f"got a string that is not base64 ({text[:40]!r}...).") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{field}: the image is too large to decode safely.") from None
    except Exception as exc:  # PIL raises many types for undecodable data
        raise ValueError(f"{field}: the base64 data is not a readable image ({exc}).") from None
    _check_size(img.height, img.width, field)  # before decoding the pixels
    try:
        img.load()
    except Exception as exc:
        raise ValueError(f"{field}: the image data is damaged ({exc}).") from None
    return _from_pil(img, field)


def _from_array(arr: np.ndarray, field: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{field}: expected an image array of shape HxW, HxWx3 or HxWx4, "
                         f"got shape {tuple(arr.shape)}.")
    _check_size(arr.shape[0], arr.shape[1], field)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{field}: the image array contains NaN or infinite values.")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"{field}: float image arrays must hold values in [0, 1], "
                             f"got [{arr.min():.3g}, {arr.max():.3g}].")
        out = np.round(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{field}: integer image arrays must hold values in 0..255.")
        out = arr.astype(np.uint8)
    else:
        raise TypeError(f"{field}: unsupported image array dtype {arr.dtype}.")
    if out.shape[2] == 3:
        alpha = np.full(out.shape[:2] + (1,), 255, dtype=np.uint8)
        out = np.concatenate([out, alpha], axis=2)
    return np.ascontiguousarray(out)


def to_rgba_uint8(value: Any, field: str = "image") -> Optional[np.ndarray]:
    """Normalise an image-like value to an HxWx4 uint8 array (straight alpha), or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dict):
        for key in _EDITOR_KEYS:
            if value.get(key) is not None:
                return to_rgba_uint8(value[key], field)
        return None
    if isinstance(value, Image.Image):
        return _from_pil(value, field)
    if isinstance(value, str):
        return _from_base64(value, field)
    if isinstance(value, np.ndarray):
        return _from_array(value, field)
    if hasattr(value, "__array__") and not isinstance(value, (bytes, bytearray)):
        return _from_array(np.asarray(value), field)
    raise TypeError(f"{field}: expected an image (PIL image, numpy array, base64 string or data "
                    f"URL), got {type(value).__name__}.")


def read_image_file(path: Union[str, os.PathLike], field: str = "image", name: Optional[str] = None) -> np.ndarray:
    """An image file as RGBA uint8, turned upright by its EXIF orientation; missing, unreadable,
    damaged or oversized files are a ValueError naming the file (`name`, e.g. an upload's own
    name, instead of its path)."""
    from PIL import ImageOps

    shown = repr(name or str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img.height, img.width, f"{field} {shown}")
                return to_rgba_uint8(ImageOps.exif_transpose(img), field)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{field}: {shown} is too large to decode safely.") from None
    except FileNotFoundError:
        raise ValueError(f"{field}: there is no file {shown}.") from None
    except (OSError, SyntaxError) as exc:  # PIL raises these for unreadable or damaged files
        detail = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(exc).__name__
        raise ValueError(f"{field}: {shown} is not an image (PIL: {detail}).") from None


STEALTH_ALPHA = 254  # the lowest alpha a WebUI's stealth infotext writes into an opaque image


def has_real_alpha(image: Image.Image) -> bool:
    """The image carries transparency of its own (a model with an RGBA VAE made it, or an RGBA
    upload), not only the 254/255 values that stealth infotext hides its bits in."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return False
    low, _ = image.convert("RGBA").getchannel("A").getextrema()
    return low < STEALTH_ALPHA


def to_png_base64(rgba: np.ndarray) -> str:
    """Encode an RGBA uint8 array as a PNG data URL (for API responses and round trips)."""
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def save_png(image: Image.Image, path: Union[str, os.PathLike], infotext: str = "",
             settings: Optional[dict] = None) -> None:
    """PNG with the WebUI-style "parameters" text chunk (and the settings as JSON), alpha kept."""
    import json

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_itxt("parameters", infotext)
    if settings:
        info.add_itxt("layerdiffuse", json.dumps(settings, default=str))
    image.save(path, format="PNG", pnginfo=info)
