"""End-to-end generation with every method on tiny SD1.5 / SDXL pipelines and tiny weight files
in the official formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_layerdiffuse.engine import LayerDiffuse, UnsupportedModelError
from lib_layerdiffuse.methods import Family, Method, methods_for
from lib_layerdiffuse.testing.layer_files import write_unet_files
from lib_layerdiffuse.testing.pipelines import tiny_pipeline
from lib_layerdiffuse.testing.unet_specs import TINY
from lib_layerdiffuse.weights import WeightStore

STEPS = 3
SIZE = dict(width=64, height=64)


@pytest.fixture(scope="session")
def weight_folders(tmp_path_factory):
    out = {}
    for family in ("sd15", "sdxl"):
        folder = tmp_path_factory.mktemp(f"weights-{family}")
        out[family] = (folder, write_unet_files(folder, TINY[family]))
    return out


def make_engine(weight_folders, family: str, **kwargs) -> LayerDiffuse:
    folder, catalog = weight_folders[family]
    store = WeightStore(folder, allow_download=False, progress=False, catalog=catalog)
    return LayerDiffuse(tiny_pipeline(family), store=store, progress=False, decoder_passes=1, **kwargs)


@pytest.fixture(scope="module")
def engines(weight_folders):
    return {f: make_engine(weight_folders, f) for f in ("sd15", "sdxl")}


def subject(colour=(200, 40, 40), size=(48, 40)) -> np.ndarray:
    img = np.zeros(size + (4,), np.uint8)
    img[8:32, 8:28] = colour + (255,)
    return img


def conditions(method: Method, colour=(200, 40, 40)) -> dict:
    return {name: subject(colour) for name in method.conditions}


def snapshot(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize("method", [m for m in Method if m.family in (Family.SD15, Family.SDXL)],
                         ids=lambda m: m.name)  # Flux: test_flux.py; Qwen-Image: test_qwen.py
def test_every_method_generates_its_frames_and_restores_the_unet(method, engines):
    engine = engines[method.family.value]
    unet = engine.pipe.unet
    before = snapshot(unet)
    processors = dict(unet.attn_processors)
    result = engine.generate("an apple", method, steps=STEPS, seed=1, **SIZE, **conditions(method))
    spec = method.spec
    assert [im.frame for im in result.images] == list(spec.frames)
    for i, im in enumerate(result.images):
        assert im.image.size == (64, 64)
        if i in spec.transparent:
            assert im.image.mode == "RGBA" and im.preview is not None
            alpha = np.asarray(im.image)[..., 3]
            assert alpha.min() < 255  # a real alpha channel, not an opaque image with a fourth band
        else:
            assert im.image.mode == "RGB" and im.image is im.original
    assert result.unet_calls == (STEPS, 0)
    assert "layerdiffusion_method: " + method.value in result.infotext
    assert same_state(before, snapshot(unet))
    assert unet.conv_in.in_channels == 4
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in processors.items()}


@pytest.mark.parametrize("method", [m for m in Method if m.conditions], ids=lambda m: m.name)
def test_condition_images_change_the_result(method, engines):
    engine = engines[method.family.value]
    red = engine.generate("an apple", method, steps=2, seed=3, **SIZE, **conditions(method))
    blue = engine.generate("an apple", method, steps=2, seed=3, **SIZE, **conditions(method, (30, 60, 220)))
    again = engine.generate("an apple", method, steps=2, seed=3, **SIZE, **conditions(method))
    assert np.array_equal(as_array(red.images[0].original), as_array(again.images[0].original))
    assert not np.array_equal(as_array(red.images[0].original), as_array(blue.images[0].original))


@pytest.mark.parametrize("method", [Method.FG_TO_BLEND, Method.FG_BLEND_TO_BG, Method.BG_BLEND_TO_FG],
                         ids=lambda m: m.name)
def test_concat_methods_work_for_batches_with_one_condition(method, engines):
    result = engines["sdxl"].generate("an apple", method, steps=2, seed=5, batch=3, **SIZE,
                                      **conditions(method))
    assert len(result.images) == 3
    first, second = (as_array(im.original) for im in result.images[:2])
    assert not np.array_equal(first, second)


def test_sd15_multi_frame_batches_hold_several_sets(engines):
    result = engines["sd15"].generate("an apple", Method.JOINT_SD15, steps=2, seed=5, batch=6, **SIZE)
    assert [im.frame for im in result.images] == ["fg", "bg", "blend"] * 2
    assert [im.transparent for im in result.images] == [True, False, False] * 2


@pytest.mark.parametrize("method", [Method.FG_TO_BLEND, Method.FG_ONLY_ATTN, Method.JOINT_SD15],
                         ids=lambda m: m.name)
def test_stop_at_switches_to_the_plain_unet(method, engines):
    engine = engines[method.family.value]
    kw = dict(steps=4, seed=9, **SIZE, **conditions(method))
    full = engine.generate("an apple", method, **kw)
    half = engine.generate("an apple", method, stop_at=0.5, **kw)
    off = engine.generate("an apple", method, stop_at=0.0, **kw)
    assert full.unet_calls == (4, 0) and half.unet_calls == (2, 2) and off.unet_calls == (0, 4)
    pipe = engine.pipe
    plain = pipe("an apple", num_inference_steps=4, num_images_per_prompt=method.frames,
                 generator=torch.Generator().manual_seed(9), guidance_scale=7.0, output_type="np", **SIZE)
    plain_images = [(x * 255).round() for x in plain.images]
    # stopped before the first step: exactly the model without LayerDiffuse
    off_images = [as_array(im.original) for im in off.images]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(off_images, plain_images))
    half_image = as_array(half.images[0].original)
    assert not np.array_equal(half_image, off_images[0])
    assert not np.array_equal(half_image, as_array(full.images[0].original))


def test_weight_scales_the_patch(engines):
    engine = engines["sdxl"]
    kw = dict(steps=2, seed=4, **SIZE)
    zero = engine.generate("an apple", Method.FG_ONLY_CONV, weight=0.0, **kw)
    one = engine.generate("an apple", Method.FG_ONLY_CONV, weight=1.0, **kw)
    plain = engine.pipe("an apple", num_inference_steps=2, generator=torch.Generator().manual_seed(4),
                        guidance_scale=7.0, output_type="np", **SIZE).images[0]
    assert np.abs(as_array(zero.images[0].original) - (plain * 255).round()).max() <= 1
    assert not np.array_equal(as_array(zero.images[0].original), as_array(one.images[0].original))


def test_additional_prompts_change_their_result(engines):
    engine = engines["sd15"]
    kw = dict(steps=2, seed=2, **SIZE)
    plain = engine.generate("an apple", Method.JOINT_SD15, **kw)
    extra = engine.generate("an apple", Method.JOINT_SD15, fg_prompt="red glass", **kw)
    assert not np.array_equal(as_array(plain.images[0].original), as_array(extra.images[0].original))


def test_transparent_img2img_uses_the_alpha_of_the_init_image(engines):
    engine = engines["sdxl"]
    opaque = subject()
    opaque[..., 3] = 255
    kw = dict(steps=4, seed=6, strength=0.5, width=64, height=64)
    with_alpha = engine.generate("an apple", Method.FG_ONLY_ATTN, init_image=subject(), **kw)
    without = engine.generate("an apple", Method.FG_ONLY_ATTN, init_image=opaque, **kw)
    assert with_alpha.images[0].image.mode == "RGBA"
    assert with_alpha.settings["Denoising strength"] == 0.5
    assert not np.array_equal(as_array(with_alpha.images[0].original), as_array(without.images[0].original))


def test_progress_reports_every_step_and_every_decoded_image(engines):
    calls = []
    on_progress = lambda *a: calls.append(a)  # noqa: E731
    engines["sd15"].generate("an apple", Method.JOINT_SD15, steps=3, seed=2, batch=3, on_progress=on_progress, **SIZE)
    assert calls == [("Sampling", 1, 3), ("Sampling", 2, 3), ("Sampling", 3, 3),
                     ("Decoding", 1, 3), ("Decoding", 2, 3), ("Decoding", 3, 3)]
    calls.clear()
    engines["sdxl"].generate("an apple", Method.FG_ONLY_ATTN, steps=4, seed=2, init_image=subject(), strength=0.5,
                             on_progress=on_progress, **SIZE)
    assert calls == [("Sampling", 1, 2), ("Sampling", 2, 2), ("Decoding", 1, 1)]  # img2img runs its share


def test_the_unet_is_restored_when_sampling_fails(engines):
    engine = engines["sdxl"]
    unet = engine.pipe.unet
    before = snapshot(unet)

    def boom(module, args, kwargs):
        raise RuntimeError("out of memory (simulated)")

    handle = unet.up_blocks[0].register_forward_pre_hook(boom, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            engine.generate("an apple", Method.BG_BLEND_TO_FG, steps=2, **SIZE, **conditions(Method.BG_BLEND_TO_FG))
    finally:
        handle.remove()
    assert same_state(before, snapshot(unet)) and unet.conv_in.in_channels == 4
    assert not unet._forward_pre_hooks


def count_unet_calls(unet) -> list:
    calls = []
    unet.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("family, method, kwargs, error, message", [
    ("sd15", Method.FG_ONLY_ATTN, {}, UnsupportedModelError, "needs an SDXL model"),
    ("sdxl", Method.JOINT_SD15, {}, UnsupportedModelError, "needs an SD1.5 model"),
    ("sd15", Method.JOINT_SD15, {"batch": 2}, ValueError, "multiple of 3"),
    ("sd15", Method.BG_TO_FG_SD15, {}, ValueError, "needs a Background image"),
    ("sdxl", Method.FG_TO_BLEND, {"fg": subject(), "bg": subject()}, ValueError, "does not use a bg image"),
    ("sdxl", Method.FG_ONLY_ATTN, {"width": 60}, ValueError, "multiples of 8"),
    ("sdxl", Method.FG_ONLY_ATTN, {"weight": 3}, ValueError, "weight must be between 0 and 2"),
    ("sdxl", Method.FG_ONLY_ATTN, {"sampler": "LMS"}, ValueError, "unknown sampler"),
    ("sdxl", "no such method", {}, ValueError, "unknown LayerDiffuse method"),
])
def test_bad_requests_fail_before_sampling(weight_folders, family, method, kwargs, error, message):
    engine = make_engine(weight_folders, family)
    calls = count_unet_calls(engine.pipe.unet)
    before = snapshot(engine.pipe.unet)
    with pytest.raises(error, match=message):
        engine.generate("an apple", method, steps=2, **{**SIZE, **kwargs})
    assert not calls and same_state(before, snapshot(engine.pipe.unet))


def test_missing_weights_fail_before_sampling_with_the_file_name(tmp_path):
    engine = LayerDiffuse(tiny_pipeline("sdxl"), store=WeightStore(tmp_path, allow_download=False, progress=False),
                          progress=False)
    calls = count_unet_calls(engine.pipe.unet)
    with pytest.raises(Exception, match="layer_xl_transparent_attn.safetensors"):
        engine.generate("an apple", Method.FG_ONLY_ATTN, steps=2, **SIZE)
    assert not calls


def test_default_method_follows_the_family(engines):
    result = engines["sd15"].generate("an apple", steps=1, seed=1, **SIZE)
    assert result.method is Method.FG_ONLY_ATTN_SD15
    assert [m.family.value for m in methods_for("sd15")] == ["sd15"] * 4


@pytest.mark.parametrize("family, method", [("sdxl", Method.FG_ONLY_CONV), ("sd15", Method.FG_ONLY_ATTN_SD15)])
def test_generate_each_gives_every_item_the_image_it_gets_alone(engines, family, method):
    engine = engines[family]
    items = [("an apple", 11), ("a glass cup", 12), ("an apple", 13)]
    together = engine.generate_each(items, method, steps=STEPS, **SIZE)
    assert [r.seed for r in together] == [11, 12, 13]
    for result, (prompt, seed) in zip(together, items):
        alone = engine.generate(prompt, method, steps=STEPS, seed=seed, **SIZE)
        assert result.infotext == alone.infotext
        a, b = (np.asarray(r.images[0].image).astype(int) for r in (result, alone))
        assert a.shape == b.shape and np.abs(a - b).max() <= 2  # batched arithmetic, same noise
    first, second = (np.asarray(r.images[0].image) for r in together[:2])
    assert not np.array_equal(first, second)


def test_generate_each_refuses_what_it_cannot_batch(engines):
    with pytest.raises(ValueError, match="one-frame methods"):
        engines["sd15"].generate_each([("a", 1)], Method.JOINT_SD15, steps=STEPS, **SIZE)
    with pytest.raises(ValueError, match="at least one"):
        engines["sd15"].generate_each([], Method.FG_ONLY_ATTN_SD15)
    with pytest.raises(TypeError, match="unknown settings: colour"):
        engines["sd15"].generate_each([("a", 1)], Method.FG_ONLY_ATTN_SD15, colour="red")
