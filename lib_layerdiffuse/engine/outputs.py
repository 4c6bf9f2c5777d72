"""From sampled latents to the images users get, and writing them as PNG files.

Every image comes out with the frame it shows (fg / bg / blend). The frames the method makes
transparent go through the transparent decoder (with the raw latent, `conventions.to_raw`
of the model latent) and become straight-alpha RGBA with a checkerboard preview; the others are the
ordinary decode. The ordinary decode of every image is kept as `original`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..images import save_png
from ..methods import Method
from ..progress import ProgressCallback
from ..vae.conventions import convention_of, to_raw
from ..vae.frontends import TransparentDecoder
from ..vae.pixels import to_uint8


@dataclass
class LayerImage:
    """One generated image."""

    image: Image.Image
    frame: str
    transparent: bool
    original: Image.Image
    preview: Optional[Image.Image] = None
    index: int = 0


@dataclass
class LayerResult:
    """All images of one generation, in the pipeline's order (interleaved frames), with the
    generation parameters as infotext text. `unet_calls` counts the UNet calls made with
    LayerDiffuse and after "Stop At" switched it off."""

    images: list[LayerImage]
    method: Method
    seed: int
    infotext: str
    settings: dict = field(default_factory=dict)
    unet_calls: tuple[int, int] = (0, 0)

    @property
    def rgba(self) -> list[Image.Image]:
        """The main image of every output (RGBA for transparent frames, RGB otherwise)."""
        return [im.image for im in self.images]

    def frame(self, name: str) -> list[Image.Image]:
        """All images of one frame ("fg", "bg" or "blend")."""
        return [im.image for im in self.images if im.frame == name]

    def save(self, folder: Union[str, Path], stem: str = "layerdiffuse", originals: bool = False,
             previews: bool = False) -> list[Path]:
        """Write every image as PNG (straight alpha where transparent) with the parameters as
        PNG text; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for im in self.images:
            base = f"{stem}-{self.seed}-{im.index:02d}-{im.frame}"
            extra = [("", im.image)]
            if originals and im.transparent:
                extra.append(("-original", im.original))
            if previews and im.preview is not None:
                extra.append(("-preview", im.preview))
            for suffix, image in extra:
                path = folder / f"{base}{suffix}.png"
                save_png(image, path, self.infotext, self.settings)
                written.append(path)
        return written


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw latents (fp32) and the ordinary decode (fp32) of model-space `latents`, mapped to
    [0,1] and clipped there unless `clip` is off (the Flux decoder takes it unclipped).

    An fp16 VAE that asks for it (`force_upcast`, the SDXL VAE) decodes in fp32, as the
    diffusers pipelines do, and is put back afterwards.
    """
    cfg = vae.config
    raw = latents.float()
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        raw = raw * torch.tensor(std).view(shape).to(raw) / cfg.scaling_factor + torch.tensor(mean).view(shape).to(raw)
    else:
        raw = to_raw(raw, cfg)
    upcast = vae.dtype == torch.float16 and getattr(cfg, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        p = next(vae.parameters())
        pixel = vae.decode(raw.to(p.device, p.dtype)).sample.float()
    finally:
        if upcast:
            vae.to(torch.float16)
    pixel = pixel / 2 + 0.5
    return raw, pixel.clamp(0, 1) if clip else pixel


def _to_pil(chw: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(chw.permute(1, 2, 0).cpu().numpy()), "RGB")


def decode_outputs(vae, latents: torch.Tensor, method: Method, decoder: Optional[TransparentDecoder],
                   passes: int = 8, progress: bool = True,
                   on_progress: Optional[ProgressCallback] = None) -> list[LayerImage]:
    """Decode every latent of a generation into a LayerImage, one image at a time; `passes`
    is the transparent decoder's test-time augmentation (the decoder is shared, so it is
    passed per call rather than set on it). `on_progress("Decoding", done, total)` follows
    every image."""
    images = []
    total = latents.shape[0]
    for i in tqdm(range(total), desc="Decoding", disable=not progress, unit="image"):
        images.append(_decode_one(vae, latents[i:i + 1], i, method, decoder, passes))
        if on_progress is not None:
            on_progress("Decoding", i + 1, total)
    return images


def _decode_one(vae, latent: torch.Tensor, index: int, method: Method,
                decoder: Optional[TransparentDecoder], passes: int) -> LayerImage:
    spec = method.spec
    raw, pixel = vae_decode(vae, latent, convention_of(method.family).clip_pixel)
    frame = index % spec.frame_count
    original = _to_pil(pixel[0])
    if frame not in spec.transparent:
        return LayerImage(original, spec.frames[frame], False, original, index=index)
    if decoder is None:
        raise ValueError(f"{method.value} makes frame {spec.frames[frame]!r} transparent; a "
                         "transparent decoder is needed")
    out = decoder.decode(raw, pixel, passes)
    rgba = Image.fromarray(np.ascontiguousarray(out.rgba[0]), "RGBA")
    preview = Image.fromarray(out.preview[0], "RGB")
    return LayerImage(rgba, spec.frames[frame], True, original, preview, index=index)
