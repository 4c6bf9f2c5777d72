"""Qwen-Image-2.1 (native RGBA) and Qwen-Image-Layered (decomposition) on tiny random
pipelines built from the real configs scaled down, the real-size transformers on the meta
device, and the command line end to end on saved tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from lib_layerdiffuse.engine import LayerDiffuse
from lib_layerdiffuse.engine.family import (
    UnsupportedModelError,
    family_of_bfl_layout,
    family_of_forge_model,
    family_of_transformer_config,
    locate_layered_model,
    locate_model,
)
from lib_layerdiffuse.engine.qwen import QwenImage21Engine, clean_alpha
from lib_layerdiffuse.layers.decompose import Decomposition, LayerDecomposer
from lib_layerdiffuse.methods import Family, Method
from lib_layerdiffuse.testing.qwen import meta_transformer, save_pipeline, tiny_layered_pipeline, tiny_qwen21_pipeline

SIZE = dict(width=64, height=32)


@pytest.fixture(scope="module")
def pipe():
    return tiny_qwen21_pipeline()


@pytest.fixture(scope="module")
def layered():
    return tiny_layered_pipeline()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pipe, layered):
    root = tmp_path_factory.mktemp("qwen")
    save_pipeline(pipe, root / "qwen21")
    save_pipeline(layered, root / "layered")
    return root


def direct(pipe, prompt, seed, **kw):
    """What the pipeline itself gives for the same call, as uint8 RGBA."""
    out = pipe(prompt, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
               **kw).images
    return np.round(np.clip(np.asarray(out), 0, 1) * 255).astype(np.uint8)


# ---- which model is it -----------------------------------------------------------------

def test_families_from_configs_layouts_and_forge_neo_models():
    assert family_of_transformer_config({"_class_name": "QwenImage21Transformer2DModel"}) is Family.QWEN21
    with pytest.raises(UnsupportedModelError, match="Qwen-Image-Layered.*decompose"):
        family_of_transformer_config({"_class_name": "QwenImageTransformer2DModel", "use_layer3d_rope": True})
    with pytest.raises(UnsupportedModelError, match="RGB images only.*Qwen-Image-2.1"):
        family_of_transformer_config({"_class_name": "QwenImageTransformer2DModel"})
    # real-size layouts: single files in diffusers names, and the model Forge Neo loads
    full = meta_transformer()
    shapes = {k: tuple(v.shape) for k, v in full.named_parameters()}
    assert family_of_bfl_layout(shapes) is Family.QWEN21
    assert family_of_forge_model(full) is Family.QWEN21
    assert sum(p.numel() for p in full.parameters()) == 7_115_124_736
    layered_shapes = {k: tuple(v.shape) for k, v in meta_transformer(layered=True).named_parameters()}
    with pytest.raises(UnsupportedModelError, match="Qwen-Image-Layered"):
        family_of_bfl_layout(layered_shapes)
    rgb_only = {k: v for k, v in layered_shapes.items() if "addition_t_embedding" not in k}
    with pytest.raises(UnsupportedModelError, match="RGB images only"):
        family_of_bfl_layout(rgb_only)


def test_saved_models_are_told_apart_before_loading(saved):
    location = locate_model(str(saved / "qwen21"))
    assert location.family is Family.QWEN21 and location.local_only
    with pytest.raises(UnsupportedModelError, match="decompose"):
        locate_model(str(saved / "layered"))
    assert locate_layered_model(str(saved / "layered")).family is None
    with pytest.raises(UnsupportedModelError, match="not Qwen-Image-Layered.*QwenImage21Transformer2DModel"):
        locate_layered_model(str(saved / "qwen21"))


def test_a_single_transformer_file_is_known_and_asked_for_the_whole_model(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "qwen_image_2.1_bf16.safetensors"  # ComfyUI's repack: the transformer alone
    save_file({"txt_in.text_norm.weight": torch.zeros(8), "img_in.weight": torch.zeros(8, 64),
               "transformer_blocks.0.attn.to_q.weight": torch.zeros(8, 8)}, str(path))
    assert locate_model(str(path)).family is Family.QWEN21
    with pytest.raises(UnsupportedModelError, match="single Qwen-Image-2.1 transformer file.*diffusers folder"):
        LayerDiffuse.from_model(str(path), local_files_only=True)


def test_the_native_method_is_refused_on_layerdiffuse_models_by_name():
    from lib_layerdiffuse.engine.family import check_method_family

    for family in (Family.SD15, Family.SDXL, Family.FLUX):
        with pytest.raises(UnsupportedModelError, match=f"needs a Qwen-Image-2.1 model, but the model is {family.label}"):
            check_method_family(Method.QWEN21_RGBA, family)


def test_methods_of_the_family():
    assert Method.default(Family.QWEN21) is Method.QWEN21_RGBA
    assert Method.parse("Native RGBA") is Method.QWEN21_RGBA
    assert Method.QWEN21_RGBA.weight_files == () and "Qwen Research License" in Method.QWEN21_RGBA.spec.licence
    assert Family.QWEN21.native_rgba and not Family.SDXL.native_rgba


# ---- native RGBA -----------------------------------------------------------------------

def test_layerdiffuse_picks_the_engine_and_gives_the_pipelines_own_rgba(pipe):
    ld = LayerDiffuse(pipe, progress=False)
    assert isinstance(ld, QwenImage21Engine) and ld.family is Family.QWEN21
    steps = []
    result = ld.generate("a fox", steps=2, seed=7, on_progress=lambda *a: steps.append(a), **SIZE)
    image = result.images[0]
    assert image.image.mode == "RGBA" and image.transparent and image.frame == "fg"
    assert np.array_equal(np.asarray(image.image), direct(pipe, "a fox", 7, **SIZE)[0])
    assert np.array_equal(np.asarray(image.original), np.asarray(image.image)[..., :3])
    assert image.preview.mode == "RGB" and image.preview.size == (64, 32)
    assert steps[:2] == [("Sampling", 1, 2), ("Sampling", 2, 2)] and steps[-1] == ("Decoding", 1, 1)
    assert "layerdiffusion_method: (Qwen-Image-2.1) Native RGBA" in result.infotext
    assert "Seed: 7" in result.infotext and "layerdiffusion_weight" not in result.infotext


def test_batch_and_generate_each_keep_every_seed(pipe):
    ld = LayerDiffuse(pipe, progress=False)
    batch = ld.generate("a fox", steps=2, seed=3, batch=2, **SIZE)
    assert len(batch.images) == 2 and [im.index for im in batch.images] == [0, 1]
    assert np.array_equal(np.stack([np.asarray(i) for i in batch.rgba]),
                          direct(pipe, "a fox", 3, num_images_per_prompt=2, **SIZE))
    each = ld.generate_each([("a fox", 3), ("a cat", 4)], steps=2, **SIZE)
    for result, (prompt, seed) in zip(each, [("a fox", 3), ("a cat", 4)]):
        alone = ld.generate(prompt, steps=2, seed=seed, **SIZE)  # up to batched float rounding (1 of 255)
        assert np.abs(np.asarray(result.rgba[0]).astype(int) - np.asarray(alone.rgba[0])).max() <= 1
        assert f"Seed: {seed}" in result.infotext


def test_alpha_floor_clears_only_alpha_at_or_under_it(pipe):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = np.arange(16).reshape(4, 4) * 17
    rgba[..., :3] = 90
    out = clean_alpha(rgba, 40)
    low = rgba[..., 3] <= 40
    assert (out[low] == 0).all() and np.array_equal(out[~low], rgba[~low])
    assert clean_alpha(rgba, 0) is rgba
    ld = LayerDiffuse(pipe, progress=False)
    plain = np.asarray(ld.generate("a fox", steps=2, seed=5, **SIZE).rgba[0])
    floor = int(np.percentile(plain[..., 3], 30))
    cleaned = np.asarray(ld.generate("a fox", steps=2, seed=5, alpha_floor=floor, **SIZE).rgba[0])
    kept = plain[..., 3] > floor
    assert kept.any() and (~kept).any()
    assert np.array_equal(cleaned[kept], plain[kept]) and (cleaned[~kept] == 0).all()


def test_an_rgba_image_is_edited_with_its_alpha(pipe, monkeypatch):
    seen = {}
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    init = np.zeros((64, 96, 4), np.uint8)
    init[16:48, 32:64] = (30, 200, 90, 255)
    result = LayerDiffuse(pipe, progress=False).generate("make it blue", init_image=init, steps=2, seed=1)
    given = np.asarray(seen["image"])
    assert seen["image"].mode == "RGBA" and np.array_equal(given, init)  # alpha reaches the pipeline
    assert result.rgba[0].size == (96, 64) and "Edited image: RGBA input" in result.infotext
    assert seen["output_resolution"] == round((96 * 64) ** 0.5)


def test_turbo_samples_its_fixed_grid():
    turbo = LayerDiffuse(tiny_qwen21_pipeline(turbo=True), progress=False)
    assert turbo.fixed_sigmas == [1.0, 0.7, 0.41]
    result = turbo.generate("a fox", seed=2, width=32, height=32)
    assert "Steps: 3" in result.infotext
    with pytest.raises(ValueError, match="fixed grid of 3 steps"):
        turbo.generate("a fox", steps=20, width=32, height=32)


@pytest.mark.parametrize("kwargs, words", [
    (dict(width=48), "multiples of 32"),
    (dict(fg=np.zeros((32, 32, 4), np.uint8)), "no layer images"),
    (dict(weight=0.5), "weight and stop_at"),
    (dict(strength=0.5), "by instruction"),
    (dict(sampler="Euler"), "cannot be chosen"),
    (dict(alpha_floor=300), "alpha_floor"),
    (dict(cfg=0.5), "at least 1"),
    (dict(method="FG_ONLY_ATTN"), "needs an SDXL model, but the model is Qwen-Image-2.1"),
])
def test_what_does_not_apply_is_refused_before_sampling(pipe, kwargs, words, monkeypatch):
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("sampled"))
    args = {**SIZE, **kwargs}
    with pytest.raises((ValueError, TypeError), match=words):
        LayerDiffuse(pipe, progress=False).generate("x", steps=1, **args)


# ---- decomposition -----------------------------------------------------------------------

def _source() -> np.ndarray:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = (20, 60, 160)
    rgba[..., 3] = 255
    rgba[12:36, 16:48] = (230, 200, 30, 255)
    return rgba


def test_decompose_gives_rgba_layers_over_the_full_canvas(layered):
    steps = []
    result = LayerDecomposer(layered, progress=False).decompose(
        _source(), 2, prompt="a poster", steps=2, seed=1, cfg=1.0, on_progress=lambda *a: steps.append(a))
    assert len(result.layers) == 2 and {im.mode for im in result.layers} == {"RGBA"}
    assert {im.size for im in result.layers} == {result.source.size} == {(736, 544)}  # the 640 bucket at 4:3
    report = result.report()
    assert report["layers"] == 2 and report["composite_error"] == pytest.approx(result.error, abs=1e-3)
    assert steps[-1] == ("Sampling", 2, 2) and "Layers: 2" in result.infotext
    with pytest.raises(ValueError, match="640, 1024"):
        LayerDecomposer(layered).decompose(_source(), 2, resolution=512)
    with pytest.raises(UnsupportedModelError, match="not Qwen-Image-Layered"):
        LayerDecomposer(tiny_qwen21_pipeline())


def test_layers_that_add_up_report_no_error_and_name_the_empty_ones(tmp_path):
    source = _source()
    bottom = source.copy()
    bottom[12:36, 16:48] = (20, 60, 160, 255)
    top = np.zeros_like(source)
    top[12:36, 16:48] = (230, 200, 30, 255)
    empty = np.zeros_like(source)
    empty[0, :8, 3] = 3  # a few faint specks: still nothing to see
    result = Decomposition([Image.fromarray(a, "RGBA") for a in (bottom, empty, top)], Image.fromarray(source, "RGBA"),
                           5, "a poster\nSeed: 5", {"Seed": 5})
    assert result.error < 0.01 and result.empty == [1] and result.report()["empty"] == [2]
    off = Decomposition([Image.fromarray(bottom, "RGBA")], Image.fromarray(source, "RGBA"), 5, "", {})
    assert off.error == pytest.approx(np.abs(bottom.astype(float) - source).mean(), rel=1e-6)
    paths = result.save(tmp_path, "poster", archive=True)
    names = [p.name for p in paths]
    assert names == ["poster-layer-1.png", "poster-layer-2.png", "poster-layer-3.png", "poster.psd", "poster.zip"]
    from psd_tools import PSDImage

    psd = PSDImage.open(tmp_path / "poster.psd")
    assert psd.size == (64, 48)
    assert [layer.name for layer in psd] == ["Layer 1 (bottom)", "Layer 2", "Layer 3 (top)"]
    for layer, png in zip(psd, paths[:3]):
        with Image.open(png) as saved:
            assert saved.info["parameters"].startswith("a poster")
            assert np.array_equal(np.asarray(layer.topil().convert("RGBA"))[..., 3], np.asarray(saved)[..., 3])
    with zipfile.ZipFile(tmp_path / "poster.zip") as archive:
        assert archive.namelist() == names[:4]
        with Image.open(archive.open("poster-layer-3.png")) as third:
            assert np.array_equal(np.asarray(third), top)


# ---- the command line, end to end on saved tiny models ------------------------------------

def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lib_layerdiffuse", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_cli_generates_and_decomposes_with_saved_models(saved, tmp_path, pipe):
    out = run_cli("generate", "--model", str(saved / "qwen21"), "--prompt", "a fox", "--steps", "2", "--width", "64",
                  "--height", "32", "--seed", "9", "--offline", "-q", "--out", str(tmp_path / "gen"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "gen" / "layerdiffuse-9-00-fg.png"
    with Image.open(written) as image:
        assert image.mode == "RGBA" and "(Qwen-Image-2.1) Native RGBA" in image.info["parameters"]
        assert np.array_equal(np.asarray(image), direct(pipe, "a fox", 9, **SIZE)[0])
    bad = run_cli("generate", "--model", str(saved / "qwen21"), "--prompt", "x", "--width", "48", "--offline",
                  cwd=tmp_path)
    assert bad.returncode == 2 and "multiples of 32" in bad.stderr and "Loading model" not in bad.stderr
    Image.fromarray(_source(), "RGBA").save(tmp_path / "poster.png")
    dec = run_cli("decompose", str(tmp_path / "poster.png"), "--model", str(saved / "layered"), "--layers", "2",
                  "--steps", "2", "--prompt", "a poster", "--seed", "1", "--cfg", "1", "--offline", "-q", "--zip",
                  "-o", str(tmp_path / "dec"), cwd=tmp_path)
    assert dec.returncode == 0, dec.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == [
        "poster-layer-1.png", "poster-layer-2.png", "poster.psd", "poster.zip"]
    assert "2 layers of 736x544, seed 1" in dec.stderr and "empty layers:" in dec.stderr
    wrong = run_cli("decompose", str(tmp_path / "poster.png"), "--model", str(saved / "qwen21"), "--offline",
                    cwd=tmp_path)
    assert wrong.returncode == 2 and "not Qwen-Image-Layered" in wrong.stderr
    assert json.loads((saved / "qwen21" / "model_index.json").read_text())["processor"] == ["transformers",
                                                                                            "Qwen3VLProcessor"]


# ---- batch jobs ---------------------------------------------------------------------------

def _decompose_job(tmp_path, extra: str = ""):
    Image.fromarray(_source(), "RGBA").save(tmp_path / "poster.png")
    job = tmp_path / "job.toml"
    job.write_text(f'{extra}[[decompose]]\nimage = "poster.png"\nlayers = 2\nsteps = 2\ncfg = 1\n'
                   'prompt = "a poster"\nseed = 4\n')
    return job


def test_batch_decompose_entries_are_made_recorded_resumed_and_exported(tmp_path, layered):
    from lib_layerdiffuse.batch import load_job, run_job
    from lib_layerdiffuse.batch.exports import export_psds, export_sprite_sheet

    job = load_job(_decompose_job(tmp_path))
    assert job.model == "" and job.layers_model == "Qwen/Qwen-Image-Layered" and job.items[0].decompose
    out = tmp_path / "out"
    asked = []

    def decomposer(model):
        asked.append(model)
        return LayerDecomposer(layered, progress=False)

    summary = run_job(job, out, lambda model: pytest.fail("no generation engine is needed"), progress=False,
                      decomposer_for=decomposer)
    assert asked == ["Qwen/Qwen-Image-Layered"] and len(summary.made) == 1
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    key = job.items[0].key
    assert record["kind"] == "decompose" and record["layers"]["layers"] == 2 and record["seed"] == 4
    assert [f["name"] for f in record["files"]] == [f"{key}-layer-1.png", f"{key}-layer-2.png", f"{key}.psd"]
    from psd_tools import PSDImage

    assert [layer.name for layer in PSDImage.open(out / f"{key}.psd")] == ["Layer 1 (bottom)", "Layer 2 (top)"]
    again = run_job(job, out, lambda model: pytest.fail("nothing to generate"), progress=False,
                    decomposer_for=lambda model: pytest.fail("nothing to decompose"))
    assert again.skipped == [key] and not again.made
    assert export_psds(out) == []  # the record has its own PSD
    sheet, frame_map = export_sprite_sheet(out)
    assert set(json.loads(frame_map.read_text())["frames"]) == {f"{key}-layer-1.png", f"{key}-layer-2.png"}


@pytest.mark.parametrize("entry, words", [
    ('[[decompose]]\nlayers = 2\n', "needs `image`"),
    ('[[decompose]]\nimage = "nope.png"\n', "no such image file"),
    ('[[decompose]]\nimage = "poster.png"\nlayers = 40\n', "must be 1 .. 16"),
    ('[[decompose]]\nimage = "poster.png"\nresolution = 512\n', "640, 1024"),
    ('[[decompose]]\nimage = "poster.png"\nlayer = 2\n', "unknown setting"),
])
def test_batch_decompose_entries_are_checked_with_their_line(tmp_path, entry, words):
    from lib_layerdiffuse.batch import load_job
    from lib_layerdiffuse.batch.jobfile import JobError

    Image.fromarray(_source(), "RGBA").save(tmp_path / "poster.png")
    (tmp_path / "job.toml").write_text(entry)
    with pytest.raises(JobError, match=words) as caught:
        load_job(tmp_path / "job.toml")
    assert "line" in str(caught.value) and "decompose[0]" in str(caught.value)


@pytest.mark.slow
def test_cli_batch_decomposes_with_a_saved_model_and_refuses_forge_and_ray(saved, tmp_path):
    job = _decompose_job(tmp_path, f'layers_model = "{saved / "layered"}"\n')
    out = run_cli("batch", str(job), "--out", str(tmp_path / "out"), "--offline", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "out").glob("*-layer-*.png"))) == 2 and len(list((tmp_path / "out").glob("*.psd"))) == 1
    refused = run_cli("batch", str(job), "--forge-url", "http://127.0.0.1:9", "--out", str(tmp_path / "x"),
                      cwd=tmp_path)
    assert refused.returncode == 2 and "[[decompose]]" in refused.stderr and "--forge-url" in refused.stderr


def test_alpha_qa_measures_specks_and_the_decoder_grid_and_the_floor_clears_them():
    from lib_layerdiffuse.batch.qa import CHECKS, check_alpha

    yy, xx = np.mgrid[0:128, 0:128]
    subject = np.where((yy - 64) ** 2 + (xx - 64) ** 2 < 30 ** 2, 255, 0).astype(np.uint8)
    clean = check_alpha(subject, CHECKS)
    assert clean.flags == () and clean.specks == 0 and clean.grid < 2
    rng = np.random.default_rng(0)
    specks = subject.copy()
    specks[(rng.random(subject.shape) < 0.03) & (subject == 0)] = 2
    report = check_alpha(specks, CHECKS)
    assert report.flags == ("specks",) and report.specks > 0.02
    assert "specks" not in check_alpha(specks).flags  # not a default check: LayerDiffuse's decoders do not leave them
    grid = subject.copy()
    tiles = ((yy // 16 + xx // 16) % 2 == 0) & (subject == 0)
    grid[tiles] = 4  # a faint level per decoder tile: steps on the tile lines only
    report = check_alpha(grid, CHECKS)
    assert "grid" in report.flags and report.grid > 5
    rgba = np.dstack([np.full(subject.shape + (3,), 120, np.uint8), np.maximum(grid, specks)])
    cleaned = clean_alpha(rgba, 5)[..., 3]
    assert check_alpha(cleaned, CHECKS).flags == () and np.array_equal(cleaned[subject > 0], subject[subject > 0])


def test_batch_generation_on_qwen_samples_items_together_with_their_own_seeds(tmp_path, pipe):
    from lib_layerdiffuse.batch import load_job, run_job

    (tmp_path / "job.toml").write_text('model = "tiny-qwen"\nmethod = "QWEN21_RGBA"\n[defaults]\nsteps = 2\n'
                                       'size = "64x64"\n[matrix]\nprompts = ["a fox", "a cat"]\nseeds = [3]\n'
                                       '[qa]\nchecks = ["empty", "specks", "grid"]\n')
    job = load_job(tmp_path / "job.toml")
    engine = LayerDiffuse(pipe, progress=False)
    calls = []
    original = engine.generate_each
    engine.generate_each = lambda *a, **k: calls.append(len(a[0])) or original(*a, **k)
    run_job(job, tmp_path / "out", lambda model: engine, progress=False, batch_size=4)
    assert calls == [2]  # one batch
    for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        entry, = record["files"]
        assert entry["transparent"] and {"specks", "grid"} <= set(entry["qa"])
        alone = LayerDiffuse(pipe, progress=False).generate(record["settings"]["prompt"], steps=2, seed=3, width=64,
                                                            height=64)
        with Image.open(tmp_path / "out" / entry["name"]) as saved:  # batched matmuls round differently: 1 of 255
            assert np.abs(np.asarray(saved).astype(int) - np.asarray(alone.rgba[0])).max() <= 1
