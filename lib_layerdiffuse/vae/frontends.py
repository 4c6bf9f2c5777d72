"""Loading the transparent decoder / encoder weights and using them on real images.

`TransparentDecoder.decode(raw_latent, pixel)` turns the raw VAE latent and its ordinary
decode into RGBA; `TransparentEncoder.encode(vae, images)` turns RGBA images into the img2img
latent. `decoder_for(family)` / `encoder_for(family)` keep one instance per model family
(the SD1.5, SDXL and Flux files differ; the reference shares one and silently uses the wrong
one). The families' channel orders and latent conventions are in `conventions.py`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..methods import Family
from ..weights import WeightStore, file_for
from ..weights.errors import WeightFormatError
from .augment import estimate_augmented
from .conventions import convention_of, to_model
from .networks import LatentTransparencyOffsetEncoder, UNet1024
from .pixels import checkerboard, flatten_over_grey, pad_rgb, to_uint8

# The offset encoder's output is multiplied by this before it is added to the latent:
# the official diffusers CLI (LayerDiffuse_DiffusersCLI) scales it like a LoRA alpha, because
# the encoder's last conv starts at zero in training and would otherwise stay tiny. The Forge
# reference omits it, which makes its transparent img2img nearly a plain mean encode.
OFFSET_SCALE = 300.0


def default_device_and_dtype(device: Union[str, torch.device, None] = None,
                             dtype: Optional[torch.dtype] = None) -> tuple[torch.device, torch.dtype]:
    """CUDA in fp16, Apple MPS in fp16 (its median runs on the CPU), else CPU in fp32."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.float16
    return device, dtype


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every key with the right shape, a float dtype and finite values, or explain what
    is wrong with the file."""
    check_strict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def check_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """What `load_strict` checks, without loading (`model` may live on the meta device)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected keys (first: {extra[0]})")
        raise WeightFormatError(f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}. "
                                "Is it the right file for this network?")
    for key, ref in expected.items():
        t = state_dict[key]
        if tuple(t.shape) != tuple(ref.shape):
            raise WeightFormatError(f"{source}: {key} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}.")
        if not t.is_floating_point():
            raise WeightFormatError(f"{source}: {key} has dtype {t.dtype}, expected floating point.")
        if not torch.isfinite(t).all():
            raise WeightFormatError(f"{source}: {key} contains NaN or infinite values; the file is "
                                    "damaged. Delete it and download it again.")


@dataclass
class DecodedImages:
    """Decoder results for a batch, as numpy arrays.

    `rgba`: [B,H,W,4] uint8, straight alpha (the primary output). `alpha`: [B,H,W] float32.
    `rgb`: [B,H,W,3] float32 straight colour. `preview`: [B,H,W,3] uint8 over a checkerboard.
    """

    rgba: np.ndarray
    alpha: np.ndarray
    rgb: np.ndarray
    preview: np.ndarray

    def premultiplied(self) -> np.ndarray:
        """[B,H,W,4] uint8 with colour multiplied by alpha (for compositing tools that want it)."""
        return np.concatenate([to_uint8(self.rgb * self.alpha[..., None]), self.rgba[..., 3:]], axis=-1)


class TransparentDecoder:
    """The transparent decoder of one family on one device; `alpha_first` is the SD channel
    order of its output (Flux: RGB then alpha)."""

    def __init__(self, model: UNet1024, passes: int = 8, alpha_first: bool = True):
        self.model = model.eval()
        self.passes = passes
        self.alpha_first = alpha_first

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], source: str = "decoder weights",
                        device=None, dtype=None, passes: int = 8, alpha_first: bool = True,
                        **config) -> "TransparentDecoder":
        device, dtype = default_device_and_dtype(device, dtype)
        model = decoder_network(state_dict, **config)
        load_strict(model, state_dict, source)
        return cls(model.to(device, dtype), passes, alpha_first)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def estimate(self, raw_latent: torch.Tensor, pixel: torch.Tensor, passes: Optional[int] = None,
                 batch_size: Optional[int] = None) -> torch.Tensor:
        """[B,4,H,W] fp32 in [0,1], in the network's channel order, from the raw latent and
        the ordinary decode in [0,1]."""
        return estimate_augmented(self.model, pixel, raw_latent, passes or self.passes, batch_size)

    def decode(self, raw_latent: torch.Tensor, pixel: torch.Tensor, passes: Optional[int] = None,
               batch_size: Optional[int] = None) -> DecodedImages:
        """RGBA images from the raw VAE latent (`conventions.to_raw` of the model latent)
        `[B,C,h,w]` and the ordinary VAE decode of it, as floats (in [0,1] for SD) `[B,3,8h,8w]`."""
        y = self.estimate(raw_latent, pixel, passes, batch_size).cpu().numpy().transpose(0, 2, 3, 1)
        alpha, rgb = (y[..., 0], y[..., 1:]) if self.alpha_first else (y[..., 3], y[..., :3])
        h, w = alpha.shape[1:]
        cb = checkerboard(h, w)[None, :, :, None]
        preview = rgb * alpha[..., None] + cb * (1.0 - alpha[..., None])
        rgba = np.concatenate([to_uint8(rgb), to_uint8(alpha)[..., None]], axis=-1)
        return DecodedImages(rgba=rgba, alpha=alpha, rgb=rgb, preview=to_uint8(preview))


class TransparentEncoder:
    """The latent-transparency offset encoder of one family on one device; `alpha_first` is
    the SD order of its input (Flux: padded RGB then alpha)."""

    def __init__(self, model: LatentTransparencyOffsetEncoder, alpha_first: bool = True):
        self.model = model.eval()
        self.alpha_first = alpha_first

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], source: str = "encoder weights",
                        device=None, dtype=None, alpha_first: bool = True) -> "TransparentEncoder":
        device, dtype = default_device_and_dtype(device, dtype)
        model = encoder_network(state_dict)
        load_strict(model, state_dict, source)
        return cls(model.to(device, dtype), alpha_first)

    @torch.no_grad()
    def offset(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Latent offsets `[B,C,H/8,W/8]` (fp32) for RGBA uint8 images of one size."""
        batch = []
        for img in images:
            _check_encodable(img)
            a = img[..., 3:].astype(np.float32) / 255.0
            parts = [a, pad_rgb(img)] if self.alpha_first else [pad_rgb(img), a]
            batch.append(np.concatenate(parts, axis=-1).transpose(2, 0, 1))
        p = next(self.model.parameters())
        x = torch.from_numpy(np.stack(batch)).to(p.device, p.dtype)
        return self.model(x).float()

    @torch.no_grad()
    def encode(self, vae, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The img2img latent in model space (`conventions.to_model`: minus the VAE's shift, times
        its scaling factor): the images flattened over grey, VAE-encoded, `mean + std *
        OFFSET_SCALE * offset`. RGB images (HxWx3) count as opaque."""
        rgba = [_as_rgba(img) for img in images]
        if len({img.shape for img in rgba}) != 1:
            raise ValueError("all images of one batch must have the same size")
        grey = np.stack([flatten_over_grey(img) for img in rgba]).transpose(0, 3, 1, 2)
        vp = next(vae.parameters())
        x = torch.from_numpy(grey).to(vp.device, vp.dtype) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        offset = self.offset(rgba).to(posterior.mean.device)
        z = posterior.mean.float() + posterior.std.float() * OFFSET_SCALE * offset
        return to_model(z, vae.config).to(vp.dtype)


def decoder_network(state_dict: dict[str, torch.Tensor], **config) -> UNet1024:
    """An untrained UNet1024 shaped like the decoder in `state_dict` (its level widths and
    latent channels; the official files give the defaults), on torch's current default device."""
    widths = _level_widths(state_dict)
    if widths and "block_out_channels" not in config:
        config["block_out_channels"] = widths
    latent_in = state_dict.get("latent_conv_in.weight")
    if latent_in is not None and latent_in.ndim == 4 and "latent_channels" not in config:
        config["latent_channels"] = int(latent_in.shape[1])
    return UNet1024(**config)


def encoder_network(state_dict: dict[str, torch.Tensor]) -> LatentTransparencyOffsetEncoder:
    """An untrained offset encoder with the latent channels of the one in `state_dict` (SD: 4,
    Flux: 16), on torch's current default device."""
    last = state_dict.get(f"blocks.{2 * (len(LatentTransparencyOffsetEncoder.STRIDES) - 1)}.weight")
    return LatentTransparencyOffsetEncoder(int(last.shape[0]) if last is not None and last.ndim == 4 else 4)


def _level_widths(state_dict: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Channel width of each decoder level as stored in the file (the official files give the
    default (32, 32, 64, 128, 256, 512, 512); tests use narrower ones)."""
    widths = []
    while (key := f"down_blocks.{len(widths)}.resnets.0.conv1.weight") in state_dict:
        widths.append(int(state_dict[key].shape[0]))
    return tuple(widths)


def _as_rgba(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 3:
        return np.concatenate([img, np.full(img.shape[:2] + (1,), 255, img.dtype)], axis=-1)
    return img


def _check_encodable(img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint8:
        raise ValueError(f"expected an HxWx4 uint8 RGBA image, got {img.dtype} {tuple(img.shape)}")
    h, w = img.shape[:2]
    if h % 8 or w % 8:
        raise ValueError(f"image size {w}x{h} is not a multiple of 8; resize it to the generation "
                         "size first (the latent is 1/8 of the image)")


_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()
_KINDS = {"decoder": TransparentDecoder, "encoder": TransparentEncoder}


def _cached(kind: str, family: Union[Family, str], store: Optional[WeightStore], device, dtype):
    cls = _KINDS[kind]
    fam = Family(family)
    store = store or WeightStore()
    device, dtype = default_device_and_dtype(device, dtype)
    key = (kind, fam, str(store.folder), str(device), dtype)
    with _CACHE_LOCK:
        if key not in _CACHE:
            name = file_for(fam, kind)
            _CACHE[key] = cls.from_state_dict(store.load(name), str(store.path(name)), device, dtype,
                                              alpha_first=convention_of(fam).alpha_first)
        return _CACHE[key]


def decoder_for(family: Union[Family, str], store: Optional[WeightStore] = None, device=None,
                dtype=None) -> TransparentDecoder:
    """The (cached) transparent decoder of `family`, downloading its weights if needed."""
    return _cached("decoder", family, store, device, dtype)


def encoder_for(family: Union[Family, str], store: Optional[WeightStore] = None, device=None,
                dtype=None) -> TransparentEncoder:
    """The (cached) offset encoder of `family`, downloading its weights if needed."""
    return _cached("encoder", family, store, device, dtype)
