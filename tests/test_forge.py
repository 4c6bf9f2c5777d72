"""The Forge extension against stand-ins of both Forge generations: host detection, every
method's patches, hook idempotence, batches, decoding order, alpha that survives saving,
API arguments, infotext, transparent img2img and importing the script file."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lib_layerdiffuse import form
from lib_layerdiffuse.cutout import CutoutSettings
from lib_layerdiffuse.forge import hooks, saving, ui, unet_files
from lib_layerdiffuse.forge.attention import SharedAttention
from lib_layerdiffuse.forge.cutout import split_script_args
from lib_layerdiffuse.forge.detect import detect_host
from lib_layerdiffuse.forge.host import UnsupportedHostError
from lib_layerdiffuse.forge.job import ERROR_KEY, job_of
from lib_layerdiffuse.images import to_png_base64
from lib_layerdiffuse.methods import Family, Method, PatchKind
from lib_layerdiffuse.params import LayerDiffuseParams
from lib_layerdiffuse.previews import preview
from lib_layerdiffuse.testing.composites import synthetic_case
from lib_layerdiffuse.testing.flux import tiny_flux_transformer, to_bfl_state_dict
from lib_layerdiffuse.unet_blocks import attention_modules
from lib_layerdiffuse.vae.frontends import decoder_for
from lib_layerdiffuse.weights import WeightStore

import fake_forge as ff
from sharing_reference import published_unit

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def set_stealth(forge, mode: str) -> None:
    """The stealth-infotext setting, on the hosts whose settings have it (Neo removed it)."""
    if forge.generation != 3:
        forge.opts.data["stealth_pnginfo_option"] = mode


def rgba_image(seed, size=48):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    img[..., 3] = np.where(rng.random((size, size)) > 0.5, 255, 0)
    return img


def args_for(method, **kw):
    values = dict(enabled=True, method=method.value, **kw)
    for c in method.spec.conditions:
        values.setdefault(f"{c}_image", rgba_image(len(c)))
    return LayerDiffuseParams.from_script_args(values).to_script_args()


@dataclasses.dataclass
class PostSampleArgs:
    samples: torch.Tensor


@dataclasses.dataclass
class PostprocessImageArgs:
    image: Image.Image
    index: int


def run_job(p, args, hires=False, processed=None):
    """The order in which Forge calls the hooks (modules/processing.py), with a stand-in
    sampler: returns the patched UNets of every pass and the final images.

    Each final image is saved as Forge saves it when `p.save_samples()`; with more than one, a
    grid is composed (and saved); then `postprocess` gets the results (`processed`, a
    namespace, receives them: `images` with the grid first, `extra_images`).

    With `hires` the batch gets a hires pass at twice the size, as Forge runs it: a new sampler,
    `process_before_every_sampling` (current Forge calls it twice, resetting its objects in
    between), `sample_img2img`, then Forge decodes itself and `post_sample` gets pixels."""
    hooks.process(p, *args)
    patched, outputs = [], []
    b = p.batch_size
    family = p.sd_model.family
    vae = p.sd_model.forge_objects.vae
    channels = 16 if family == "flux" else 4
    for n in range(p.n_iter):
        p.iteration = n
        p.sampler = ff.Sampler()  # txt2img creates it at the start of its sample()
        noise = torch.randn(b, channels, p.height // 8, p.width // 8, generator=torch.Generator().manual_seed(n))
        p.sd_model.reset_objects()
        hooks.before_sampling(p, *args, x=noise, noise=noise, c=None, uc=None)
        patched.append(p.sd_model.forge_objects.unet)
        samples = p.sampler.sample(p, noise, None, None)
        if hires:
            p.is_hr_pass, p.sampler = True, ff.Sampler()
            samples = torch.nn.functional.interpolate(samples, scale_factor=2.0, mode="nearest")
            noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(100 + n))
            for _ in range(2 if forge_generation(p) == 2 else 1):
                p.sd_model.reset_objects()
                hooks.before_sampling(p, *args, x=samples, noise=noise, c=None, uc=None)
                patched.append(p.sd_model.forge_objects.unet)
            samples = p.sampler.sample_img2img(p, samples, noise, None, None)
            images = vae.decode(ff.raw_latents(family, samples)).movedim(-1, 1)
            p.is_hr_pass = False
            hooks.post_sample(p, PostSampleArgs(ff.DecodedSamples(images)), *args)
        else:
            hooks.post_sample(p, PostSampleArgs(samples), *args)
            images = vae.decode(ff.raw_latents(family, samples)).movedim(-1, 1)
        hooks.postprocess_batch(p, *args, images=images, batch_number=n)
        for i in range(b):
            p.batch_index = i
            pixels = (images[i].movedim(0, -1).numpy() * 255).round().astype(np.uint8)
            pp = PostprocessImageArgs(Image.fromarray(pixels), i + n * b)
            hooks.after_composite(p, pp, *args)
            if p.save_samples():
                images_module().save_image(pp.image, "outputs", "", p.seeds[0], p.prompts[0],
                                           sys.modules["modules.shared"].opts.samples_format, info="parameters", p=p)
            outputs.append(pp.image)
    results = list(outputs)
    if len(outputs) > 1:
        grid = images_module().image_grid(outputs, p.batch_size)
        if p.save_samples():
            images_module().save_image(grid, "grids", "grid", p.seeds[0], p.prompts[0],
                                       sys.modules["modules.shared"].opts.grid_format, info="parameters", p=p, grid=True)
        results.insert(0, grid)
    processed = processed if processed is not None else types.SimpleNamespace()
    processed.images, processed.extra_images = results, p.extra_result_images
    hooks.postprocess(p, processed)
    return patched, outputs


def images_module():
    return sys.modules["modules.images"]


def forge_generation(p) -> int:
    return p.sd_model.forge_objects.unet.generation


def processing(family, generation, **kw):
    return ff.Processing(ff.SdModel(family, generation), width=SIZE, height=SIZE, **kw)


def file_patches(forge, method, strength):
    """What Forge's own load_frozen_patcher makes of the method's file."""
    from safetensors.torch import load_file

    base = processing("sdxl", forge.generation).sd_model.forge_objects.unet
    sd = load_file(str(forge.folder / method.spec.unet_file))
    if forge.generation == 1:
        base.load_frozen_patcher(sd, strength)
        return {k: v[0][1] for k, v in base.patches.items()}
    if forge.generation == 3:  # the same raw tuples (that Neo's merge then rejects)
        base.load_frozen_patcher("x", sd, strength)
        return {k: v[0][1] for k, v in base.patches.items()}
    base.load_frozen_patcher("x", sd, strength)
    return {k: v[0][1] for k, v in next(iter(base.lora_patches.values())).items()}


def accepted(unet):
    """{key: (strength, (type, slots))} of the weight patches on a patcher (Neo's adapters and
    padded diffs read back into that form)."""
    if unet.generation == 1:
        return {k: (v[-1][0], v[-1][1]) for k, v in unet.patches.items()}
    if unet.generation == 3:
        return {k: (v[-1][0], from_neo(v[-1][1])) for k, v in unet.patches.items()}
    out = {}
    for (_, strength, _, _), patches in unet.lora_patches.items():
        out.update({k: (strength, v[0][1]) for k, v in patches.items()})
    return out


def from_neo(value):
    """A patch in Neo's form back in the `(type, 16 slots)` form of the other hosts."""
    if isinstance(value, ff.LoRAAdapter):
        return "lora", [t for t in value.weights[:2]] + [None] * 14
    kind, (tensor, options) = value
    assert kind == "diff" and options == {"pad_weight": True}
    return "diff", [tensor] + [None] * 15


# ---- host detection ---------------------------------------------------------------------

def test_each_generation_is_detected(forge):
    host = detect_host()
    assert host.generation == forge.generation
    assert host.supports_transparent_img2img is (forge.generation >= 2)


@pytest.mark.parametrize("tree, message", [
    ({}, "AUTOMATIC1111"),
    ({"ldm_patched": ff._module("ldm_patched"), "ldm_patched.modules": ff._module("ldm_patched.modules"),
      "ldm_patched.modules.model_patcher": ff._module("ldm_patched.modules.model_patcher")}, "reForge"),
])
def test_unsupported_hosts_are_named(monkeypatch, tree, message):
    """AUTOMATIC1111 and reForge are refused with Forge Neo named as the supported route."""
    ff.install(monkeypatch, tree)
    with pytest.raises(UnsupportedHostError, match=message) as refused:
        detect_host()
    assert "Forge Neo" in str(refused.value)


def test_neo_is_told_apart_by_its_patcher_and_named_with_its_release(monkeypatch):
    """Neo is found by what differs (its merge takes weight adapters), not by its version file;
    the release only goes into the label. A Neo lacking an API LayerDiffuse uses is refused by name."""
    tree = ff.forge_modules(3, ff.Memory())
    del tree["modules_forge.forge_version"]
    ff.install(monkeypatch, tree)
    host = detect_host()
    assert host.generation == 3 and host.label == "Forge Neo"
    tree = ff.forge_modules(3, ff.Memory())
    ff.install(monkeypatch, tree)
    assert detect_host().label == "Forge Neo 2.26"
    tree["backend.patcher.lora"].weight_adapter = ff._module("weight_adapter")  # no LoRAAdapter
    with pytest.raises(UnsupportedHostError, match="lacks weight_adapter.LoRAAdapter"):
        detect_host()


def test_forks_with_changed_patchers_are_refused(monkeypatch):
    class ClassicPatcher(ff.CurrentUnetPatcher):
        def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
            raise AssertionError("never called")
    tree = ff.forge_modules(2, ff.Memory())
    tree["backend.patcher.unet"] = ff._module("backend.patcher.unet", UnetPatcher=ClassicPatcher)
    ff.install(monkeypatch, tree)
    with pytest.raises(UnsupportedHostError, match="differs from current Forge.*Forge Neo"):
        detect_host()

    class OldPatcher(ff.EarlyUnetPatcher):
        load_frozen_patcher = None
    tree = ff.forge_modules(1, ff.Memory())
    tree["modules_forge.unet_patcher"] = ff._module("modules_forge.unet_patcher", UnetPatcher=OldPatcher)
    ff.install(monkeypatch, tree)
    with pytest.raises(UnsupportedHostError, match="too old"):
        detect_host()


def test_unsupported_host_is_reported_in_the_result(monkeypatch):
    opts = types.SimpleNamespace(samples_format="png", data={})
    ff.install(monkeypatch, ff.webui_modules(opts, []))
    p = processing("sdxl", 2)
    base = p.sd_model.forge_objects.unet
    run_job(p, args_for(Method.FG_ONLY_ATTN))
    assert any("needs Stable Diffusion WebUI Forge" in c for c in p.comments)
    assert "Forge" in p.extra_generation_params[ERROR_KEY]
    assert p.sd_model.forge_objects.unet is base and not p.extra_result_images


# ---- SDXL weight patches ----------------------------------------------------------------

SDXL_METHODS = [m for m in Method if m.family is Family.SDXL]


@pytest.mark.parametrize("method", SDXL_METHODS, ids=lambda m: m.name)
def test_sdxl_methods_patch_every_key_with_the_weight(forge, method):
    p = processing("sdxl", forge.generation, batch_size=2)
    base = p.sd_model.forge_objects.unet
    patched, outputs = run_job(p, args_for(method, weight=0.7), hires=True)
    passes = 3 if forge.generation == 2 else 2  # current Forge patches twice before the hires pass
    assert len(patched) == passes and len({id(u) for u in patched}) == passes
    expected = file_patches(forge, method, 0.7)
    for unet in patched:
        got = accepted(unet)
        assert set(got) == set(expected)
        for key, (strength, (kind, slots)) in got.items():
            assert strength == pytest.approx(0.7) and kind == expected[key][0] and len(slots) == 16
            assert all(a is b or torch.equal(a, b) for a, b in zip(slots, expected[key][1]) if a is not None)
    assert not getattr(base, "patches", None) and not getattr(base, "lora_patches", None)
    if forge.generation == 2:
        (filename, *_), = patched[0].lora_patches
        assert forge.catalog[method.spec.unet_file].sha256 in filename
    if method.spec.conditions:
        cond = patched[0].extra_concat_condition
        assert cond.shape == (2, 4 * len(method.spec.conditions), SIZE // 8, SIZE // 8)
        assert torch.equal(cond[0], cond[1])
    else:
        assert patched[0].extra_concat_condition is None
    assert p.extra_generation_params["layerdiffusion_method"] == method.value
    transparent = bool(method.spec.transparent)
    assert all((img.mode == "RGBA") is transparent for img in outputs)
    assert not p.comments


@pytest.mark.parametrize("method", [m for m in SDXL_METHODS if m.spec.conditions], ids=lambda m: m.name)
def test_weight_zero_attaches_a_condition_only_where_conv_in_is_widened(forge, method):
    """Forge and early Forge merge no `diff` patch at strength 0 (conv_in stays 4-channel), so an
    8/12-channel condition would not fit; Neo pads conv_in before it looks at the strength, so
    there the condition must be attached (its channels meet zero weights)."""
    p = processing("sdxl", forge.generation)
    patched, outputs = run_job(p, args_for(method, weight=0))
    unet = patched[0]
    assert ERROR_KEY not in p.extra_generation_params and len(outputs) == 1
    if forge.generation != 3:
        assert unet.extra_concat_condition is None
        return
    forge.memory.load_unet(unet)
    conv_in = unet.model.diffusion_model.get_parameter("input_blocks.0.0.weight")
    channels = 4 + 4 * len(method.spec.conditions)
    assert conv_in.shape[1] == channels == unet.extra_concat_condition.shape[1] + 4
    assert not conv_in[:, 4:].any()
    unet.unload()
    assert unet.model.diffusion_model.get_parameter("input_blocks.0.0.weight").shape[1] == 4


def test_concat_condition_is_the_grey_flattened_mean_encode(forge):
    method = Method.FG_BLEND_TO_BG
    p = processing("sdxl", forge.generation)
    args = args_for(method, resize_mode="Just Resize")
    patched, _ = run_job(p, args)
    params = LayerDiffuseParams.from_script_args(*args)
    from lib_layerdiffuse.engine.conditions import prepare_condition

    vae = p.sd_model.forge_objects.vae
    expected, pixels = [], []
    for image in (params.fg_image, params.blend_image):
        rgb = torch.from_numpy(prepare_condition(image, SIZE, SIZE, "Just Resize"))
        pixels.append(rgb)
        x = rgb.movedim(-1, 0)[None] * 2 - 1
        expected.append(vae.model.encode(x).latent_dist.mean * ff.SCALING_FACTORS["sdxl"])
    sent = vae.encoded[-2:]  # what Forge's VAE was asked to encode: [1,H,W,3] in [0,1]
    assert all(torch.equal(s[0], e) for s, e in zip(sent, pixels))
    if forge.generation >= 2:  # current Forge and Neo let us take the posterior mean
        torch.testing.assert_close(patched[0].extra_concat_condition, torch.cat(expected, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [m for m in SDXL_METHODS if m.spec.conditions], ids=lambda m: m.name)
def test_neo_gets_the_concat_condition_although_its_sampler_leaves_it_out(forge, method):
    """Neo's sampling function attaches `extra_concat_condition` only for inpainting models:
    the real Neo run answered HTTP 500 (conv_in widened to 8 channels, input of 4) until the
    condition went in through a conditioning modifier, for cond and uncond alike."""
    p = processing("sdxl", forge.generation)
    patched, _ = run_job(p, args_for(method))
    unet = patched[0]
    condition = unet.extra_concat_condition
    if forge.generation != 3:  # their sampling function attaches extra_concat_condition itself
        assert condition is not None and not unet.model_options.get("conditioning_modifiers")
        return
    x = torch.zeros(condition.shape[0], 4, *condition.shape[2:])
    cond, uncond = ff.neo_concat_inputs(unet, x, [{"model_conds": {"c_crossattn": 1}}],
                                        [{"model_conds": {"c_crossattn": 2}}])
    for c in cond + uncond:
        assert c["model_conds"]["c_concat"].cond is condition
    assert condition.shape[1] == 4 * len(method.spec.conditions)


def test_stop_at_switches_to_the_unpatched_unet_without_the_condition(forge):
    p = processing("sdxl", forge.generation)
    patched, _ = run_job(p, args_for(Method.FG_TO_BLEND, stop_at=0.5))
    unet = patched[0]
    *concat, modifier = unet.model_options["conditioning_modifiers"]  # Neo: the concat one first
    assert len(concat) == (forge.generation == 3)
    cond = [{"model_conds": {"c_crossattn": 1, "c_concat": 2}}]
    early = modifier("patched", None, torch.tensor([ff.SIGMA_MAX]), None, cond, 7.0, {}, 1)
    assert early[0] == "patched" and early[4] is cond
    late = modifier("patched", torch.zeros(1), torch.tensor([0.1]), None, cond, 7.0, {}, 1)
    original = forge.memory.prepared[-1]
    assert late[0] is original.model and not accepted(original)
    assert late[4] == [{"model_conds": {"c_crossattn": 1}}] and late[3] is None
    assert "c_concat" in cond[0]["model_conds"]  # Forge's own dicts are left alone
    modifier("patched", torch.zeros(1), torch.tensor([0.05]), None, cond, 7.0, {}, 1)
    assert len(forge.memory.prepared) == 1  # the unpatched UNet is loaded once


def test_stop_at_one_adds_no_modifier(forge):
    patched, _ = run_job(processing("sdxl", forge.generation), args_for(Method.FG_ONLY_CONV))
    assert not patched[0].model_options.get("conditioning_modifiers")


# ---- SD1.5 attention sharing -----------------------------------------------------------

SD15_METHODS = [m for m in Method if m.family is Family.SD15]


@pytest.mark.parametrize("method", SD15_METHODS, ids=lambda m: m.name)
def test_sd15_methods_share_attention_like_the_published_algorithm(forge, method):
    frames = method.spec.frame_count
    p = processing("sd15", forge.generation, batch_size=2 * frames)
    extra = {"fg_prompt": "a cat", "bg_prompt": "a garden", "blend_prompt": "a cat in a garden"}
    prompts = {k: v for k, v in extra.items() if k[:-7] in method.spec.prompts}
    patched, outputs = run_job(p, args_for(method, **prompts), hires=True)
    unet = patched[-1]
    names = attention_modules(Family.SD15)
    assert set(unet.object_patches) == {"diffusion_model." + n for n in names}
    weights, = unet.extra_modules
    assert len(weights.hookers.layers) == len(names) == 32
    assert sorted(p.sd_model.encoded_prompts) == sorted([f"{v}, a glass cup" for v in prompts.values()] * len(patched))

    restore = unet.apply_object_patches()
    try:
        name = names[1]  # attn2 of the first block: cross-attention
        module = unet.model.diffusion_model.get_submodule(name)
        original = module.original
        n = 2 * p.batch_size
        h = torch.randn(n, (SIZE // 8) ** 2, original.to_q.in_features)
        ctx = torch.randn(n, 77, original.to_k.in_features)
        mark = torch.tensor([0.0] * p.batch_size + [1.0] * p.batch_size)
        out = module(h, context=ctx, transformer_options={"cond_mark": mark})
        state = module.state
        control = None
        if method.spec.conditions:
            control = state.control_features()[(SIZE // 8) ** 2]
        overwrites = [c if c is None else c.float() for c in state.frame_contexts]
        expected = published_unit(original, weights.hookers.layers[1], frames, h, ctx, mark, overwrites, control)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
        state.active = False
        plain = module(h, context=ctx, transformer_options={"cond_mark": mark})
        torch.testing.assert_close(plain, original(h, context=ctx))
    finally:
        restore()
    assert all(isinstance(m, ff.CrossAttention) for m in
               (p.sd_model.forge_objects.unet.model.diffusion_model.get_submodule(n) for n in names))
    transparent = [i % frames in method.spec.transparent for i in range(p.batch_size)]
    assert [img.mode == "RGBA" for img in outputs] == transparent


def test_stale_object_patches_are_unwrapped(forge):
    """A previous job's modules still patched into the model must not be wrapped twice."""
    p = processing("sd15", forge.generation)
    patched, _ = run_job(p, args_for(Method.FG_ONLY_ATTN_SD15))
    restore = patched[0].apply_object_patches()
    try:
        patched2, _ = run_job(processing_with(p.sd_model, forge), args_for(Method.FG_ONLY_ATTN_SD15))
        for module in patched2[0].object_patches.values():
            assert isinstance(module.original, ff.CrossAttention)
    finally:
        restore()


def processing_with(sd_model, forge):
    return ff.Processing(sd_model, width=SIZE, height=SIZE)


def test_sd15_batch_must_hold_whole_frame_sets(forge):
    p = processing("sd15", forge.generation, batch_size=2)
    base = p.sd_model.forge_objects.unet
    patched, outputs = run_job(p, args_for(Method.JOINT_SD15))
    assert "multiple of 3" in p.extra_generation_params[ERROR_KEY]
    assert any("multiple of 3" in c for c in p.comments)
    assert all(u is base for u in patched) and all(img.mode == "RGB" for img in outputs)


# ---- family checks, decoding, outputs ---------------------------------------------------

@pytest.mark.parametrize("family, method, message", [
    ("sd15", Method.FG_ONLY_ATTN, "needs an SDXL model, but the model is SD1.5"),
    ("sdxl", Method.JOINT_SD15, "needs an SD1.5 model, but the model is SDXL"),
])
def test_wrong_family_is_refused_before_patching(forge, family, method, message):
    p = processing(family, forge.generation, batch_size=method.spec.frame_count)
    base = p.sd_model.forge_objects.unet
    patched, _ = run_job(p, args_for(method))
    assert message in p.extra_generation_params[ERROR_KEY]
    assert all(u is base for u in patched)


def test_flux_like_model_gets_a_message(forge):
    p = processing("sdxl", forge.generation)
    p.sd_model.forge_objects.unet.model.diffusion_model = torch.nn.Linear(2, 2)
    run_job(p, args_for(Method.FG_ONLY_ATTN))
    assert "Flux" in p.extra_generation_params[ERROR_KEY]


def test_decoding_uses_raw_latents_per_index_over_batches(forge):
    p = processing("sdxl", forge.generation, batch_size=2, n_iter=2)
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN))
    assert [img.mode for img in outputs] == ["RGBA"] * 4
    assert [img.mode for img in p.extra_result_images] == ["RGB"] * 4
    decoder = decoder_for("sdxl", unet_files.weight_store(), "cpu", torch.float32)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    raw = noise * 0.5 / ff.SCALING_FACTORS["sdxl"]
    pixels = p.sd_model.forge_objects.vae.decode(raw).movedim(-1, 1)
    expected = decoder.decode(raw[1:2], pixels[1:2])
    assert np.array_equal(np.asarray(outputs[3]), expected.rgba[0])
    assert np.array_equal(np.asarray(p.extra_result_images[3]), preview(expected.rgba[0]))
    assert len(forge.memory.loaded) == 2  # the decoder went through Forge's memory manager per batch


@pytest.mark.parametrize("method", [Method.FG_ONLY_ATTN, Method.FG_ONLY_ATTN_SD15], ids=lambda m: m.name)
def test_hires_fix_decodes_the_hires_latents(forge, method):
    """With hires fix Forge decodes the hires pass itself and `post_sample` gets pixels; the
    transparent decode must use the latents the hires sampler returned (Forge main dfdcbab6
    raised AttributeError on DecodedSamples here)."""
    family = method.family.value
    p = processing(family, forge.generation, batch_size=method.spec.frame_count)
    _, outputs = run_job(p, args_for(method), hires=True)
    assert ERROR_KEY not in p.extra_generation_params and not p.comments
    assert outputs[0].mode == "RGBA" and outputs[0].size == (2 * SIZE, 2 * SIZE)
    assert p.sampler.calls == ["sample_img2img"]
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    first = torch.nn.functional.interpolate(noise * 0.5, scale_factor=2.0, mode="nearest")
    hires_noise = torch.randn(first.shape, generator=torch.Generator().manual_seed(100))
    raw = (first * 0.5 + hires_noise * 0.1) / ff.SCALING_FACTORS[family]
    pixels = p.sd_model.forge_objects.vae.decode(raw).movedim(-1, 1)
    expected = decoder_for(family, unet_files.weight_store(), "cpu", torch.float32).decode(raw, pixels)
    assert np.array_equal(np.asarray(outputs[0]), expected.rgba[0])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_nan_latents_are_reported_not_decoded_to_an_empty_image(forge, monkeypatch):
    """A NaN anywhere in the latents made the decoder return an all-zero RGBA without a word
    (seen in real Forge, whose own NaN check looks at the first element only)."""
    def sample(self, p, x, *args, **kwargs):
        out = x * 0.5
        out[0, :, 2, 3] = float("nan")
        return out
    monkeypatch.setattr(ff.Sampler, "sample", sample)
    p = processing("sd15", forge.generation)
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN_SD15))
    assert outputs[0].mode == "RGB" and not p.extra_result_images
    assert any("NaN" in c for c in p.comments)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_nan_latents_on_flux_point_at_the_scheduler(forge, monkeypatch):
    """Real Forge's Flux with Euler and the "Automatic" scheduler starts at sigma 10000 and
    samples NaN; the note must name the fix, not fp16."""
    if forge.generation == 1:
        return
    monkeypatch.setattr(ff.Sampler, "sample", lambda self, p, x, *a, **k: x * float("nan"))
    p = processing("flux", forge.generation)
    _, outputs = run_job(p, args_for(Method.FLUX_FG_ONLY))
    assert outputs[0].mode == "RGB"
    assert any("set the scheduler to Simple" in c for c in p.comments)
    assert not any("--no-half" in c for c in p.comments)


def test_any_size_decodes(forge):
    p = processing("sdxl", forge.generation)
    p.width, p.height = 72, 56  # not multiples of 64 (the reference fails here)
    _, outputs = run_job(p, args_for(Method.FG_ONLY_CONV))
    assert outputs[0].mode == "RGBA" and outputs[0].size == (72, 56)


def test_output_origin_adds_the_opaque_image(forge):
    p = processing("sdxl", forge.generation)
    run_job(p, args_for(Method.FG_ONLY_ATTN, output_origin=True))
    assert [img.mode for img in p.extra_result_images] == ["RGB", "RGB"]


def decoded_rgba(p) -> np.ndarray:
    """The transparent decoder's RGBA of the last batch's first image."""
    return job_of(p).outputs[0]


@pytest.mark.parametrize("mode", ["Alpha", "RGB", "None"])
@pytest.mark.parametrize("pnginfo", [True, False], ids=["pnginfo", "no-pnginfo"])
def test_every_stealth_mode_saves_and_returns_the_decoders_alpha(forge, mode, pnginfo):
    """Forge's stealth writer runs on the object that is also returned: "Alpha" overwrites the
    alpha, "RGB" raised on RGBA (HTTP 500, nothing saved). The file and the response must have
    the decoder's alpha, with the parameters hidden in RGB when the user chose "RGB"."""
    set_stealth(forge, mode)
    forge.opts.enable_pnginfo = pnginfo
    p = processing("sdxl", forge.generation, saved=True)
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN))
    rgba = decoded_rgba(p)
    saved, = forge.saved
    for image in (saved["file"], outputs[0]):
        assert image.mode == "RGBA" and np.array_equal(np.asarray(image)[..., 3], rgba[..., 3])
    assert saved["image"] is outputs[0]  # the response is the object Forge saved
    assert np.array_equal(np.asarray(saved["file"]), np.asarray(outputs[0]))
    lowest_bits = np.asarray(outputs[0])[:32, 0, :3] & 1 != rgba[:32, 0, :3] & 1
    written = forge.generation == 2 and pnginfo and mode == "RGB"
    assert lowest_bits.any() == written  # the user's RGB stealth infotext is kept
    if not written:
        assert np.array_equal(np.asarray(outputs[0]), rgba)


@pytest.mark.parametrize("mode", ["Alpha", "None"])
def test_a_grid_of_transparent_images_is_transparent(forge, mode):
    """Current Forge composes grids in RGBA and stealth-writes over them, early Forge composes
    them in RGB: the saved grid and the returned one carry both images' alpha."""
    set_stealth(forge, mode)
    p = processing("sdxl", forge.generation, saved=True, n_iter=2)
    processed = types.SimpleNamespace()
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN), processed=processed)
    grid_file = next(s["file"] for s in forge.saved if s["grid"] and s["extension"] == "png")
    expected = np.concatenate([np.asarray(o)[..., 3] for o in outputs], axis=1)
    assert np.asarray(outputs[0])[..., 3].min() < 250
    for grid in (grid_file, processed.images[0]):
        assert grid.mode == "RGBA" and np.array_equal(np.asarray(grid)[..., 3], expected)


@pytest.mark.parametrize("mode", ["Alpha", "RGB"])
def test_a_grid_saved_as_jpeg_gets_a_transparent_png_copy(forge, mode):
    """Forge Neo saves grids as JPEG by default, which drops the alpha: a PNG copy of the grid
    with the images' alpha and the parameters is saved beside it, once."""
    forge.opts.grid_format = "jpg"
    set_stealth(forge, mode)
    p = processing("sdxl", forge.generation, saved=True, n_iter=2)
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN))
    grids = [s for s in forge.saved if s["grid"]]
    assert [g["extension"] for g in grids] == ["png", "jpg"]  # the copy is written from the callback
    copy, jpeg = grids
    assert copy["filename"] == jpeg["filename"][:-len(".jpg")] + saving.SUFFIX + ".png"
    assert jpeg["file"].mode == "RGB" and copy["file"].mode == "RGBA" and copy["info"] == "parameters"
    expected = np.concatenate([np.asarray(o)[..., 3] for o in outputs], axis=1)
    assert np.array_equal(np.asarray(copy["file"])[..., 3], expected)


@pytest.mark.parametrize("margin", [0, 6])
def test_xyz_plot_grids_with_labels_are_transparent(forge, margin):
    """The X/Y/Z plot composes the cells of separate jobs into a grid per Z value, draws labels
    around it in RGB, composes those into one grid with a title, and saves them after: every
    saved grid has the cells' alpha where the cells are, opaque labels."""
    images = images_module()
    cells = []
    for seed in range(4):  # a 2x2 plot: one job per cell
        p = processing("sdxl", forge.generation)
        p.seeds = [seed]
        _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN))
        cells.append(outputs[0])
    w, h = cells[0].size
    sub = images.draw_grid_annotations(images.image_grid(cells, rows=2), w, h, ["x1", "x2"], ["y1", "y2"], margin)
    z_grid = images.image_grid([sub], rows=1)
    z_grid = images.draw_grid_annotations(z_grid, *sub.size, ["z"], [""])
    for grid in (z_grid, sub):
        images.save_image(grid, "grids", "xyz_grid", info="parameters", p=None, grid=True)
    for saved in [s["file"] for s in forge.saved]:
        alpha = np.asarray(saved.getchannel("A")) if saved.mode == "RGBA" else None
        assert alpha is not None, "the saved X/Y/Z grid has no alpha"
        left, top = (w * 3 // 4, saved.height - 2 * h - margin)  # the cells' place in the plot
        for i, cell in enumerate(cells):
            x, y = left + (w + margin) * (i % 2), top + (h + margin) * (i // 2)
            assert np.array_equal(alpha[y:y + h, x:x + w], np.asarray(cell)[..., 3])
        assert alpha[:top].min() == 255 and alpha[:, :left].min() == 255  # labels stay opaque


def test_results_that_are_not_saved_still_get_their_alpha(forge):
    set_stealth(forge, "RGB")
    p = processing("sdxl", forge.generation, saved=False, n_iter=2)
    processed = types.SimpleNamespace()
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN), processed=processed)
    assert not forge.saved
    grid = processed.images[0]
    assert all(o.mode == "RGBA" for o in outputs) and grid.mode == "RGBA"
    assert np.array_equal(np.asarray(grid)[..., 3], np.concatenate([np.asarray(o)[..., 3] for o in outputs], axis=1))


@pytest.mark.parametrize("mode", ["Alpha", "RGB"])
def test_non_png_format_saves_a_transparent_copy(forge, mode):
    forge.opts.samples_format = "jpg"
    set_stealth(forge, mode)
    p = processing("sdxl", forge.generation, saved=True)
    run_job(p, args_for(Method.FG_ONLY_ATTN))
    copy, = [s for s in forge.saved if s["extension"] == "png"]
    assert copy["suffix"] == saving.SUFFIX and copy["file"].mode == "RGBA"
    assert np.array_equal(np.asarray(copy["file"])[..., 3], decoded_rgba(p)[..., 3])
    notes = saving.alpha_notes(forge.opts)
    assert any("JPG" in n for n in notes)
    assert any("Stealth" in n for n in notes) == (mode == "Alpha" and forge.generation == 2) or forge.generation == 1


# ---- API arguments ----------------------------------------------------------------------

def test_api_arguments_short_lists_nulls_dicts_and_base64(forge):
    p = processing("sdxl", forge.generation)
    patched, outputs = run_job(p, [True, "Only Generate Transparent Image (Attention Injection)", None])
    assert accepted(patched[0]) and outputs[0].mode == "RGBA" and not p.comments
    image = to_png_base64(rgba_image(3))
    p = processing("sdxl", forge.generation, batch_size=2)
    patched, _ = run_job(p, [{"method": "FG_TO_BLEND", "fg": image, "weight": 1}, False, None])
    assert patched[0].extra_concat_condition.shape[0] == 2
    p = processing("sdxl", forge.generation)
    patched, _ = run_job(p, [True, Method.FG_ONLY_ATTN.value, "heavy"])
    assert "weight" in p.extra_generation_params[ERROR_KEY] and not accepted(patched[0])
    p = processing("sdxl", forge.generation)
    run_job(p, [False, Method.FG_ONLY_ATTN.value, "heavy"])  # off: bad values are not an error
    assert not p.comments and ERROR_KEY not in p.extra_generation_params


def test_missing_condition_image_is_named(forge):
    p = processing("sdxl", forge.generation)
    run_job(p, [True, Method.BG_TO_BLEND.value])
    assert "needs a Background image" in p.extra_generation_params[ERROR_KEY]


def test_missing_weights_name_the_file(forge, tmp_path):
    unet_files.use_store(WeightStore(tmp_path, catalog=forge.catalog, allow_download=False, progress=False))
    p = processing("sdxl", forge.generation)
    run_job(p, args_for(Method.FG_ONLY_ATTN))
    assert "layer_xl_transparent_attn.safetensors" in p.extra_generation_params[ERROR_KEY]
    assert str(tmp_path) in p.extra_generation_params[ERROR_KEY]


def test_unpinned_files_are_named_in_the_infotext(forge, tmp_path):
    """Files that are not the official ones (here: other bytes, same layout) work only when the
    user allows them, and the infotext then says which ones were used."""
    method = Method.FG_ONLY_ATTN_SD15
    for name in method.weight_files:
        data = (forge.folder / name).read_bytes()
        save_file({k: v * 0.5 for k, v in load_file(str(forge.folder / name)).items()}, str(tmp_path / name))
        assert (tmp_path / name).read_bytes() != data
    p = processing("sd15", forge.generation)
    unet_files.use_store(WeightStore(tmp_path, catalog=forge.catalog, allow_download=False, progress=False,
                                     allow_unpinned=False))
    run_job(p, args_for(method))
    assert "is not the official" in p.extra_generation_params[ERROR_KEY]
    assert "layerdiffusion_unpinned" not in p.extra_generation_params
    p = processing("sd15", forge.generation)
    unet_files.use_store(WeightStore(tmp_path, catalog=forge.catalog, allow_download=False, progress=False,
                                     allow_unpinned=True))
    _, outputs = run_job(p, args_for(method))
    assert ERROR_KEY not in p.extra_generation_params and outputs[0].mode == "RGBA"
    named = p.extra_generation_params["layerdiffusion_unpinned"]
    assert "encoder" not in named  # txt2img does not read the encoder: only files in use are named
    for name in ("layer_sd15_transparent_attn.safetensors", "layer_sd15_vae_transparent_decoder.safetensors"):
        assert f"{name} sha256 {hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()[:12]}" in named


# ---- transparent img2img ----------------------------------------------------------------

def test_transparent_img2img(forge):
    p = processing("sdxl", forge.generation)
    init = Image.fromarray(rgba_image(5, SIZE), "RGBA")
    p.init_images = [init]
    args = args_for(Method.FG_ONLY_ATTN)
    hooks.process(p, *args)
    hooks.before_init_images(p, {"crop_region": None, "image_mask": None}, *args)
    assert p.init_images[0].mode == "RGB"
    grey = np.asarray(p.init_images[0])
    transparent = rgba_image(5, SIZE)[..., 3] == 0
    assert np.all(np.abs(grey[transparent].astype(int) - 128) <= 1)
    if forge.generation == 1:
        assert any("needs current Forge" in c for c in p.comments)
        return
    vae = p.sd_model.forge_objects.vae
    pixels = torch.full((2, SIZE, SIZE, 3), 0.5)
    post = ff.Posterior(vae.model.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist)
    if forge.generation == 2:
        z = vae.patcher.model_options["model_vae_regulation"](post)
    else:  # Neo has no regulation hook: the clone's own encode is patched when Neo loads it
        assert vae is not p.sd_model.forge_objects_original.vae
        z = vae.encode(pixels)
    from lib_layerdiffuse.vae.frontends import OFFSET_SCALE, encoder_for

    offset = encoder_for("sdxl", unet_files.weight_store(), "cpu", torch.float32).offset([rgba_image(5, SIZE)])
    torch.testing.assert_close(z, post.mean + post.std * OFFSET_SCALE * offset.expand(2, -1, -1, -1))
    if forge.generation == 3:  # the next plain encode (the original VAE loaded) samples again
        plain = p.sd_model.forge_objects_original.vae.encode(pixels)
        assert (plain - post.mean).abs().max() > 1e-3
        torch.testing.assert_close(vae.encode(pixels), z)


# ---- UI, infotext, script file ----------------------------------------------------------

def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("forge_layerdiffuse", ROOT / "scripts" / "forge_layerdiffuse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_file_imports_and_builds_the_panel(forge, gradio, monkeypatch):
    callbacks = sys.modules["modules.script_callbacks"]
    callbacks.before_image_saved.clear()
    callbacks.image_grid.clear()
    module = load_script(monkeypatch)
    script_cls = module.LayerDiffuseForForge
    assert issubclass(script_cls, sys.modules["modules.scripts"].Script)
    assert callbacks.before_image_saved == [saving.restore_alpha]
    assert callbacks.image_grid == [saving.remember_grid]
    script = script_cls()
    assert script.title() == "LayerDiffuse"
    assert script.show(False) is sys.modules["modules.scripts"].AlwaysVisible
    components = script.ui(True)
    fields = dataclasses.fields(LayerDiffuseParams) + dataclasses.fields(CutoutSettings)
    assert len(components) == len(fields) == 22  # the reference's 12, then the cutout's 10
    for comp, f in zip(components, fields):
        defaults = LayerDiffuseParams() if f in dataclasses.fields(LayerDiffuseParams) else CutoutSettings()
        if f.metadata["kind"] == "image":
            assert type(comp).__name__ == "Image" and comp.kwargs["image_mode"] == "RGBA"
            continue
        assert comp.kwargs["label"] == f.metadata["label"]
        value = getattr(defaults, f.name)
        assert comp.value == (value.value if hasattr(value, "value") else value)
    assert components[1].kwargs["choices"] == Method.choices(forge=True)  # Qwen-Image-2.1 runs on the host's engine
    stealth_note = any("Stealth" in (c.value or "") for c in ff.Component.created if type(c).__name__ == "Markdown")
    assert stealth_note is (forge.generation != 3)  # Neo has no stealth infotext: no warning
    # hooks delegate: a whole job through the script object
    p = processing("sdxl", forge.generation)
    args = args_for(Method.FG_ONLY_ATTN)
    script.process(p, *args)
    script.process_before_every_sampling(p, *args, x=None, noise=torch.zeros(1, 4, 8, 8), c=None, uc=None)
    assert accepted(p.sd_model.forge_objects.unet)


def test_cutout_dropdown_lists_onnx_files_of_the_models_folder(gradio, tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    (tmp_path / "BiRefNet-mine.onnx").write_bytes(b"listed by name only")
    components = ui.build_ui(types.SimpleNamespace(elem_id=lambda x: x), False)
    model = components[len(dataclasses.fields(LayerDiffuseParams)) + 1]
    assert model.kwargs["label"] == "Cutout model"
    assert model.kwargs["choices"][-2:] == ["local:BiRefNet-mine.onnx", "local file"]


def test_method_change_shows_only_the_inputs_it_uses(gradio):
    assert form.input_visibility(Method.FG_BLEND_TO_BG) == {
        "fg_image": True, "bg_image": False, "blend_image": True, "resize_mode": True,
        "fg_prompt": False, "bg_prompt": False, "blend_prompt": False}
    assert form.input_visibility("(SD1.5) From Background to Foreground (need batch size 2)") == {
        "fg_image": False, "bg_image": True, "blend_image": False, "resize_mode": True,
        "fg_prompt": True, "bg_prompt": False, "blend_prompt": True}
    script = types.SimpleNamespace(elem_id=lambda x: x)
    components = ui.build_ui(script, False)
    method = components[1]
    (fn, inputs, outputs, kwargs), = method.events
    updates = fn(Method.JOINT_SD15.value)
    assert len(updates) == len(outputs) == 8
    assert [u["visible"] for u in updates[1:]] == [False, False, False, False, True, True, True]
    updates = fn(Method.FG_ONLY_ATTN.value)
    assert updates[-1] == {"__type__": "update", "visible": False, "value": ""}
    assert "multiple of 3" in form.method_hint(Method.JOINT_SD15)


def test_infotext_round_trip_through_the_paste_fields(gradio):
    script = types.SimpleNamespace(elem_id=lambda x: x)
    components = ui.build_ui(script, True)
    params = LayerDiffuseParams(enabled=True, method=Method.BG_TO_FG_SD15, weight=0.75, stop_at=0.5,
                                resize_mode="Resize and Fill", fg_prompt="a cat, sitting", blend_prompt="x")
    text = {k: str(v) for k, v in params.to_infotext().items()}

    def paste(values):
        out = {}
        for comp, key in script.infotext_fields:
            v = key(values) if callable(key) else values.get(key)
            if v is None:
                continue
            kind = type(comp.value)
            out[id(comp)] = (False if v == "False" else bool(v)) if kind is bool else kind(v)
        return [out.get(id(c), c.value) for c in components]

    def parse(values):
        layer, cut = split_script_args(tuple(paste(values)))
        return LayerDiffuseParams.from_script_args(*layer), CutoutSettings.from_values(*cut)

    cutout = CutoutSettings(enabled=True, model="weight-free", refine="alpha matting", fg_threshold=200,
                            edge_band=4, output="over a colour", color="#102030")
    text.update({k: str(v) for k, v in cutout.to_infotext().items()})
    assert parse(text) == (params, cutout)
    old = {"layerdiffusion_method": "From Foreground to Blending", "layerdiffusion_enabled": "True"}
    assert parse(old)[0].method is Method.FG_TO_BLEND
    plain_layer, plain_cut = parse({"Steps": "20"})
    assert plain_layer.enabled is False and plain_cut.enabled is False
    assert set(script.paste_field_names) >= {"layerdiffusion_method", "layerdiffusion_weight",
                                             "layerdiffusion_cutout_model", "layerdiffusion_cutout_refine"}


# ---- Flux (current Forge's own Flux model) ------------------------------------------------

def _forge_merge(unet, base: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """The weights Forge's patcher makes (backend/patcher/lora.py merge_lora_to_weight: narrow
    to the offset, add strength * up @ down) from the patches LayerDiffuse gave it, on `base`
    (default: the model's weights)."""
    weights = {k: v.detach().clone().float() for k, v in (base or dict(unet.model.named_parameters())).items()}
    if unet.generation == 3:  # Neo: LoRAAdapter objects, 6-tuples per parameter
        entries = [(name, strength, (adapter.name, adapter.weights), offset)
                   for name, patches in unet.patches.items() for strength, adapter, _, offset, _, _ in patches]
    else:
        entries = [(name, strength, value, offset) for by_name in unet.lora_patches.values()
                   for name, patches in by_name.items() for strength, value, _, offset, _ in patches]
    for name, strength_patch, (kind, slots), offset in entries:
        assert kind == "lora" and slots[2] is None  # no alpha: the scale is in `up`
        target = weights[name] if offset is None else weights[name].narrow(*offset)
        target += strength_patch * (slots[0].float() @ slots[1].float())
    return weights


def test_flux_lora_reaches_forges_fused_weights_as_diffusers_merges_it(forge):
    from lib_layerdiffuse.patches import apply_frozen_patches, parse_transformer_lora

    if forge.generation == 1:  # early Forge cannot load Flux models; the method says so on any model
        p = processing("sdxl", forge.generation)
        run_job(p, args_for(Method.FLUX_FG_ONLY))
        assert "early Forge (ldm_patched) has no Flux" in p.extra_generation_params[ERROR_KEY]
        return
    p = processing("flux", forge.generation)
    patched, outputs = run_job(p, args_for(Method.FLUX_FG_ONLY, weight=0.7))
    assert ERROR_KEY not in p.extra_generation_params
    assert [img.mode for img in outputs] == ["RGBA"]
    merged = _forge_merge(patched[0])
    transformer = tiny_flux_transformer(0)
    lora = parse_transformer_lora(load_file(str(forge.folder / "layerlora.safetensors")))
    apply_frozen_patches(transformer, lora, Family.FLUX, 0.7)
    model = p.sd_model.forge_objects.unet.model.diffusion_model
    expected = to_bfl_state_dict(transformer.state_dict(), model.hidden_size, model.single_blocks[0].mlp_hidden_dim)
    assert len(expected) == len(merged)
    for name, value in expected.items():
        torch.testing.assert_close(merged[f"diffusion_model.{name}"], value.float(), atol=1e-5, rtol=1e-5)
    if forge.generation == 3:  # and Neo's own merge (through the adapters' offsets) makes the same
        forge.memory.load_unet(patched[0])
        for name, value in patched[0].model.named_parameters():
            torch.testing.assert_close(value.float(), merged[name], atol=1e-5, rtol=1e-5)


def test_flux_decodes_from_the_unclipped_decode(forge):
    if forge.generation == 1:
        return
    p = processing("flux", forge.generation)
    _, outputs = run_job(p, args_for(Method.FLUX_FG_ONLY))
    decoder = decoder_for("flux", unet_files.weight_store(), "cpu", torch.float32)
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    raw = ff.raw_latents("flux", noise * 0.5)
    vae = p.sd_model.forge_objects.vae
    with torch.no_grad():
        pixels = vae.model.decode(raw).sample * 0.5 + 0.5
    assert pixels.min() < 0 or pixels.max() > 1
    assert np.array_equal(np.asarray(outputs[0]), decoder.decode(raw, pixels).rgba[0])


@pytest.mark.parametrize("family, method, message", [
    ("flux", Method.FG_ONLY_ATTN, "needs an SDXL model, but the model is Flux.1"),
    ("sdxl", Method.FLUX_FG_ONLY, "needs a Flux.1 model, but the model is SDXL"),
])
def test_flux_and_sd_methods_refuse_the_other_family(forge, family, method, message):
    if forge.generation == 1:  # early Forge has neither Flux models nor the Flux method (above)
        return
    p = processing(family, forge.generation)
    run_job(p, args_for(method))
    assert message in p.extra_generation_params[ERROR_KEY]


def test_patch_kinds_cover_every_method():
    kinds = {m.spec.patch_kind for m in Method}
    assert kinds == {PatchKind.LORA, PatchKind.DIFF, PatchKind.ATTENTION_SHARING, PatchKind.TRANSFORMER_LORA,
                     PatchKind.NATIVE}


# ---- the cutout (rembg fallback) --------------------------------------------------------

def cutout_args(*cutout, layer=False):
    layer_args = args_for(Method.FG_ONLY_ATTN) if layer else [False]
    return list(layer_args) + [None] * (12 - len(layer_args)) + list(cutout)


def composite_image(p, image, index=0):
    p.batch_index = index
    pp = PostprocessImageArgs(Image.fromarray(image), index)
    hooks.after_composite(p, pp)
    return pp.image


def test_cutout_runs_on_every_image_when_layerdiffuse_is_off(forge):
    case = synthetic_case("disc", "gradient", 96)
    p = processing("sdxl", forge.generation)
    args = cutout_args(True, "weight-free")
    hooks.process(p, *args)
    out = composite_image(p, case.image)
    assert out.mode == "RGBA" and not p.comments
    assert np.asarray(out)[0, 0, 3] == 0 and np.asarray(out)[48, 48, 3] == 255
    assert [img.mode for img in p.extra_result_images] == ["RGB"]  # the checkerboard preview
    info = p.extra_generation_params
    assert info["layerdiffusion_cutout"] == "weight-free" and info["layerdiffusion_cutout_enabled"] is True
    assert "layerdiffusion_enabled" not in info
    before = np.asarray(out).copy()
    params = ff.ImageSaveParams(out, p, "out.png", {"parameters": "x"})
    out.putalpha(255)  # Forge's stealth infotext, then our callback
    saving.restore_alpha(params)
    assert np.array_equal(np.asarray(out), before)


def test_cutout_leaves_layerdiffuse_transparent_images_alone(forge):
    p = processing("sdxl", forge.generation)
    _, outputs = run_job(p, cutout_args(True, "weight-free", layer=True))
    assert all(o.mode == "RGBA" for o in outputs)
    assert "layerdiffusion_cutout" not in p.extra_generation_params  # never ran
    assert not p.comments


def test_cutout_keeps_an_image_that_has_alpha_of_its_own(forge):
    """Forge Neo's Qwen-Image-2.1 engine returns RGBA; the cutout must not cut it out again."""
    p = processing("sdxl", forge.generation)
    hooks.process(p, *cutout_args(True, "weight-free"))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 40, 40, 255)
    out = composite_image(p, rgba)
    assert np.array_equal(np.asarray(out), rgba)
    assert any("already has transparency" in c for c in p.comments)
    assert "layerdiffusion_cutout" not in p.extra_generation_params or job_of(p).cutting
    # stealth infotext's 254/255 alpha is not transparency: that image is cut out
    p = processing("sdxl", forge.generation)
    hooks.process(p, *cutout_args(True, "weight-free"))
    stealth = np.dstack([synthetic_case("disc", "gradient", 96).image, np.full((96, 96), 254, np.uint8)])
    assert np.asarray(composite_image(p, stealth))[0, 0, 3] == 0


def test_neo_qwen21_checkpoint_refuses_layerdiffuse_methods_by_name(forge):
    if forge.generation != 3:
        pytest.skip("Qwen-Image-2.1 runs in Forge Neo only")
    p = processing("qwen21", forge.generation)
    base = p.sd_model.forge_objects.unet
    hooks.process(p, *args_for(Method.FG_ONLY_ATTN))
    error = p.extra_generation_params[ERROR_KEY]
    assert "Qwen-Image-2.1" in error and "makes transparent images itself" in error and "switch LayerDiffuse off" in error
    assert not job_of(p).active and p.sd_model.forge_objects.unet is base


def test_the_native_rgba_method_is_not_offered_in_forge_and_refused_by_name(forge):
    assert Method.QWEN21_RGBA.value not in Method.choices(forge=True)
    assert Method.QWEN21_RGBA.value in Method.choices()
    p = processing("sdxl", forge.generation)
    hooks.process(p, {"enabled": True, "method": "QWEN21_RGBA"})
    assert "switch LayerDiffuse off" in p.extra_generation_params[ERROR_KEY]


def test_cutout_problems_are_shown_and_keep_the_image(forge):
    p = processing("sdxl", forge.generation)
    hooks.process(p, *cutout_args(True, "weight-free"))
    busy = synthetic_case("disc", "textured", 64).image
    assert composite_image(p, busy).mode == "RGB"
    assert any("image 1 was not cut out" in c and "flat or smooth" in c for c in p.comments)
    p = processing("sdxl", forge.generation)
    hooks.process(p, *cutout_args(True, "u2netp"))  # no model file, downloads blocked here
    image = synthetic_case("disc", "solid", 64).image
    assert np.array_equal(np.asarray(composite_image(p, image)), image)
    assert any("the cutout did not run" in c and "u2netp" in c for c in p.comments)
    assert job_of(p).cutting is False  # one failure stops it for the job, not once per image


def test_cutout_api_named_values_and_bad_values(forge):
    p = processing("sdxl", forge.generation)
    hooks.process(p, {"cutout": True, "cutout_model": "weight-free", "cutout_output": "mask"})
    job = job_of(p)
    assert job.params.enabled is False and job.cutting and job.cutout.output.value == "mask"
    assert composite_image(p, synthetic_case("disc", "solid", 64).image).mode == "RGB"
    p = processing("sdxl", forge.generation)
    hooks.process(p, *cutout_args(True, "no-such-model"))
    assert any("invalid cutout settings" in c and "no-such-model" in c for c in p.comments)


@pytest.mark.parametrize("args, key, words", [
    (({"cutout": True, "cutout_model": 5},), "layerdiffusion_cutout_error", ["invalid cutout settings", "5"]),
    (({"enabled": True, "method": "FG_ONLY_ATTN", "weight": "heavy"},), "layerdiffusion_error", ["weight", "heavy"]),
    (({"enabled": True, "method": "FG_ONLY_ATTN_SD15"},), "layerdiffusion_error", ["SD1.5", "SDXL"]),
], ids=["cutout-model-int", "weight-text", "wrong-family"])
def test_problems_reach_api_users_through_the_infotext(forge, args, key, words):
    """Forge's API response has no comments: the infotext is the only place API users see why."""
    p = processing("sdxl", forge.generation)
    hooks.process(p, *args)
    value = str(p.extra_generation_params.get(key))
    assert all(w in value for w in words), (key, p.extra_generation_params)


def test_images_the_cutout_keeps_are_named_in_the_infotext(forge):
    p = processing("sdxl", forge.generation)
    hooks.process(p, *cutout_args(True, "weight-free"))
    busy = synthetic_case("disc", "textured", 64).image
    composite_image(p, busy, 0)
    composite_image(p, busy, 1)
    note = p.extra_generation_params["layerdiffusion_note"]
    assert "image 1 was not cut out" in note and "image 2 was not cut out" in note


# ---- user LoRAs together with attention sharing (Forge merges them after the object patches) ---

def user_lora(model: torch.nn.Module, seed: int) -> dict:
    """A kohya-style LoRA as Forge's loader hands it over: rank-2 `("lora", (up, down, alpha,
    mid, dora))` patches on every attention projection and on one other weight."""
    gen = torch.Generator().manual_seed(seed)
    keys = [k for k, _ in model.named_parameters() if k.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight",
                                                                   ".to_out.0.weight"))]
    keys.append(next(k for k, _ in model.named_parameters() if k.endswith("proj_in.weight")))
    patches = {}
    for key in keys:
        out, inp = model.get_parameter(key).shape[:2]
        patches[key] = ("lora", (torch.randn(out, 2, generator=gen) * 0.2, torch.randn(2, inp, generator=gen) * 0.2,
                                 2.0, None, None))
    return patches


def lora_delta(patch, strength, shape):
    up, down, alpha = patch[1][:3]
    return (strength * alpha / down.shape[0] * (up @ down)).reshape(shape)


def call_forge(p, forge, loras, method=None, online_mode=False):
    """One generation as Forge runs it up to the first UNet call: the LoRA extension's clone,
    the objects reset, our hooks, then Forge loading the UNet (object patches, then LoRAs)."""
    p.sd_model.apply_loras(loras, online_mode=online_mode)
    p.sd_model.reset_objects()
    p.__dict__.pop("layerdiffuse_job", None)
    noise = torch.randn(p.batch_size, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    if method is not None:
        args = args_for(method)
        hooks.process(p, *args)
        p.sampler = ff.Sampler()
        hooks.before_sampling(p, *args, x=noise, noise=noise, c=None, uc=None)
        assert job_of(p).error is None, job_of(p).error
    unet = p.sd_model.forge_objects.unet
    forge.memory.sampling_prepare(unet, noise)
    return unet


@pytest.mark.parametrize("sequence", [
    [("A", 1.0, False), (None, 0, True), (None, 0, False)],  # plain + LoRA, then fg-only without it
    [(None, 0, False), ("A", 1.0, True), (None, 0, False)],  # plain, then fg-only + LoRA
    [("A", 0.5, True), ("A", 1.0, True), ("B", 1.0, True), (None, 0, True), ("B", 1.0, False)],
], ids=["lora-then-layer", "layer-with-lora", "changing-sets"])
def test_user_loras_reach_the_shared_attention_whatever_the_set_before(forge, sequence):
    """Forge merges user LoRAs by parameter path after it has put the object patches in: the
    paths must be the UNet's own while sharing is active, the merged weights must be what the
    shared attention computes with, and a later plain call must find the UNet as it was."""
    p = processing("sd15", forge.generation)
    model = p.sd_model.forge_objects.unet.model
    loras = {"A": user_lora(model, 1), "B": user_lora(model, 2)}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for name, strength, layer in sequence:
        chosen = [(f"{name}.safetensors", loras[name], strength)] if name else []
        call_forge(p, forge, chosen, Method.FG_ONLY_ATTN_SD15 if layer else None)
        params = dict(model.named_parameters())
        assert set(params) == set(before)  # the same paths, with and without the stand-ins
        for key, value in before.items():
            lora = loras[name] if name else {}
            expected = value + lora_delta(lora[key], strength, value.shape) if key in lora else value
            torch.testing.assert_close(params[key], expected, atol=1e-6, rtol=0, msg=key)
        for attn_name in attention_modules(Family.SD15):
            module = model.get_submodule(f"diffusion_model.{attn_name}")
            assert isinstance(module, SharedAttention) == layer
            if layer:
                assert module.original.to_q.weight is params[f"diffusion_model.{attn_name}.to_q.weight"]
    if sequence[-1][0] is None:
        assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


@pytest.mark.parametrize("method", [Method.FG_ONLY_ATTN, Method.FG_TO_BLEND], ids=lambda m: m.name)
def test_sdxl_patches_merge_with_user_loras_and_leave_no_trace(forge, method):
    """LayerDiffuse's SDXL files are weight patches next to the user's LoRA on the same keys
    (FG_TO_BLEND also widens conv_in): loading merges both; the next call with the LoRA alone
    has exactly the LoRA merged, and a plain call the original weights and shapes."""
    p = processing("sdxl", forge.generation)
    model = p.sd_model.forge_objects.unet.model
    lora = user_lora(model, 5)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    call_forge(p, forge, [("A.safetensors", lora, 1.0)], method)
    changed = {k for k, v in model.named_parameters() if v.shape != before[k].shape or not torch.equal(v, before[k])}
    ours = set(accepted(p.sd_model.forge_objects.unet))
    assert changed == set(lora) | ours
    if method.spec.conditions:
        assert model.get_parameter("diffusion_model.input_blocks.0.0.weight").shape[1] == 8
    call_forge(p, forge, [("A.safetensors", lora, 1.0)])
    for key, value in model.named_parameters():
        expected = before[key] + lora_delta(lora[key], 1.0, value.shape) if key in lora else before[key]
        assert value.shape == expected.shape, key
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0, msg=key)
    call_forge(p, forge, [])
    assert all(v.shape == before[k].shape and torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_sharing_weights_keep_one_host_patcher_across_calls(forge):
    """The sharing weights go to the memory manager with the same patcher every call: Neo logs
    "Memory Leak" (and keeps a dead entry) for each patcher that dies while its network lives."""
    p = processing("sd15", forge.generation)
    first = call_forge(p, forge, [], Method.FG_ONLY_ATTN_SD15)
    second = call_forge(p, forge, [], Method.FG_ONLY_ATTN_SD15)
    patcher, = first.extra_patchers
    assert second.extra_patchers == [patcher] and patcher.model is first.extra_modules[0]


def test_shared_attention_computes_with_the_merged_lora(forge):
    """The sharing processor merges its own per-frame LoRAs into the projections when it first
    runs, which is after Forge merged the user's: the output is the published algorithm's on the
    LoRA-merged attention module."""
    p = processing("sd15", forge.generation)
    lora = user_lora(p.sd_model.forge_objects.unet.model, 3)
    unet = call_forge(p, forge, [("A.safetensors", lora, 1.0)], Method.FG_ONLY_ATTN_SD15)
    assert_shares_attention_with(unet, lambda key, weight: weight)


@pytest.mark.parametrize("forge", [2, 3], indirect=True, ids=["current-forge", "forge-neo"])  # not early Forge
def test_online_loras_reach_the_shared_attention(forge):
    """Current Forge and Neo keep LoRAs beside low-bit weights (online mode) and apply them in
    the layer's forward (Forge: `forge_online_loras`; Neo: `weight_function`, which merges into
    the tensor it is given); the sharing processor must take the weights that forward would use
    and leave the stored weights as they are, call after call."""
    p = processing("sd15", forge.generation)
    lora = user_lora(p.sd_model.forge_objects.unet.model, 4)
    stored = {k: v.detach().clone() for k, v in p.sd_model.forge_objects.unet.model.named_parameters()}
    unet = call_forge(p, forge, [("A.safetensors", lora, 1.0)], Method.FG_ONLY_ATTN_SD15, online_mode=True)
    model = unet.model
    name = attention_modules(Family.SD15)[0]
    hook = "forge_online_loras" if forge.generation == 2 else "weight_function"
    assert all(hasattr(model.get_submodule(f"diffusion_model.{name}.{proj}"), hook)
               for proj in ("to_q", "to_k", "to_v", "to_out.0"))
    for _ in range(2):
        assert_shares_attention_with(unet, lambda key, weight: weight + lora_delta(lora[key], 1.0, weight.shape))
        unet.model.get_submodule(f"diffusion_model.{name}")._key = None  # build the processor again
    assert all(torch.equal(v, stored[k]) for k, v in model.named_parameters())


def assert_shares_attention_with(unet, effective):
    """The first stand-in's output equals the published algorithm on a copy of the original
    module whose projections hold `effective(key, stored weight)`."""
    model = unet.model
    name = attention_modules(Family.SD15)[0]
    module = model.get_submodule(f"diffusion_model.{name}")
    reference = copy.deepcopy(module.original)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        key = f"diffusion_model.{name}.{proj}.weight"
        reference.get_submodule(proj).weight.data = effective(key, model.get_parameter(key).detach().clone())
    weights, = unet.extra_modules
    h = torch.randn(2, (SIZE // 8) ** 2, reference.to_q.in_features)
    mark = torch.tensor([1.0, 0.0])
    out = module(h, transformer_options={"cond_mark": mark})
    expected = published_unit(reference, weights.hookers.layers[0], 1, h, None, mark, [None], None)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_neo_patches_gguf_weights_on_the_fly_and_keeps_them_packed(forge):
    """A GGUF Flux in real Neo 2.26: merging into the packed weights left plain tensors of
    packed bytes (HTTP 500 on that call and every call after, plain ones too, until a
    restart). The patches of quantised weights go in as Neo's on-the-fly LoRAs: the packed
    weight stays, and the layer sees the dequantised weight plus the patch."""
    if forge.generation != 3:
        return
    p = processing("flux", forge.generation)
    model = p.sd_model.forge_objects.unet.model
    originals = {n: v.detach().float().clone() for n, v in model.named_parameters()}
    packed = {f"diffusion_model.{n}" for n in ff.gguf_weights(model.diffusion_model, "double_blocks.")}
    dequantised = {n: v.gguf_cls.dequantize_pytorch(v) for n, v in model.named_parameters() if n in packed}
    patched, outputs = run_job(p, args_for(Method.FLUX_FG_ONLY, weight=0.7))
    assert ERROR_KEY not in p.extra_generation_params and [img.mode for img in outputs] == ["RGBA"]
    merged = _forge_merge(patched[0], originals)
    forge.memory.load_unet(patched[0])
    host = detect_host()
    touched = [n for n in packed if n in patched[0].patches]
    assert touched
    for name in touched:
        parent, _, weight = ff.get_attr_with_parent(model, name.rsplit(".", 1)[0] + ".weight")
        assert getattr(weight, "gguf_cls", None) is not None, name  # still packed
        effective, _ = host.linear_weights(parent)
        torch.testing.assert_close(effective.float(), dequantised[name] + merged[name] - originals[name],
                                   atol=1e-4, rtol=1e-4)
