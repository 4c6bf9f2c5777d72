"""What `process_before_every_sampling` does: patch a fresh clone of the UNet for one sampling
pass (Forge resets its objects before every pass, up to three times with hires fix, so this
must build everything from scratch each time and assign it back only once it is complete)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from ..engine.conditions import control_pixels, prepare_condition
from ..engine.sharing import SharingState
from ..methods import Family, PatchKind
from ..params import LayerDiffuseParams
from ..unet_blocks import attention_modules
from .attention import SharedAttention, unwrap
from .host import ForgeHost
from .unet_files import forge_flux_patches, forge_patches, sharing_weights


def patch_unet(p: Any, params: LayerDiffuseParams, host: ForgeHost, noise: torch.Tensor) -> None:
    """Replace `p.sd_model.forge_objects.unet` by a clone patched for `params.method`."""
    spec = params.method.spec
    batch, _, h, w = noise.shape
    objects = p.sd_model.forge_objects
    unet = objects.unet.clone()
    original: Optional[Any] = None
    if spec.patch_kind is PatchKind.ATTENTION_SHARING:
        state = _install_sharing(p, params, host, unet, w * 8, h * 8)
        on_stop: Callable[[], None] = lambda: setattr(state, "active", False)  # noqa: E731
    else:
        if params.stop_at < 1.0:
            original = objects.unet.clone()
        if spec.patch_kind is PatchKind.TRANSFORMER_LORA:
            model = unet.model.diffusion_model
            patches, filename = forge_flux_patches(spec.unet_file, int(model.hidden_size),
                                                   int(model.single_blocks[0].mlp_hidden_dim))
        else:
            patches, filename = forge_patches(spec.unet_file)
        applied = host.add_weight_patches(unet, filename, patches, params.weight)
        if applied != set(patches):
            missing = sorted(map(str, set(patches) - applied))
            raise ValueError(f"the loaded model did not accept {len(missing)} of {len(patches)} weights of "
                             f"{spec.unet_file} (first: {missing[0]}); is the checkpoint a base model of "
                             f"the {params.method.family.label} family?")
        if spec.conditions and (params.weight != 0.0 or host.widens_at_zero_weight):
            # at weight 0 Forge and early Forge skip the `diff` patch that widens conv_in, so the
            # UNet still takes 4 channels and an attached condition would not fit (Neo pads it)
            host.attach_concat_condition(unet, concat_condition(p, params, host, batch, w * 8, h * 8))
        on_stop = lambda: None  # noqa: E731
    if params.stop_at < 1.0:
        sigma_end = host.percent_to_sigma(unet, params.stop_at)
        unet.add_conditioning_modifier(stop_modifier(sigma_end, host, original, on_stop))
    objects.unet = unet


def _install_sharing(p: Any, params: LayerDiffuseParams, host: ForgeHost, unet, width: int,
                     height: int) -> SharingState:
    spec = params.method.spec
    model = unet.model.diffusion_model
    names = attention_modules(Family.SD15)
    modules = [unwrap(model.get_submodule(n)) for n in names]
    weights = sharing_weights(spec.unet_file, modules)
    state = SharingState(spec.frame_count, frame_contexts=frame_contexts(p, params))
    if spec.conditions:
        state.encoder = weights.kwargs_encoder
        image, = params.condition_images()
        state.control_image = control_pixels(image, width, height, params.resize_mode)
    for name, module, layer in zip(names, modules, weights.hookers.layers):
        unet.add_object_patch("diffusion_model." + name, SharedAttention(module, layer, state, host.linear_weights))
    # loaded with the UNet through the network's one patcher (no cast: current Forge's UNet has
    # no `dtype`, and SharedAttention moves the weights to the activations' device and dtype)
    unet.add_extra_model_patcher_during_sampling(host.patcher_for(weights))
    return state


@torch.no_grad()
def concat_condition(p: Any, params: LayerDiffuseParams, host: ForgeHost, batch: int, width: int,
                     height: int) -> torch.Tensor:
    """The SDXL concat condition `[batch, 4 * n, h, w]` in model space. Forge attaches it only
    when its batch equals the sampler's, so it is repeated to the batch (the reference's batch-1
    condition is silently dropped for larger batches and the widened conv_in then fails)."""
    latents = []
    for image in params.condition_images():
        rgb = prepare_condition(image, width, height, params.resize_mode)
        latents.append(host.encode_pixels(p, torch.from_numpy(np.ascontiguousarray(rgb))[None]))
    condition = torch.cat(latents, dim=1)
    return condition.expand(batch, -1, -1, -1).contiguous()


@torch.no_grad()
def frame_contexts(p: Any, params: LayerDiffuseParams) -> list[Optional[torch.Tensor]]:
    """Per frame, the text context of its prompt (None: the main prompt's)."""
    prompt = (getattr(p, "prompts", None) or [p.prompt])[0]
    contexts: list[Optional[torch.Tensor]] = []
    for text in params.frame_prompts(prompt):
        cond = None if text is None else p.sd_model.get_learned_conditioning([text])
        contexts.append(cond["crossattn"] if isinstance(cond, dict) else cond)
    return contexts


def without_concat(conds: Optional[list]) -> Optional[list]:
    """Copies of Forge's condition dicts without the concat condition (for the unpatched UNet)."""
    if conds is None:
        return None
    out = []
    for c in conds:
        model_conds = {k: v for k, v in c.get("model_conds", {}).items() if k != "c_concat"}
        out.append({**c, "model_conds": model_conds})
    return out


def stop_modifier(sigma_end: float, host: ForgeHost, original_unet: Optional[Any],
                  on_stop: Callable[[], None]) -> Callable:
    """Forge conditioning modifier for "Stop At": from the first step whose sigma is below
    `sigma_end` on, sample with the unpatched UNet (weight patches) or with sharing switched
    off, and without the concat condition."""
    stopped = [False]

    def modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if float(timestep.flatten()[0]) < sigma_end:
            if not stopped[0]:
                stopped[0] = True
                on_stop()
                if original_unet is not None:
                    host.sampling_prepare(original_unet, x)
            if original_unet is not None:
                model = original_unet.model
            cond, uncond = without_concat(cond), without_concat(uncond)
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    return modifier
