"""Native RGBA from Qwen-Image-2.1 (a diffusers `QwenImage21Pipeline`, or its Turbo variant),
behind the same calls and results as the LayerDiffuse engines.

>>> from diffusers import QwenImage21Pipeline
>>> pipe = QwenImage21Pipeline.from_pretrained("Qwen/Qwen-Image-2.1", torch_dtype=torch.bfloat16)
>>> ld = LayerDiffuse(pipe)                     # picks this engine
>>> ld.generate("a glass teapot, studio light", seed=7).rgba[0].save("teapot.png")

Nothing is patched: the model's VAE decodes four channels. What this engine adds is what the
other engines give: checked settings before any work, straight-alpha RGBA with the opaque
colour and a checkerboard preview per image, WebUI-style infotext, progress, seeds (one noise
generator per image with `generate_each`), and an optional alpha floor (`alpha_floor`) that
clears the near-zero specks RGBA decoders leave in the background. An RGBA `init_image` is the
image to edit: the pipeline shows it to its vision encoder over white and encodes all four
channels. Licence: the Qwen Research License (`methods.QWEN21_LICENCE`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..images import to_rgba_uint8
from ..methods import Method
from ..params import LayerDiffuseParams
from ..progress import ProgressCallback
from ..vae.pixels import checkerboard, to_uint8
from .basics import fit_rgba, format_infotext, positive_int, step_reporter
from .family import UnsupportedModelError, check_method_family, family_of_transformer
from .outputs import LayerImage, LayerResult

DEFAULT_STEPS = 40  # Qwen's recommendation: 40 steps, no guidance
DEFAULT_SIZE = 1024
SIZE_MULTIPLE = 32  # the VAE's 16 times the 2x2 vision slots
LAYER_KEYWORDS = ("fg", "bg", "blend", "fg_prompt", "bg_prompt", "blend_prompt")


@dataclass
class _QwenRequest:
    settings: LayerDiffuseParams
    prompts: list[str]
    seeds: list[int]
    negative_prompt: str
    steps: int
    cfg: float
    width: int
    height: int
    batch: int
    init_image: Optional[np.ndarray]
    alpha_floor: int


def clean_alpha(rgba: np.ndarray, floor: int) -> np.ndarray:
    """`rgba` with every alpha at or under `floor` set to 0 (and its colour to black); alpha above
    the floor is never changed. RGBA decoders leave specks and a faint 16-px grid of alpha 1..5
    in empty background, invisible on white and plain on a dark layer."""
    if floor <= 0:
        return rgba
    out = rgba.copy()
    out[rgba[..., 3] <= floor] = 0
    return out


class QwenImage21Engine:
    """Qwen-Image-2.1's native RGBA on a `QwenImage21Pipeline`; `LayerDiffuse(pipe)` returns one
    for such a pipeline."""

    def __init__(self, pipe, store: Any = None, decoder_passes: int = 8, progress: bool = True,
                 backup_device: Union[str, torch.device] = "cpu", alpha_floor: int = 0):
        transformer = getattr(pipe, "transformer", None)
        if transformer is None:
            raise UnsupportedModelError(f"{type(pipe).__name__} has no transformer; Qwen-Image-2.1 needs a "
                                        "diffusers QwenImage21Pipeline")
        self.family = family_of_transformer(transformer)
        self.pipe = pipe
        self.store = store  # unused: the model needs no LayerDiffuse weights (kept for the engines' shared call)
        self.progress = progress
        self.alpha_floor = _floor(alpha_floor)

    def default_size(self) -> int:
        return DEFAULT_SIZE

    @property
    def fixed_sigmas(self) -> Optional[list[float]]:
        """The Turbo variant's sampling grid (its step count is fixed), else None."""
        sigmas = self.pipe.config.get("sample_sigmas")
        return list(sigmas) if sigmas else None

    # ---- validation ----------------------------------------------------------------------

    def _request(self, items: Sequence[tuple[str, int]], method, negative_prompt, steps, cfg, width, height, batch,
                 sampler, init_image, strength, weight, stop_at, alpha_floor, layer: dict[str, Any]) -> _QwenRequest:
        method = Method.parse(method or Method.QWEN21_RGBA, family=self.family)
        check_method_family(method, self.family)
        for prompt, _ in items:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be text, got {type(prompt).__name__}")
        given = [name for name in LAYER_KEYWORDS if layer.get(name) is not None and not isinstance(layer[name], str)
                 or isinstance(layer.get(name), str) and layer[name]]
        if given:
            raise ValueError(f"{method.value} takes no layer images or layer prompts (got {', '.join(given)}); "
                             "give an RGBA init_image to edit a transparent image")
        if sampler:
            raise ValueError(f"Qwen-Image-2.1 samples with the pipeline's own flow-matching scheduler; sampler "
                             f"{sampler!r} cannot be chosen")
        if weight != 1.0 or stop_at != 1.0:
            raise ValueError("weight and stop_at scale LayerDiffuse's weights; Qwen-Image-2.1 makes RGBA without "
                             f"them (got weight {weight}, stop_at {stop_at})")
        if strength is not None:
            raise ValueError("Qwen-Image-2.1 edits an init image by instruction (the prompt), not by denoising "
                             "strength; leave strength unset")
        fixed = self.fixed_sigmas
        if fixed and steps is not None and steps != len(fixed):
            raise ValueError(f"this Qwen-Image-2.1 model (Turbo) samples a fixed grid of {len(fixed)} steps; "
                             f"leave steps unset (got {steps})")
        init = to_rgba_uint8(init_image, "init_image")
        if init is not None:
            width = width or _fit(init.shape[1])
            height = height or _fit(init.shape[0])
        width = positive_int("width", DEFAULT_SIZE if width is None else width)
        height = positive_int("height", DEFAULT_SIZE if height is None else height)
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
            raise ValueError(f"Qwen-Image-2.1 sizes must be multiples of {SIZE_MULTIPLE} (the VAE's 16 times its "
                             f"2x2 vision slots), got {width}x{height}; for example {_fit(width)}x{_fit(height)}")
        cfg = float(1.0 if cfg is None else cfg)
        if cfg < 1.0:
            raise ValueError(f"cfg (true CFG scale) must be at least 1 (1: no guidance, Qwen's default), got {cfg}")
        return _QwenRequest(
            LayerDiffuseParams(enabled=True, method=method), [p for p, _ in items], [s for _, s in items],
            negative_prompt or "", len(fixed) if fixed else positive_int("steps", steps or DEFAULT_STEPS), cfg,
            width, height, positive_int("batch", batch), init,
            self.alpha_floor if alpha_floor is None else _floor(alpha_floor))

    # ---- generation ----------------------------------------------------------------------

    def generate(self, prompt: str, method: Union[Method, str, None] = None, *, negative_prompt: str = "",
                 steps: Optional[int] = None, cfg: Optional[float] = None, seed: Optional[int] = None,
                 width: Optional[int] = None, height: Optional[int] = None, batch: Optional[int] = None,
                 fg=None, bg=None, blend=None, weight: float = 1.0, stop_at: float = 1.0, resize_mode=None,
                 fg_prompt: str = "", bg_prompt: str = "", blend_prompt: str = "", sampler: Optional[str] = None,
                 init_image=None, strength: Optional[float] = None, alpha_floor: Optional[int] = None,
                 on_progress: Optional[ProgressCallback] = None) -> LayerResult:
        """Text (or an RGBA image to edit and an instruction) to straight-alpha RGBA. `cfg` is the
        true CFG scale (1: off, Qwen's default; above 1 it needs the negative prompt, " " when
        none is given); `alpha_floor` clears alpha at or under it (default: the engine's). The
        LayerDiffuse-only arguments are refused with a message rather than ignored;
        `resize_mode` is accepted for the same call shape and has nothing to resize."""
        seed = int(seed) if seed is not None else random.randrange(2**32)
        layer = dict(fg=fg, bg=bg, blend=blend, fg_prompt=fg_prompt, bg_prompt=bg_prompt, blend_prompt=blend_prompt)
        req = self._request([(prompt, seed)], method, negative_prompt, steps, cfg, width, height,
                            1 if batch is None else batch, sampler, init_image, strength, weight, stop_at,
                            alpha_floor, layer)
        generator = torch.Generator("cpu").manual_seed(seed)
        images = self._run(req, prompt, req.batch, generator, on_progress)
        settings = self._settings(req, seed)
        return LayerResult(images, req.settings.method, seed, format_infotext(prompt, req.negative_prompt, settings),
                           settings)

    def generate_each(self, items: Sequence[tuple[str, int]], method: Union[Method, str, None] = None, *,
                      on_progress: Optional[ProgressCallback] = None, **shared: Any) -> list[LayerResult]:
        """One image per (prompt, seed) of `items`, sampled together; each is the image
        `generate(prompt, seed=seed, **shared)` makes alone (its own noise generator), up to the
        float rounding of batched matrix products (a few values off by 1 of 255)."""
        if not items:
            raise ValueError("generate_each needs at least one (prompt, seed)")
        unknown = sorted(set(shared) - {"negative_prompt", "steps", "cfg", "width", "height", "alpha_floor",
                                        "weight", "stop_at", "sampler", "resize_mode", *LAYER_KEYWORDS})
        if unknown or shared.get("init_image") is not None:
            raise TypeError(f"generate_each got settings it does not take: {', '.join(unknown) or 'init_image'}")
        layer = {k: shared.get(k) for k in LAYER_KEYWORDS}
        req = self._request([(p, int(s)) for p, s in items], method, shared.get("negative_prompt", ""),
                            shared.get("steps"), shared.get("cfg"), shared.get("width"), shared.get("height"),
                            len(items), shared.get("sampler"), None, None, shared.get("weight", 1.0),
                            shared.get("stop_at", 1.0), shared.get("alpha_floor"), layer)
        generators = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
        images = self._run(req, req.prompts, 1, generators, on_progress)
        results = []
        for image, prompt, seed in zip(images, req.prompts, req.seeds):
            image.index = 0
            settings = self._settings(req, seed)
            results.append(LayerResult([image], req.settings.method, seed,
                                       format_infotext(prompt, req.negative_prompt, settings), settings))
        return results

    def _run(self, req: _QwenRequest, prompt, per_prompt: int, generator, on_progress) -> list[LayerImage]:
        pipe = self.pipe
        pipe.set_progress_bar_config(disable=not self.progress)
        call: dict[str, Any] = dict(prompt=prompt, num_inference_steps=req.steps, true_cfg_scale=req.cfg,
                                    num_images_per_prompt=per_prompt, width=req.width, height=req.height,
                                    generator=generator, output_type="np")
        if req.cfg > 1.0:  # the pipeline guides only with a negative prompt
            negative = req.negative_prompt or " "
            call["negative_prompt"] = [negative] * len(prompt) if isinstance(prompt, list) else negative
        if req.init_image is not None:
            rgba = fit_rgba(req.init_image, req.width, req.height)
            call["image"] = Image.fromarray(rgba, "RGBA")
            # the image to edit at the output's own size (the pipeline's default is 1024x1024's area)
            call["output_resolution"] = int(round((req.width * req.height) ** 0.5))
        if on_progress is not None:
            call["callback_on_step_end"] = step_reporter(on_progress, req.steps)
        pixels = np.asarray(pipe(**call).images, dtype=np.float32)  # (B, H, W, 4) in [0, 1], straight alpha
        images = []
        for index, image in enumerate(pixels):
            rgba = clean_alpha(to_uint8(image), req.alpha_floor)
            images.append(_layer_image(rgba, index))
        if on_progress is not None:
            on_progress("Decoding", len(images), len(images))
        return images

    def _settings(self, req: _QwenRequest, seed: int) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "Steps": req.steps, "Sampler": type(self.pipe.scheduler).__name__, "CFG scale": req.cfg, "Seed": seed,
            "Size": f"{req.width}x{req.height}",
            "Model": getattr(self.pipe, "name_or_path", None) or self.pipe.config.get("_name_or_path", ""),
        }
        if req.init_image is not None:
            settings["Edited image"] = "RGBA input"
        if req.alpha_floor:
            settings["Alpha floor"] = req.alpha_floor
        # the method, not LayerDiffuse's weight, steps or resize settings: none applies here
        settings.update({k: v for k, v in req.settings.to_infotext().items()
                         if k in ("layerdiffusion_enabled", "layerdiffusion_method")})
        return {k: v for k, v in settings.items() if v not in ("", None)}


def _layer_image(rgba: np.ndarray, index: int) -> LayerImage:
    """The RGBA image, its colour without alpha (the opaque original) and a checkerboard preview."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    board = checkerboard(*rgba.shape[:2])[..., None]
    preview = to_uint8(rgba[..., :3].astype(np.float32) / 255.0 * alpha + board * (1.0 - alpha))
    return LayerImage(Image.fromarray(rgba, "RGBA"), "fg", True, Image.fromarray(np.ascontiguousarray(rgba[..., :3]),
                                                                                  "RGB"),
                      Image.fromarray(preview, "RGB"), index=index)


def _fit(size: int) -> int:
    return max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)


def _floor(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 254:
        raise ValueError(f"alpha_floor must be a whole number from 0 (off) to 254, got {value!r}")
    return int(value)
