"""LayerDiffuse's transparent VAE: the decoder (latent + RGB decode -> RGBA) and the offset
encoder (RGBA -> img2img latent), with their pixel conventions."""

from .augment import VARIANTS, auto_batch_size, estimate_augmented, pad_to_multiple
from .frontends import (OFFSET_SCALE, DecodedImages, TransparentDecoder, TransparentEncoder,
                        decoder_for, default_device_and_dtype, encoder_for, load_strict)
from .networks import LatentTransparencyOffsetEncoder, UNet1024
from .pixels import checkerboard, flatten_over_grey, pad_rgb, to_uint8

__all__ = [
    "VARIANTS", "auto_batch_size", "estimate_augmented", "pad_to_multiple", "OFFSET_SCALE",
    "DecodedImages", "TransparentDecoder", "TransparentEncoder", "decoder_for",
    "default_device_and_dtype", "encoder_for", "load_strict", "LatentTransparencyOffsetEncoder",
    "UNet1024", "checkerboard",
    "flatten_over_grey", "pad_rgb", "to_uint8",
]
