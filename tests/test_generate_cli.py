"""`python -m lib_layerdiffuse generate` and model-family detection before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_layerdiffuse.cli import main
from lib_layerdiffuse.engine import UnsupportedModelError, family_of_model, family_of_unet_config
from lib_layerdiffuse.engine.family import family_of_ldm_layout
from lib_layerdiffuse.methods import Family
from lib_layerdiffuse.testing.layer_files import write_unet_files
from lib_layerdiffuse.testing.pipelines import tiny_pipeline
from lib_layerdiffuse.testing.unet_specs import FULL, TINY, diffusers_unet_config, ldm_unet_layout
from lib_layerdiffuse.weights import catalog as catalog_module


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for family in ("sd15", "sdxl"):
        folder = root / family
        tiny_pipeline(family).save_pretrained(folder)
        weights = root / f"weights-{family}"
        out[family] = (folder, weights, write_unet_files(weights, TINY[family]))
    return out


@pytest.fixture()
def tiny_catalog(saved_models, monkeypatch):
    for _, _, catalog in saved_models.values():
        for name, entry in catalog.items():
            monkeypatch.setitem(catalog_module.CATALOG, name, entry)


def test_generate_writes_straight_alpha_pngs_with_parameters(saved_models, tiny_catalog, tmp_path, capsys):
    model, weights, _ = saved_models["sdxl"]
    out = tmp_path / "out"
    code = main(["generate", "--model", str(model), "--models-dir", str(weights), "--method", "FG_ONLY_CONV",
                 "--prompt", "an apple", "--steps", "2", "--seed", "7", "--width", "64", "--height", "64",
                 "--batch", "2", "--passes", "1", "--out", str(out), "--previews", "-q"])
    assert code == 0, capsys.readouterr().err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["layerdiffuse-7-00-fg-preview.png", "layerdiffuse-7-00-fg.png",
                     "layerdiffuse-7-01-fg-preview.png", "layerdiffuse-7-01-fg.png"]
    with Image.open(out / "layerdiffuse-7-00-fg.png") as img:
        assert img.mode == "RGBA"
        assert np.asarray(img)[..., 3].min() < 255
        text = img.text["parameters"]
        settings = json.loads(img.text["layerdiffuse"])
    assert text.startswith("an apple\nSteps: 2, Sampler: ")
    assert "Seed: 7" in text and "layerdiffusion_method: (SDXL) Only Generate Transparent Image (Conv Injection)" in text
    assert settings["Seed"] == 7
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in printed) == files


def test_generate_with_condition_files_and_per_method_sampler(saved_models, tiny_catalog, tmp_path, capsys):
    model, weights, _ = saved_models["sdxl"]
    fg = np.zeros((40, 56, 4), np.uint8)
    fg[5:30, 5:30] = (255, 0, 0, 255)
    Image.fromarray(fg, "RGBA").save(tmp_path / "fg.png")
    Image.fromarray(fg[..., :3], "RGB").save(tmp_path / "blend.jpg")
    out = tmp_path / "out"
    code = main(["generate", "--model", str(model), "--models-dir", str(weights), "--method",
                 "(SDXL) From Foreground and Blending to Background", "--prompt", "a room", "--steps", "2",
                 "--seed", "1", "--width", "64", "--height", "64", "--fg", str(tmp_path / "fg.png"),
                 "--blend", str(tmp_path / "blend.jpg"), "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    with Image.open(out / "layerdiffuse-1-00-bg.png") as img:
        assert img.mode == "RGB" and "Sampler: Euler a" in img.text["parameters"]


def test_wrong_family_is_refused_before_the_model_loads(saved_models, tmp_path, capsys, monkeypatch):
    from lib_layerdiffuse.engine import LayerDiffuse

    monkeypatch.setattr(LayerDiffuse, "from_model", lambda *a, **k: pytest.fail("model was loaded"))
    model, _, _ = saved_models["sd15"]
    code = main(["generate", "--model", str(model), "--method", "FG_ONLY_ATTN", "--prompt", "x",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "needs an SDXL model, but the model is SD1.5" in err


@pytest.mark.parametrize("args, message", [
    (["--fg", "missing.png", "--method", "FG_TO_BLEND"], "--fg: there is no file 'missing.png'"),
    (["--sampler", "PLMS"], "unknown sampler"),
    (["--method", "nonsense"], "unknown LayerDiffuse method"),
])
def test_bad_arguments_are_refused_before_the_model_loads(saved_models, tmp_path, capsys, monkeypatch,
                                                          args, message):
    from lib_layerdiffuse.engine import LayerDiffuse

    monkeypatch.setattr(LayerDiffuse, "from_model", lambda *a, **k: pytest.fail("model was loaded"))
    model, _, _ = saved_models["sdxl"]
    code = main(["generate", "--model", str(model), "--prompt", "x", "--out", str(tmp_path), *args])
    assert code == 2 and message in capsys.readouterr().err


def _checkpoint(path, layout):
    save_file({f"model.diffusion_model.{k}": torch.zeros(s, dtype=torch.float16) for k, s in layout.items()},
              str(path))
    return path


def _variant(family, **changes):
    """The tiny LDM layout of `family` with some tensors replaced (None removes one)."""
    layout = dict(ldm_unet_layout(TINY[family]))
    for key, shape in changes.items():
        key = key.replace("__", ".")
        if shape is None:
            layout.pop(key)
        else:
            layout[key] = shape
    return layout


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_family_from_ldm_names_and_shapes(tmp_path, family):
    assert family_of_model(str(_checkpoint(tmp_path / "model.safetensors", _variant(family)))) is Family(family)
    assert family_of_ldm_layout(ldm_unet_layout(FULL[family])) is Family(family)


@pytest.mark.parametrize("layout, message", [
    (_variant("sd15", input_blocks__1__1__proj_in__weight=(16, 16)), "Stable Diffusion 2.x"),
    (_variant("sd15", label_emb__0__0__weight=(64, 40)), "refiner"),
    (_variant("sd15", input_blocks__0__0__weight=(16, 9, 3, 3)), "9 input channels"),
    ({"double_blocks.0.img_attn.qkv.weight": (9, 3)}, "no SD UNet"),
])
def test_unsupported_single_files_are_named(tmp_path, layout, message):
    with pytest.raises(UnsupportedModelError, match=message):
        family_of_model(str(_checkpoint(tmp_path / "model.safetensors", layout)))


def test_other_unsupported_inputs(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(UnsupportedModelError, match="pickled"):
        family_of_model(str(tmp_path / "model.ckpt"))
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(UnsupportedModelError, match="cannot be read"):
        family_of_model(str(tmp_path / "broken.safetensors"))
    with pytest.raises(UnsupportedModelError, match="there is no such file on this machine"):
        family_of_model(str(tmp_path / "absent.safetensors"))
    with pytest.raises(UnsupportedModelError, match="without unet/config.json"):
        family_of_model(str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="not in the Hugging Face cache .+HF_HUB_OFFLINE is set"):
        family_of_model("someone/some-model")  # HF_HUB_OFFLINE is set for tests


@pytest.mark.parametrize("model, flags, said", [
    ("/no/such/folder", [], "`/no/such/folder`: there is no such folder on this machine"),
    ("./models/absent.safetensors", [], "there is no such file on this machine"),
    ("someone/some-model", ["--offline"], "downloads are off (--offline). Download it on a machine with network "
                                          "(`hf download someone/some-model`)"),
])
def test_generate_says_what_is_missing_in_plain_words(tmp_path, capsys, model, flags, said):
    code = main(["generate", "--model", model, "--prompt", "x", "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and said in err
    for internal in ("HFValidationError", "Repo id must", "local_files_only", "Traceback"):
        assert internal not in err


def test_family_of_diffusers_configs():
    assert family_of_unet_config(diffusers_unet_config(TINY["sdxl"])) is Family.SDXL
    assert family_of_unet_config(diffusers_unet_config(TINY["sd15"])) is Family.SD15
    sd2 = dict(diffusers_unet_config(TINY["sd15"]), use_linear_projection=True)
    with pytest.raises(UnsupportedModelError, match="2.x"):
        family_of_unet_config(sd2)


def test_models_reported_not_to_work_are_warned_about():
    from lib_layerdiffuse.engine.family import compatibility_warning

    assert "illustrious" in compatibility_warning("/models/illustriousXL_v01.safetensors")
    assert "lightning" in compatibility_warning("ByteDance/SDXL-Lightning")
    assert compatibility_warning("stabilityai/stable-diffusion-xl-base-1.0") is None


def test_generate_says_plainly_when_the_model_kind_is_reported_not_to_work(saved_models, tiny_catalog,
                                                                          tmp_path, capsys):
    model, weights, _ = saved_models["sdxl"]
    named = tmp_path / "tiny-sdxl-lightning"
    named.symlink_to(model, target_is_directory=True)
    with pytest.warns(UserWarning, match="looks like a lightning model") as record:
        code = main(["generate", "--model", str(named), "--models-dir", str(weights), "--prompt", "an apple",
                     "--steps", "1", "--seed", "1", "--width", "64", "--height", "64", "--passes", "1",
                     "--out", str(tmp_path / "out"), "-q"])
    assert code == 0, capsys.readouterr().err
    assert sum("lightning" in str(w.message) for w in record) == 1


def test_missing_weights_are_reported_before_the_model_loads(saved_models, tmp_path, capsys, monkeypatch):
    from lib_layerdiffuse.engine import LayerDiffuse
    from lib_layerdiffuse.methods import Method

    monkeypatch.setattr(LayerDiffuse, "from_model", lambda *a, **k: pytest.fail("model was loaded"))
    model, _, _ = saved_models["sd15"]
    code = main(["generate", "--model", str(model), "--models-dir", str(tmp_path / "empty"), "--prompt", "x",
                 "--offline", "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "layer_sd15_transparent_attn.safetensors" in err, err  # the SD1.5 default
    assert Method.default("sd15") is Method.FG_ONLY_ATTN_SD15
