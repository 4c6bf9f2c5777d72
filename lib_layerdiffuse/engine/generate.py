"""LayerDiffuse on a user's own diffusers pipeline.

>>> from diffusers import StableDiffusionXLPipeline
>>> pipe = StableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
>>> ld = LayerDiffuse(pipe)
>>> result = ld.generate("an apple, high quality", method="FG_ONLY_ATTN", seed=12345)
>>> result.rgba[0].save("apple.png")          # straight-alpha RGBA

Every generation patches the UNet (or installs the SD1.5 attention-sharing processors) on
entry and restores it on exit, also on errors, so the pipeline is unchanged between calls.
Everything that can be checked (model family, method, condition images, batch, sizes, weight
files) is checked before sampling starts.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..images import to_rgba_uint8
from ..methods import Family, Method, PatchKind
from ..params import LayerDiffuseParams, ResizeMode
from ..patches import apply_frozen_patches, parse_frozen_patches
from ..vae.frontends import decoder_for, default_device_and_dtype, encoder_for
from ..weights import WeightStore
from .basics import fit_rgba, format_infotext, positive_int, step_reporter
from .conditions import condition_latents, control_pixels
from .family import (
    QWEN21_TRANSFORMER,
    UnsupportedModelError,
    check_method_family,
    compatibility_warning,
    family_of_unet,
    locate_model,
)
from .outputs import LayerResult, ProgressCallback, decode_outputs
from .samplers import default_sampler, make_scheduler, parse_sampler
from .sharing import AttentionSharingWeights, SharingState, install_attention_sharing
from .unet_hook import UNetStepHook, stop_timestep

DEFAULT_STEPS = 25
DEFAULT_CFG = 7.0
PIPELINES = {Family.SDXL: "StableDiffusionXLPipeline", Family.SD15: "StableDiffusionPipeline",
             Family.FLUX: "FluxPipeline", Family.QWEN21: "QwenImage21Pipeline"}


@dataclass
class _Request:
    """A generation request after validation."""

    settings: LayerDiffuseParams
    prompt: str
    negative_prompt: str
    steps: int
    cfg: float
    seed: int
    width: int
    height: int
    batch: int
    sampler: Optional[str]
    init_image: Optional[np.ndarray]
    strength: float
    each: Optional[list[tuple[str, int]]] = None  # one (prompt, seed) per image: `generate_each`


def _layer_settings(weight, stop_at, fg, bg, blend, resize_mode, fg_prompt, bg_prompt, blend_prompt) -> dict:
    """`generate`'s LayerDiffuse keywords as `LayerDiffuseParams` fields."""
    return dict(weight=weight, stop_at=stop_at, fg_image=fg, bg_image=bg, blend_image=blend,
                resize_mode=resize_mode, fg_prompt=fg_prompt, bg_prompt=bg_prompt, blend_prompt=blend_prompt)


class LayerDiffuse:
    """LayerDiffuse methods on a `StableDiffusionXLPipeline` or `StableDiffusionPipeline`; given
    a `FluxPipeline`, the Flux engine (`engine.flux.FluxLayerDiffuse`), given a
    `QwenImage21Pipeline` the native-RGBA engine (`engine.qwen.QwenImage21Engine`), with the
    same calls."""

    def __new__(cls, pipe=None, *args: Any, **kwargs: Any):
        transformer = getattr(pipe, "transformer", None)
        if cls is LayerDiffuse and transformer is not None and getattr(pipe, "unet", None) is None:
            if type(transformer).__name__ == QWEN21_TRANSFORMER:
                from .qwen import QwenImage21Engine

                return QwenImage21Engine(pipe, *args, **kwargs)
            from .flux import FluxLayerDiffuse

            return FluxLayerDiffuse(pipe, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, pipe, store: Optional[WeightStore] = None, decoder_passes: int = 8,
                 progress: bool = True, backup_device: Union[str, torch.device] = "cpu"):
        self.pipe = pipe
        self.family = family_of_unet(pipe.unet)
        self.store = store or WeightStore(progress=progress)
        self.decoder_passes = decoder_passes
        self.progress = progress
        self.backup_device = backup_device
        self._loaded: dict[str, Any] = {}

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: str, method: Union[Method, str, None] = None, device=None, dtype=None,
                   local_files_only: bool = False, **kwargs: Any) -> "LayerDiffuse":
        """Load a pipeline from a hub id, a diffusers folder or a single .safetensors checkpoint.

        The family is read from the model's UNet or transformer config or tensor names first
        (a FLUX.1 model gives the Flux engine), and checked
        against `method` before the (large) weights are loaded. `local_files_only` reads hub
        models from the Hugging Face cache only (no network); so does a hub that cannot be
        reached (checked once, quickly), instead of waiting through the hub client's retries.
        """
        location = locate_model(model, local_files_only)
        family = location.family
        warning = compatibility_warning(model)
        if warning:
            warnings.warn(warning, stacklevel=2)
        if method is not None:
            check_method_family(Method.parse(method, family=family), family)
        if family is Family.QWEN21 and Path(model).is_file():
            raise UnsupportedModelError(f"{model} is a single Qwen-Image-2.1 transformer file; the diffusers engine "
                                        "loads the whole model (VAE, text encoder, processor): give its diffusers "
                                        "folder or hub id (Qwen/Qwen-Image-2.1)")
        import diffusers

        pipe_cls = getattr(diffusers, PIPELINES[family])
        device, default_dtype = default_device_and_dtype(device, dtype)
        if dtype is None:  # the DiTs' own dtype on GPUs: in fp16 their activations overflow
            dtype = torch.bfloat16 if family in (Family.FLUX, Family.QWEN21) and device.type == "cuda" else default_dtype
        extra = {"safety_checker": None, "requires_safety_checker": False} if family is Family.SD15 else {}
        extra[_dtype_keyword()] = dtype
        if location.local_only:
            extra["local_files_only"] = True
        try:
            if family is Family.QWEN21:
                from .qwen_processor import processor_kwargs

                extra.update(processor_kwargs(model, "Qwen3VLProcessor", location.local_only))
            if Path(model).is_file():
                pipe = pipe_cls.from_single_file(model, **extra)
            else:
                pipe = pipe_cls.from_pretrained(model, **extra)
        except Exception as exc:
            raise RuntimeError(f"could not load {family.label} model {model!r}: {type(exc).__name__}: "
                               f"{exc}") from exc
        return LayerDiffuse(pipe.to(device), **kwargs)

    def _weights(self, name: str, kind: PatchKind):
        """Parsed patches or attention-sharing modules of a UNet file, kept for the next call
        (one file at a time: they are large)."""
        if name not in self._loaded:
            self._loaded.clear()
            state_dict = self.store.load(name)
            source = str(self.store.path(name))
            if kind is PatchKind.ATTENTION_SHARING:
                self._loaded[name] = AttentionSharingWeights.from_state_dict(state_dict, self.pipe.unet, source)
            else:
                self._loaded[name] = parse_frozen_patches(state_dict)
        return self._loaded[name]

    # ---- validation ----------------------------------------------------------------------

    def default_size(self) -> int:
        pipe = self.pipe
        size = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
        return int(size) * int(getattr(pipe, "vae_scale_factor", 8))

    def _request(self, prompt: str, method, negative_prompt: str, steps, cfg, seed, width, height,
                 batch, sampler, init_image, strength, layer: dict[str, Any]) -> _Request:
        method = Method.parse(method or Method.default(self.family), family=self.family)
        check_method_family(method, self.family)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be text, got {type(prompt).__name__}")
        settings = LayerDiffuseParams(enabled=True, method=method, **layer)
        spec = method.spec
        settings.require_condition_images()
        unused = [n for n in ("fg", "bg", "blend")
                  if n not in spec.conditions and settings.layer_image(n) is not None]
        if unused:
            raise ValueError(f"{method.value} does not use a {' or '.join(unused)} image; it takes "
                             f"{', '.join(spec.conditions) or 'no condition images'}")
        init = to_rgba_uint8(init_image, "init_image")
        if init is not None and (width is None or height is None):
            width = width or init.shape[1] // 8 * 8
            height = height or init.shape[0] // 8 * 8
        width = positive_int("width", width if width is not None else self.default_size())
        height = positive_int("height", height if height is not None else self.default_size())
        if width % 8 or height % 8:
            raise ValueError(f"width and height must be multiples of 8, got {width}x{height}")
        frames = spec.frame_count
        batch = positive_int("batch", batch if batch is not None else frames)
        if batch % frames:
            raise ValueError(f"{method.value} generates {frames} images together "
                             f"({', '.join(spec.frames)}); the batch must be a multiple of {frames}, "
                             f"got {batch}")
        if sampler is None:
            sampler = default_sampler(method)
        strength = float(strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        return _Request(
            settings=settings, prompt=prompt, negative_prompt=negative_prompt or "",
            steps=positive_int("steps", steps if steps is not None else DEFAULT_STEPS),
            cfg=float(cfg if cfg is not None else DEFAULT_CFG),
            seed=int(seed) if seed is not None else random.randrange(2**32),
            width=width, height=height, batch=batch,
            sampler=parse_sampler(sampler) if sampler else None, init_image=init, strength=strength)

    # ---- generation ----------------------------------------------------------------------

    def generate(self, prompt: str, method: Union[Method, str, None] = None, *,
                 negative_prompt: str = "", steps: Optional[int] = None, cfg: Optional[float] = None,
                 seed: Optional[int] = None, width: Optional[int] = None, height: Optional[int] = None,
                 batch: Optional[int] = None, fg=None, bg=None, blend=None, weight: float = 1.0,
                 stop_at: float = 1.0, resize_mode: Union[ResizeMode, str, int] = ResizeMode.CROP_AND_RESIZE,
                 fg_prompt: str = "", bg_prompt: str = "", blend_prompt: str = "",
                 sampler: Optional[str] = None, init_image=None, strength: float = 0.7,
                 on_progress: Optional[ProgressCallback] = None) -> LayerResult:
        """Generate with a LayerDiffuse method; returns the images of every frame.

        `batch` counts images; the SD1.5 multi-frame methods need a multiple of their frames
        (default: one set). `fg`/`bg`/`blend` are condition images (PIL, arrays, paths are not
        read here). `init_image` turns it into img2img; an RGBA init image goes through the
        transparent encoder for the methods that have one. `on_progress(stage, done, total)`
        is called after every sampling step and every decoded image.
        """
        layer = _layer_settings(weight, stop_at, fg, bg, blend, resize_mode, fg_prompt, bg_prompt, blend_prompt)
        req = self._request(prompt, method, negative_prompt, steps, cfg, seed, width, height, batch,
                            sampler, init_image, strength, layer)
        images, settings, calls = self._run(req, on_progress)
        return LayerResult(images, req.settings.method, req.seed,
                           format_infotext(req.prompt, req.negative_prompt, settings), settings, unet_calls=calls)

    def generate_each(self, items: Sequence[tuple[str, int]], method: Union[Method, str, None] = None, *,
                      on_progress: Optional[ProgressCallback] = None, **shared: Any) -> list[LayerResult]:
        """One image per (prompt, seed) of `items`, sampled together as one batch; each comes out
        as `generate(prompt, method, seed=seed, **shared)` would make it alone (every image has
        its own noise generator). For the one-frame methods without an init image; `shared`
        takes `generate`'s other keywords except `batch`."""
        if not items:
            raise ValueError("generate_each needs at least one (prompt, seed)")
        if "batch" in shared or "init_image" in shared and shared["init_image"] is not None:
            raise ValueError("generate_each makes one image per item from text; batch and init_image do not apply")
        signature = inspect.signature(self.generate)
        allowed = set(signature.parameters) - {"prompt", "method", "seed", "batch", "on_progress", "init_image"}
        unknown = sorted(set(shared) - allowed)
        if unknown:
            raise TypeError(f"generate_each got unknown settings: {', '.join(unknown)}")
        bound = signature.bind(items[0][0], **shared)
        bound.apply_defaults()  # generate's own defaults, kept in one place
        a = bound.arguments
        layer = _layer_settings(a["weight"], a["stop_at"], a["fg"], a["bg"], a["blend"], a["resize_mode"],
                                a["fg_prompt"], a["bg_prompt"], a["blend_prompt"])
        method = Method.parse(method or Method.default(self.family), family=self.family)
        if method.spec.frame_count != 1:
            raise ValueError(f"{method.value} makes {method.spec.frame_count} frames together; generate_each "
                             "is for one-frame methods (use generate with a batch)")
        first_prompt, first_seed = items[0]
        req = self._request(first_prompt, method, a["negative_prompt"], a["steps"], a["cfg"], first_seed,
                            a["width"], a["height"], len(items), a["sampler"], None, a["strength"], layer)
        req.each = [(str(p), int(s)) for p, s in items]
        images, settings, calls = self._run(req, on_progress)
        results = []
        for image, (prompt, seed) in zip(images, req.each):
            own = {**settings, "Seed": seed}
            image.index = 0
            results.append(LayerResult([image], req.settings.method, seed,
                                       format_infotext(prompt, req.negative_prompt, own), own, unet_calls=calls))
        return results

    def _run(self, req: _Request, on_progress: Optional[ProgressCallback]):
        """Sample and decode `req`: (images, settings, (UNet calls with / after LayerDiffuse))."""
        method = req.settings.method
        spec = method.spec
        pipe = self.pipe
        weights = self._weights(spec.unet_file, spec.patch_kind)
        device = pipe.unet.device
        dec_device, dec_dtype = default_device_and_dtype(device)
        decoder = (decoder_for(self.family, self.store, dec_device, dec_dtype) if spec.transparent else None)
        run_pipe, call = self._pipeline_call(req)
        run_pipe.set_progress_bar_config(disable=not self.progress)
        if on_progress is not None:
            call["callback_on_step_end"] = step_reporter(on_progress, req.steps)
        condition = self._concat_condition(req)
        with contextlib.ExitStack() as stack:
            if spec.patch_kind is PatchKind.ATTENTION_SHARING:
                state = SharingState(spec.frame_count, images=req.batch,
                                     frame_contexts=self._frame_contexts(req))
                control = None
                if spec.conditions:
                    image, = req.settings.condition_images()
                    control = control_pixels(image, req.width, req.height, req.settings.resize_mode)
                installed = install_attention_sharing(pipe.unet, weights, state, control)
                stack.callback(installed.remove)
                on_stop = lambda: setattr(state, "active", False)  # noqa: E731
            else:
                applied = apply_frozen_patches(pipe.unet, weights, self.family, req.settings.weight,
                                               self.backup_device, str(self.store.path(spec.unet_file)),
                                               progress=self.progress)
                stack.callback(applied.restore)
                on_stop = applied.restore
            if req.sampler:
                original_scheduler = run_pipe.scheduler
                run_pipe.scheduler = make_scheduler(req.sampler, original_scheduler.config, method)
                stack.callback(setattr, run_pipe, "scheduler", original_scheduler)
            total = run_pipe.scheduler.config.get("num_train_timesteps", 1000)
            hook = stack.enter_context(UNetStepHook(pipe.unet, condition,
                                                    stop_timestep(req.settings.stop_at, total), on_stop))
            latents = run_pipe(**call).images
        images = decode_outputs(pipe.vae, latents, method, decoder, self.decoder_passes, self.progress,
                                on_progress)
        return images, self._settings(req, run_pipe), (hook.calls_active, hook.calls_stopped)

    def _pipeline_call(self, req: _Request):
        call: dict[str, Any] = dict(
            prompt=req.prompt, negative_prompt=req.negative_prompt or None,
            num_inference_steps=req.steps, guidance_scale=req.cfg, num_images_per_prompt=req.batch,
            generator=torch.Generator("cpu").manual_seed(req.seed), output_type="latent")
        if req.each is not None:  # one prompt and one noise generator per image
            call.update(prompt=[p for p, _ in req.each], num_images_per_prompt=1,
                        negative_prompt=[req.negative_prompt] * len(req.each) if req.negative_prompt else None,
                        generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in req.each])
        if req.init_image is None:
            call.update(width=req.width, height=req.height)
            return self.pipe, call
        from diffusers import AutoPipelineForImage2Image

        img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
        rgba = fit_rgba(req.init_image, req.width, req.height)
        method = req.settings.method
        if method.spec.encoder_file:
            enc_device, enc_dtype = default_device_and_dtype(self.pipe.unet.device)
            encoder = encoder_for(self.family, self.store, enc_device, enc_dtype)
            image = encoder.encode(self.pipe.vae, [rgba]).to(self.pipe.unet.dtype)
        else:
            from ..vae.pixels import flatten_over_grey, to_uint8
            image = Image.fromarray(to_uint8(flatten_over_grey(rgba)), "RGB")
        call.update(image=image, strength=req.strength)
        return img2img, call

    @torch.no_grad()
    def _concat_condition(self, req: _Request) -> Optional[torch.Tensor]:
        spec = req.settings.method.spec
        if spec.patch_kind is PatchKind.ATTENTION_SHARING or not spec.conditions:
            return None
        latents = [condition_latents(self.pipe.vae, [img], req.width, req.height, req.settings.resize_mode)
                   for img in req.settings.condition_images()]
        return torch.cat(latents, dim=1).to(self.pipe.unet.dtype)

    @torch.no_grad()
    def _frame_contexts(self, req: _Request) -> list[Optional[torch.Tensor]]:
        """Per frame, the text context of its prompt (None: the main prompt's)."""
        return [None if text is None else self.pipe.encode_prompt(text, self.pipe.unet.device, 1, False)[0]
                for text in req.settings.frame_prompts(req.prompt)]

    def _settings(self, req: _Request, run_pipe) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "Steps": req.steps, "Sampler": req.sampler or type(run_pipe.scheduler).__name__,
            "CFG scale": req.cfg, "Seed": req.seed, "Size": f"{req.width}x{req.height}",
            "Model": getattr(self.pipe, "name_or_path", None) or self.pipe.config.get("_name_or_path", ""),
        }
        if req.init_image is not None:
            settings["Denoising strength"] = req.strength
        settings.update(req.settings.to_infotext())
        return {k: v for k, v in settings.items() if v not in ("", None)}


def _dtype_keyword() -> str:
    """`dtype` where diffusers has renamed `torch_dtype` (and warns about the old name)."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
