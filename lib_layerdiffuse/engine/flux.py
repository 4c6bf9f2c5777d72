"""LayerDiffuse-Flux on a user's own diffusers `FluxPipeline` (FLUX.1-dev, schnell, fine-tunes,
quantised transformers).

>>> from diffusers import FluxPipeline
>>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
>>> ld = LayerDiffuse(pipe)                   # the same entry point as SD; picks this engine
>>> ld.generate("glass bottle, high quality", seed=11111).rgba[0].save("bottle.png")

What the release's demos do, made strict: the LoRA is merged into the transformer on entry and
taken out bit for bit on exit, also on errors (beside quantised layers it runs as a branch, see
`patches.runtime_lora`); sampling returns packed latents, which are unpacked to the 16-channel
latent and decoded by the transparent decoder with the 8-pass augmentation; an RGBA init image
goes through the Flux offset encoder and `FluxImg2ImgPipeline` (transparent img2img).
Licence: FLUX.1-dev is non-commercial (`methods.FLUX_LICENCE`).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from ..images import to_rgba_uint8
from ..methods import Method
from ..params import LayerDiffuseParams
from ..patches import apply_frozen_patches, attach_lora_branches, mergeable, parse_transformer_lora
from ..progress import ProgressCallback
from ..vae.frontends import decoder_for, default_device_and_dtype, encoder_for
from ..weights import WeightStore
from .basics import fit_rgba, format_infotext, positive_int
from .family import UnsupportedModelError, check_method_family, family_of_transformer
from .outputs import LayerResult, decode_outputs

DEFAULT_STEPS = 50  # the release's demos
DEFAULT_GUIDANCE = 3.5
DEFAULT_SIZE = 1024
SIZE_MULTIPLE = 16  # the VAE's /8 and the transformer's 2x2 packing


@dataclass
class _FluxRequest:
    settings: LayerDiffuseParams
    prompt: str
    steps: int
    guidance: float
    seed: int
    width: int
    height: int
    batch: int
    init_image: Optional[np.ndarray]
    strength: float


class FluxLayerDiffuse:
    """The Flux method on a `FluxPipeline`; `LayerDiffuse(pipe)` returns one for Flux pipelines."""

    def __init__(self, pipe, store: Optional[WeightStore] = None, decoder_passes: int = 8,
                 progress: bool = True, backup_device: Union[str, torch.device] = "cpu"):
        transformer = getattr(pipe, "transformer", None)
        if transformer is None:
            raise UnsupportedModelError(f"{type(pipe).__name__} has no transformer; the Flux method needs a "
                                        "diffusers FluxPipeline")
        self.family = family_of_transformer(transformer)
        self.pipe = pipe
        self.store = store or WeightStore(progress=progress)
        self.decoder_passes = decoder_passes
        self.progress = progress
        self.backup_device = backup_device
        self._lora: dict[str, Any] = {}

    def default_size(self) -> int:
        return DEFAULT_SIZE

    def _patches(self, name: str):
        if name not in self._lora:
            self._lora.clear()
            self._lora[name] = parse_transformer_lora(self.store.load(name), str(self.store.path(name)))
        return self._lora[name]

    def _request(self, prompt, method, negative_prompt, steps, cfg, seed, width, height, batch, sampler,
                 init_image, strength, layer: dict[str, Any]) -> _FluxRequest:
        method = Method.parse(method or Method.FLUX_FG_ONLY, family=self.family)
        check_method_family(method, self.family)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be text, got {type(prompt).__name__}")
        if negative_prompt:
            raise ValueError("FLUX.1 is guidance-distilled and takes no negative prompt; leave it empty")
        if sampler:
            raise ValueError(f"the Flux method samples with the pipeline's own flow-matching scheduler; "
                             f"sampler {sampler!r} cannot be chosen")
        given = [n for n in ("fg_image", "bg_image", "blend_image") if layer.get(n) is not None]
        given += [n for n in ("fg_prompt", "bg_prompt", "blend_prompt") if layer.get(n)]
        if given:
            raise ValueError(f"{method.value} takes no layer images or layer prompts (got {', '.join(given)}); "
                             "give an RGBA init_image for transparent img2img")
        settings = LayerDiffuseParams(enabled=True, method=method, weight=layer["weight"], stop_at=layer["stop_at"])
        init = to_rgba_uint8(init_image, "init_image")
        if init is not None:
            width = width or init.shape[1] // SIZE_MULTIPLE * SIZE_MULTIPLE
            height = height or init.shape[0] // SIZE_MULTIPLE * SIZE_MULTIPLE
        width = positive_int("width", DEFAULT_SIZE if width is None else width)
        height = positive_int("height", DEFAULT_SIZE if height is None else height)
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
            fit = f"{width // SIZE_MULTIPLE * SIZE_MULTIPLE or SIZE_MULTIPLE}x{height // SIZE_MULTIPLE * SIZE_MULTIPLE or SIZE_MULTIPLE}"
            raise ValueError(f"Flux sizes must be multiples of {SIZE_MULTIPLE} (the VAE's 8 times the 2x2 "
                             f"packing), got {width}x{height}; for example {fit}")
        strength = float(strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        return _FluxRequest(settings, prompt, positive_int("steps", DEFAULT_STEPS if steps is None else steps),
                            float(cfg if cfg is not None else DEFAULT_GUIDANCE),
                            int(seed) if seed is not None else random.randrange(2**32),
                            width, height, positive_int("batch", 1 if batch is None else batch), init, strength)

    def generate(self, prompt: str, method: Union[Method, str, None] = None, *, negative_prompt: str = "",
                 steps: Optional[int] = None, cfg: Optional[float] = None, seed: Optional[int] = None,
                 width: Optional[int] = None, height: Optional[int] = None, batch: Optional[int] = None,
                 fg=None, bg=None, blend=None, weight: float = 1.0, stop_at: float = 1.0, resize_mode=None,
                 fg_prompt: str = "", bg_prompt: str = "", blend_prompt: str = "", sampler: Optional[str] = None,
                 init_image=None, strength: float = 0.8,
                 on_progress: Optional[ProgressCallback] = None) -> LayerResult:
        """Text (or an RGBA init image) to RGBA with LayerDiffuse-Flux. `cfg` is Flux's distilled
        guidance (default 3.5); `weight` scales the LoRA; `stop_at` takes it out after that
        fraction of the steps. The SD-only arguments (layer images and prompts, negative
        prompt, sampler) are refused with a message rather than ignored; `resize_mode` is
        accepted for the same call shape as SD and has nothing to resize."""
        layer = dict(weight=weight, stop_at=stop_at, fg_image=fg, bg_image=bg, blend_image=blend,
                     fg_prompt=fg_prompt, bg_prompt=bg_prompt, blend_prompt=blend_prompt)
        req = self._request(prompt, method, negative_prompt, steps, cfg, seed, width, height, batch, sampler,
                            init_image, strength, layer)
        method = req.settings.method
        spec = method.spec
        pipe = self.pipe
        patches = self._patches(spec.unet_file)
        dec_device, dec_dtype = default_device_and_dtype(pipe._execution_device)
        decoder = decoder_for(self.family, self.store, dec_device, dec_dtype)
        run_pipe, call = self._pipeline_call(req)
        run_pipe.set_progress_bar_config(disable=not self.progress)
        with contextlib.ExitStack() as stack:
            applied = self._apply(patches, req.settings.weight, str(self.store.path(spec.unet_file)))
            stack.callback(applied.restore)
            call["callback_on_step_end"] = _step_callback(on_progress, req, applied)
            packed = run_pipe(**call).images
        latents = pipe._unpack_latents(packed, req.height, req.width, pipe.vae_scale_factor)
        images = decode_outputs(pipe.vae, latents, method, decoder, self.decoder_passes, self.progress, on_progress)
        settings = self._settings(req, run_pipe)
        return LayerResult(images, method, req.seed, format_infotext(req.prompt, "", settings), settings)

    def _apply(self, patches, strength: float, source: str):
        """Merge the LoRA where every patched weight can take it; otherwise (quantised layers)
        run it beside the layers."""
        params = dict(self.pipe.transformer.named_parameters())
        if all(name not in params or mergeable(params[name]) for name in patches):
            return apply_frozen_patches(self.pipe.transformer, patches, self.family, strength, self.backup_device,
                                        source, progress=self.progress)
        return attach_lora_branches(self.pipe.transformer, patches, strength, source)

    def _pipeline_call(self, req: _FluxRequest):
        call: dict[str, Any] = dict(prompt=req.prompt, num_inference_steps=req.steps, guidance_scale=req.guidance,
                                    num_images_per_prompt=req.batch, width=req.width, height=req.height,
                                    generator=torch.Generator("cpu").manual_seed(req.seed), output_type="latent")
        if req.init_image is None:
            return self.pipe, call
        from diffusers import FluxImg2ImgPipeline

        enc_device, enc_dtype = default_device_and_dtype(self.pipe._execution_device)
        encoder = encoder_for(self.family, self.store, enc_device, enc_dtype)
        rgba = fit_rgba(req.init_image, req.width, req.height)
        call.update(image=encoder.encode(self.pipe.vae, [rgba]).to(self.pipe.transformer.dtype),
                    strength=req.strength)
        return FluxImg2ImgPipeline.from_pipe(self.pipe), call

    def _settings(self, req: _FluxRequest, run_pipe) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "Steps": req.steps, "Sampler": type(run_pipe.scheduler).__name__, "Distilled CFG Scale": req.guidance,
            "Seed": req.seed, "Size": f"{req.width}x{req.height}",
            "Model": getattr(self.pipe, "name_or_path", None) or self.pipe.config.get("_name_or_path", ""),
        }
        if req.init_image is not None:
            settings["Denoising strength"] = req.strength
        settings.update(req.settings.to_infotext())
        return {k: v for k, v in settings.items() if v not in ("", None)}


def _step_callback(on_progress: Optional[ProgressCallback], req: _FluxRequest, applied):
    """A diffusers `callback_on_step_end` that reports progress and takes the LoRA out once
    `stop_at` of the steps are done (the reference's "Stop At")."""
    def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        total = int(getattr(pipe, "num_timesteps", None) or req.steps)
        if applied.active and (step + 1) >= req.settings.stop_at * total:
            applied.restore()
        if on_progress is not None:
            on_progress("Sampling", step + 1, total)
        return {}
    return step_end
