"""The Forge script hooks, called by `scripts/forge_layerdiffuse.py`.

Each hook reads this job's state from the processing object `p`; none of them raises into
Forge (which would hide the error in the server log and carry on half-patched): failures go
through `Job.fail`, which switches LayerDiffuse off for the job and tells the user. The cutout
(`forge/cutout.py`) has its own switch and its own failures.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from typing import Any, Callable, Mapping

import torch
from PIL import Image

from ..engine.family import check_method_family, family_of_forge_model
from ..methods import Family, Method
from ..params import LayerDiffuseParams
from ..settings import name_key
from .cutout import cut_out_image, looks_enabled, split_script_args, start_cutout
from .decode import decode_batch, keep_sampler_output
from .detect import detect_host
from .img2img import prepare_transparent_init
from .job import UNPINNED_KEY, Job, job_of, start_job
from .sampling import patch_unet
from .saving import add_preview, finish_outputs, show_transparent
from .settings_page import default_method
from .ui import START_METHODS
from .unet_files import weight_store


def _guarded(hook: Callable) -> Callable:
    @functools.wraps(hook)
    def run(p: Any, *args: Any, **kwargs: Any) -> None:
        job = job_of(p)
        if job is not None and not (job.active or job.cutting):
            return
        try:
            hook(p, *args, **kwargs)
        except Exception as exc:
            traceback.print_exc()
            job = job_of(p) or start_job(p, Job(params=None))
            job.fail(p, f"{type(exc).__name__}: {exc}")
    return run


@_guarded
def process(p: Any, *args: Any) -> None:
    """Before the batch loop: parse the settings, check host, model and inputs, write the infotext."""
    job = start_job(p, Job(params=None))
    args, cutout_args = split_script_args(args)
    start_cutout(p, job, cutout_args)
    try:
        job.params = LayerDiffuseParams.from_script_args(*args)
    except (TypeError, ValueError) as exc:
        if looks_enabled(args):
            job.fail(p, f"invalid LayerDiffuse settings: {exc}")
        return
    params = job.params
    if not params.enabled:
        return
    job.host = detect_host()
    if params.method.family is Family.FLUX and job.host.generation < 2:
        raise ValueError(f"{job.host.label} has no Flux; {params.method.value} needs current Forge (August 2024 "
                         "or later), or run it outside Forge with `python -m lib_layerdiffuse generate`")
    if params.method.family.native_rgba:
        raise ValueError(f"{params.method.value} is for the diffusers engine (`python -m lib_layerdiffuse "
                         f"generate`); in a WebUI that runs {params.method.family.label} (Forge Neo), its own "
                         "engine makes the RGBA image: switch LayerDiffuse off")
    diffusion_model = p.sd_model.forge_objects.unet.model.diffusion_model
    job.family = family_of_forge_model(diffusion_model, "the loaded checkpoint")
    job.params = params = LayerDiffuseParams.from_script_args(*args, family=job.family)
    if params.method.family is not job.family and method_not_chosen(args, params.method):
        chosen = default_method(job.family)
        job.note(p, f"no method was chosen for this {job.family.label} checkpoint ('{params.method.value}' is the "
                    f"panel's start value); its default '{chosen.value}' ran")
        job.params = params = dataclasses.replace(params, method=chosen)
    check_method_family(params.method, job.family, host=job.host.label)
    params.require_condition_images()
    spec = params.method.spec
    if p.batch_size % spec.frame_count:
        raise ValueError(f"{params.method.value} generates {spec.frame_count} images together "
                         f"({', '.join(spec.frames)}); set Batch size to a multiple of {spec.frame_count} "
                         f"(it is {p.batch_size})")
    p.extra_generation_params.update(params.to_infotext())


def method_not_chosen(args: tuple, method: Method) -> bool:
    """The call named no method: a dict of named values without one, or positional values whose
    method is what Forge's API fills in for a missing one (the panel's start value)."""
    if args and isinstance(args[0], Mapping):
        table = LayerDiffuseParams.name_table()
        return "method" not in {table.get(name_key(k)) for k in args[0] if isinstance(k, str)}
    return method in START_METHODS


@_guarded
def before_sampling(p: Any, *args: Any, **kwargs: Any) -> None:
    """`process_before_every_sampling`: patch a fresh UNet clone for this pass."""
    job = job_of(p)
    if job is None or not job.active:
        return
    patch_unet(p, job.params, job.host, kwargs["noise"])
    if job.params.method.spec.transparent:
        keep_sampler_output(p, job)
    job.sampling_passes += 1
    record_unpinned(p, job)


@_guarded
def before_init_images(p: Any, pp: dict, *args: Any, **kwargs: Any) -> None:
    job = job_of(p)
    if job is None or not job.active:
        return
    prepare_transparent_init(p, job, (pp or {}).get("crop_region"))


@_guarded
def post_sample(p: Any, ps: Any, *args: Any) -> None:
    job = job_of(p)
    if job is not None and job.active and job.params.method.spec.transparent:
        if isinstance(ps.samples, torch.Tensor):  # hires fix: pixels; the sampler's output is kept
            job.latents = ps.samples.detach()


@_guarded
def postprocess_batch(p: Any, *args: Any, images=None, **kwargs: Any) -> None:
    job = job_of(p)
    if job is not None and job.active and job.params.method.spec.transparent:
        decode_batch(p, job, images)
        record_unpinned(p, job)


def record_unpinned(p: Any, job: Job) -> None:
    """Name in the infotext this method's files that are not the official ones (the user
    allowed unpinned files), with the start of their SHA-256."""
    unpinned = weight_store().unpinned
    used = [name for name in job.params.method.weight_files if name in unpinned]
    if used:
        p.extra_generation_params[UNPINNED_KEY] = ", ".join(
            f"{name} sha256 {unpinned[name][:12]}" for name in used)


@_guarded
def after_composite(p: Any, pp: Any, *args: Any) -> None:
    """`postprocess_image_after_composite`: the RGBA becomes the image Forge saves and returns;
    the checkerboard preview (and on request the opaque original) are extra images. Images
    LayerDiffuse did not make transparent go to the cutout when it is on."""
    job = job_of(p)
    if job is None:
        return
    transparent = job.active and _use_transparent(p, pp, job)
    if job.cutting and not transparent:
        cut_out_image(p, pp, job)


def _use_transparent(p: Any, pp: Any, job: Job) -> bool:
    index = p.batch_index
    rgba = job.outputs.get(index)
    if rgba is None:
        return False
    if pp.image.size != (rgba.shape[1], rgba.shape[0]):
        job.note(p, "the transparent result was not used because the final image has another size "
                    "(inpainting 'only masked' pastes it into the full picture)")
        return False
    original = pp.image
    pp.image = show_transparent(p, Image.fromarray(rgba, "RGBA"), index)
    add_preview(p, rgba, index)
    if job.params.output_origin:
        p.extra_result_images.append(original)
    return True


def postprocess(p: Any, processed: Any) -> None:
    """`postprocess`, after the whole job: results that Forge did not save (and their grids)
    get their alpha too."""
    if job_of(p) is None:
        return
    try:
        images = getattr(processed, "images", None) or []
        finish_outputs([*images, *(getattr(processed, "extra_images", None) or [])])
    except Exception:  # a by-product: never take the finished job down
        traceback.print_exc()
