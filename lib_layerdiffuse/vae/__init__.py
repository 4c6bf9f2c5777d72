"""LayerDiffuse's transparent VAE: the decoder (latent + RGB decode -> RGBA) and the offset
encoder (RGBA -> img2img latent), with their pixel conventions.

The pixel conventions (`pixels`) are numpy only and load at once; the networks and their
front ends import torch when one of their names is first used, so numpy-only work (cutouts,
the command line's help) does not pay for importing torch.
"""

from importlib import import_module
from typing import Any

from .pixels import checkerboard, flatten_over_grey, pad_rgb, to_uint8

_TORCH_NAMES = {
    "augment": ("VARIANTS", "auto_batch_size", "estimate_augmented", "pad_to_multiple"),
    "frontends": ("OFFSET_SCALE", "DecodedImages", "TransparentDecoder", "TransparentEncoder", "decoder_for",
                  "check_strict", "default_device_and_dtype", "encoder_for", "load_strict"),
    "networks": ("LatentTransparencyOffsetEncoder", "UNet1024"),
}
_MODULE_OF = {name: module for module, names in _TORCH_NAMES.items() for name in names}

__all__ = [*_MODULE_OF, "checkerboard", "flatten_over_grey", "pad_rgb", "to_uint8"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(__all__)
