"""An image split into RGBA layers with Qwen-Image-Layered (a diffusers
`QwenImageLayeredPipeline`), checked by putting the layers back together.

>>> decomposer = LayerDecomposer.from_model("Qwen/Qwen-Image-Layered")
>>> result = decomposer.decompose("poster.png", layers=4, seed=1)
>>> result.report()                 # {"composite_error": ..., "empty": [...], ...}
>>> result.save("out/")             # layer PNGs (1 = bottom), out/layers.psd

The pipeline returns the layers bottom (background) first; each is straight-alpha RGBA over the
full canvas, at the size the model's resolution bucket gives the input's aspect ratio (640 or
1024 pixels square in area). Images are decomposed one at a time: diffusers 0.42's pipeline
mixes the layers of different images up when given several. An empty prompt lets the pipeline
caption the image itself (with its vision-language model: slower).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..engine.basics import fit_rgba, format_infotext, positive_int, step_reporter
from ..engine.family import QWEN_TRANSFORMER, UnsupportedModelError, locate_layered_model
from ..images import save_png, to_rgba_uint8
from ..progress import ProgressCallback
from ..vae.pixels import to_uint8
from .files import layered_psd, zip_files
from .options import DEFAULT_CFG, DEFAULT_LAYERS, DEFAULT_STEPS, MAX_LAYERS, RESOLUTIONS

EMPTY_ALPHA = 8  # a layer whose alpha never goes above this shows nothing


@dataclass
class Decomposition:
    """The layers of one image, bottom first, with the image they should add up to."""

    layers: list[Image.Image]
    source: Image.Image  # the input, RGBA, fitted to the layers' size
    seed: int
    infotext: str
    settings: dict = field(default_factory=dict)

    @property
    def composite(self) -> Image.Image:
        """The layers put together, each over the ones below (straight alpha)."""
        out = Image.new("RGBA", self.source.size, (0, 0, 0, 0))
        for layer in self.layers:
            out = Image.alpha_composite(out, layer.convert("RGBA"))
        return out

    @property
    def error(self) -> float:
        """Mean absolute difference (0..255) between the composite and the input, over the
        premultiplied colour and alpha (colour under full transparency does not count)."""
        def premultiplied(image: Image.Image) -> np.ndarray:
            x = np.asarray(image.convert("RGBA"), np.float32)
            return np.concatenate([x[..., :3] * x[..., 3:] / 255.0, x[..., 3:]], -1)
        return float(np.abs(premultiplied(self.composite) - premultiplied(self.source)).mean())

    @property
    def empty(self) -> list[int]:
        """Indices (0: bottom) of the layers that show nothing."""
        return [i for i, layer in enumerate(self.layers)
                if np.asarray(layer.convert("RGBA"))[..., 3].max() <= EMPTY_ALPHA]

    def names(self) -> list[str]:
        return [f"Layer {i + 1}" + (" (bottom)" if i == 0 else " (top)" if i == len(self.layers) - 1 else "")
                for i in range(len(self.layers))]

    def report(self) -> dict[str, Any]:
        return {"layers": len(self.layers), "size": list(self.source.size), "composite_error": round(self.error, 3),
                "empty": [i + 1 for i in self.empty], "seed": self.seed}

    def save(self, folder: Union[str, Path], stem: str = "layers", psd: bool = True,
             archive: bool = False) -> list[Path]:
        """Every layer as `STEM-layer-N.png` (1: bottom, with the parameters as PNG text), the
        layered `STEM.psd` and, with `archive`, `STEM.zip` of them all; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, layer in enumerate(self.layers):
            path = folder / f"{stem}-layer-{i + 1}.png"
            save_png(layer, path, self.infotext, self.settings)
            written.append(path)
        if psd:
            written.append(layered_psd(list(zip(self.names(), self.layers)), folder / f"{stem}.psd"))
        if archive:
            written.append(zip_files(list(written), folder / f"{stem}.zip"))
        return written


def is_layered_pipeline(pipe: Any) -> bool:
    transformer = getattr(pipe, "transformer", None)
    return (type(transformer).__name__ == QWEN_TRANSFORMER
            and bool(getattr(transformer, "config", {}).get("use_layer3d_rope")))


class LayerDecomposer:
    """Qwen-Image-Layered on a `QwenImageLayeredPipeline`."""

    def __init__(self, pipe, progress: bool = True):
        if not is_layered_pipeline(pipe):
            raise UnsupportedModelError(f"{type(pipe).__name__} is not Qwen-Image-Layered; layer decomposition "
                                        "needs a diffusers QwenImageLayeredPipeline (Qwen/Qwen-Image-Layered)")
        self.pipe = pipe
        self.progress = progress

    @classmethod
    def from_model(cls, model: str, device=None, dtype=None, local_files_only: bool = False,
                   progress: bool = True) -> "LayerDecomposer":
        """Load Qwen-Image-Layered from a diffusers folder or a hub id, checked first (without
        loading the ~54 GB of weights) that it is that model."""
        from diffusers import QwenImageLayeredPipeline

        from ..engine.qwen_processor import processor_kwargs
        from ..vae.frontends import default_device_and_dtype

        location = locate_layered_model(model, local_files_only)
        device, default_dtype = default_device_and_dtype(device, dtype)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else default_dtype)
        try:
            processor = processor_kwargs(model, "Qwen2VLProcessor", location.local_only)
            pipe = QwenImageLayeredPipeline.from_pretrained(model, torch_dtype=dtype,
                                                            local_files_only=location.local_only, **processor)
        except Exception as exc:
            raise RuntimeError(f"could not load Qwen-Image-Layered model {model!r}: {type(exc).__name__}: "
                               f"{exc}") from exc
        return cls(pipe.to(device), progress)

    def decompose(self, image, layers: int = DEFAULT_LAYERS, *, prompt: str = "", negative_prompt: str = " ",
                  steps: Optional[int] = None, cfg: Optional[float] = None, seed: Optional[int] = None,
                  resolution: int = RESOLUTIONS[0],
                  on_progress: Optional[ProgressCallback] = None) -> Decomposition:
        """Split `image` (a PIL image, an array, base64; RGB is taken as opaque) into `layers`
        RGBA layers. `cfg` is the true CFG scale (default 4, the model card's)."""
        rgba = to_rgba_uint8(image, "image")
        if rgba is None:
            raise ValueError("decompose needs an image")
        layers = positive_int("layers", layers)
        if layers > MAX_LAYERS:
            raise ValueError(f"layers must be at most {MAX_LAYERS}, got {layers}")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))} (the model's buckets), "
                             f"got {resolution}")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be text, got {type(prompt).__name__}")
        steps = positive_int("steps", DEFAULT_STEPS if steps is None else steps)
        cfg = float(DEFAULT_CFG if cfg is None else cfg)
        seed = int(seed) if seed is not None else random.randrange(2**32)
        self.pipe.set_progress_bar_config(disable=not self.progress)
        call: dict[str, Any] = dict(
            image=Image.fromarray(rgba, "RGBA"), prompt=prompt or None,
            negative_prompt=negative_prompt if cfg > 1.0 else None, true_cfg_scale=cfg, layers=layers, num_inference_steps=steps, resolution=resolution,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="np", use_en_prompt=True)
        if on_progress is not None:
            call["callback_on_step_end"] = step_reporter(on_progress, steps)
        out = np.asarray(self.pipe(**call).images[0], np.float32)  # (layers, H, W, 4) in [0, 1]
        pictures = [Image.fromarray(to_uint8(layer), "RGBA") for layer in out]
        height, width = out.shape[1:3]
        source = Image.fromarray(fit_rgba(rgba, width, height), "RGBA")
        settings = {"Steps": steps, "CFG scale": cfg, "Seed": seed, "Size": f"{width}x{height}", "Layers": layers,
                    "Resolution": resolution,
                    "Model": getattr(self.pipe, "name_or_path", None) or self.pipe.config.get("_name_or_path", "")}
        settings = {k: v for k, v in settings.items() if v not in ("", None)}
        return Decomposition(pictures, source, seed, format_infotext(prompt, "", settings), settings)
