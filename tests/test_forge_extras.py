"""Forge conventions against the fakes of the three hosts: the Extras cutout, the REST endpoints,
Settings -> LayerDiffuse and the panel's defaults that follow the checkpoint."""

from __future__ import annotations

import base64
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_layerdiffuse.cutout import CutoutSettings
from lib_layerdiffuse.forge import checkpoint, endpoints, extras, saving, settings_page, ui, unet_files
from lib_layerdiffuse.forge.job import NOTE_KEY, job_of
from lib_layerdiffuse.methods import Family, Method
from lib_layerdiffuse.previews import PreviewStyle, preview
from lib_layerdiffuse.testing.unet_specs import TINY, ldm_unet_layout
from lib_layerdiffuse.weights.location import resolve_models_dir

import fake_forge as ff
from test_forge import args_for, load_script, processing, run_job

WEIGHT_FREE = {"model": "weight-free", "refine": "none"}


def subject_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A flat blue background with a red square: the weight-free model cuts it out."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = (30, 60, 200)
    pixels[size // 4:3 * size // 4, size // 4:3 * size // 4] = (220, 40, 30)
    pixels[size // 4:3 * size // 4, size // 4:3 * size // 4] += rng.integers(0, 3, (size // 2, size // 2, 3),
                                                                              dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def extras_script(monkeypatch):
    """The script file as the WebUI loads it; its Extras script added to the fake runner next to
    the built-in Upscale."""
    callbacks = sys.modules["modules.script_callbacks"]
    callbacks.before_image_saved.clear()  # the script file registers its own
    callbacks.image_grid.clear()
    module = load_script(monkeypatch)
    runner = sys.modules["modules.scripts"].scripts_postproc
    runner.add(ff.UpscaleScript())
    runner.add(module.LayerDiffuseCutoutForExtras())
    return module


# ---- Extras ------------------------------------------------------------------------------------

def test_script_file_registers_the_extras_script_settings_routes_and_checkpoint_hook(forge, gradio, monkeypatch):
    callbacks = sys.modules["modules.script_callbacks"]
    callbacks.before_image_saved.clear()
    module = load_script(monkeypatch)
    cls = module.LayerDiffuseCutoutForExtras
    assert issubclass(cls, sys.modules["modules.scripts_postprocessing"].ScriptPostprocessing)
    # only subclasses are defined in the file: an imported base class would be registered as a script
    bases = [v for v in vars(module).values() if isinstance(v, type)]
    assert sys.modules["modules.scripts_postprocessing"].ScriptPostprocessing not in bases
    assert (cls.name, cls.order) == ("LayerDiffuse cutout", 20000)
    assert callbacks.registered == {"ui_settings": [settings_page.register], "app_started": [endpoints.register],
                                    "after_component": [ui.attach_to_checkpoint]}
    controls = cls().ui()
    assert list(controls) == ["enable", *CutoutSettings.field_names()[1:]]
    assert type(controls["enable"]).__name__ == "InputAccordion" and controls["enable"].value is False


def test_a_failing_extras_ui_leaves_the_extras_tab_working(forge, gradio, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["modules.ui_components"], "InputAccordion", None)  # not callable
    assert extras.build_ui() == {}  # a dict: the WebUI builds the rest of the tab
    assert "Extras cutout could not be built" in capsys.readouterr().out


def test_extras_cuts_out_and_keeps_alpha_past_the_stealth_writer(forge, gradio, monkeypatch):
    extras_script(monkeypatch)
    pp = ff.PostprocessedImage(subject_image())
    extras.process(pp, enable=True, **WEIGHT_FREE)
    assert pp.image.info == {} and pp.info["layerdiffusion_cutout"] == "weight-free"
    alpha = saving.kept_alpha(pp.image)
    assert alpha is not None and np.asarray(alpha)[32, 32] == 255 and np.asarray(alpha)[2, 2] == 0
    # an image sent from txt2img carries "parameters": current Forge's stealth writer then runs
    sys.modules["modules.images"].save_image(pp.image, "out", "", extension="png", info="cut",
                                             pnginfo_section_name="postprocessing",
                                             existing_info={"parameters": "a cup"})
    file = forge.saved[-1]["file"]
    assert file.mode == "RGBA" and np.array_equal(np.asarray(file)[..., 3], np.asarray(alpha))


def test_extras_is_off_when_the_webui_api_passes_none(forge, gradio, monkeypatch):
    image = subject_image()
    pp = ff.PostprocessedImage(image)
    extras.process(pp, enable=None, model=None)
    assert pp.image is image and pp.info == {}


def test_neo_video_frames_are_left_alone(forge):
    """Neo's "Single Video" mode writes RGB frames only: the cutout does not touch them."""
    def run_postprocessing_video(pp):  # the name of Neo's video run
        extras.process(pp, enable=True, **WEIGHT_FREE)

    image = subject_image()
    pp = ff.PostprocessedImage(image)
    run_postprocessing_video(pp)
    assert pp.image is image and "video" in pp.info[extras.SKIPPED_KEY]


def test_an_image_with_its_own_alpha_keeps_it_and_gives_the_asked_output(forge):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 10, 10, 180)
    pp = ff.PostprocessedImage(Image.fromarray(rgba, "RGBA"))
    extras.process(pp, enable=True, model="weight-free", output="mask")
    assert pp.image.mode == "L" and np.array_equal(np.asarray(pp.image), rgba[..., 3])
    assert pp.info["layerdiffusion_cutout"] == "the image's own alpha"


def write_folder(folder: Path, stealth_parameters: bool = False) -> list[str]:
    folder.mkdir()
    for i in range(3):
        info = None
        if stealth_parameters:
            from PIL import PngImagePlugin
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", f"a cup, Seed: {i}")
        subject_image(seed=i).save(folder / f"good{i}.png", pnginfo=info)
    Image.new("RGB", (64, 64), (90, 90, 90)).save(folder / "empty.png")  # nothing to cut out
    (folder / "broken.png").write_bytes(b"not an image")
    return sorted(p.name for p in folder.iterdir())


def test_batch_from_directory_goes_on_past_bad_files_and_lists_them(forge, gradio, monkeypatch, tmp_path):
    extras_script(monkeypatch)
    write_folder(tmp_path / "in", stealth_parameters=True)
    reply = endpoints.cutout({"input_dir": str(tmp_path / "in"), "output_dir": str(tmp_path / "out"), **WEIGHT_FREE})
    assert reply["cut"] == 3 and len(reply["saved"]) == 3
    assert [e["file"] for e in reply["errors"]] == ["empty.png"] and "no subject" in reply["errors"][0]["error"]
    files = [s for s in forge.saved if not s["grid"]]
    assert len(files) == 3
    for s in files:  # real alpha in every file, also through current Forge's stealth writer
        alpha = np.asarray(s["file"])[..., 3]
        assert s["file"].mode == "RGBA" and alpha.min() == 0 and alpha.max() == 255
        section = "extras" if forge.generation == 1 else "postprocessing"
        assert "layerdiffusion_cutout: weight-free" in s["pnginfo"][section]
    # the image after the failure names it in its parameters
    assert "empty.png" in files[-1]["pnginfo"][section]


def test_a_folder_of_200_runs_through_with_progress_and_an_error_list(forge, gradio, monkeypatch, tmp_path,
                                                                      capsys):
    extras_script(monkeypatch)
    folder = tmp_path / "in"
    folder.mkdir()
    bad = {17: "empty", 101: "empty", 150: "broken"}
    for i in range(200):
        if bad.get(i) == "broken":
            (folder / f"{i:03d}.png").write_bytes(b"\x89PNG cut short")
        elif bad.get(i) == "empty":
            Image.new("RGB", (24, 24), (70, 70, 70)).save(folder / f"{i:03d}.png")
        else:
            subject_image(24, seed=i).save(folder / f"{i:03d}.png")
    reply = endpoints.cutout({"input_dir": str(folder), "output_dir": str(tmp_path / "out"), **WEIGHT_FREE})
    assert reply["cut"] == 197 and len(reply["saved"]) == 197
    assert [e["file"] for e in reply["errors"]] == ["017.png", "101.png"]  # the broken file: skipped by the WebUI
    console = capsys.readouterr().out
    assert "Extras cutout 1/200: 000.png (weight-free)" in console and "Extras cutout 200/200: 199.png" in console
    assert "2 of 199 images were not cut out: 017.png" in console


def test_extras_as_jpeg_saves_a_transparent_png_copy_unless_switched_off(forge, gradio, monkeypatch, tmp_path):
    extras_script(monkeypatch)
    write_folder(tmp_path / "in")
    forge.opts.samples_format = "jpg"
    endpoints.cutout({"input_dir": str(tmp_path / "in"), "output_dir": str(tmp_path / "out"), **WEIGHT_FREE})
    copies = [s for s in forge.saved if s["extension"] == "png"]
    jpegs = [s for s in forge.saved if s["extension"] == "jpg"]
    assert len(jpegs) == 3 and len(copies) == 3
    assert all(c["filename"].endswith("-transparent.png") and c["file"].mode == "RGBA" for c in copies)
    assert all(np.asarray(c["file"])[..., 3].min() == 0 for c in copies)
    forge.saved.clear()
    forge.opts.data[settings_page.TRANSPARENT_COPY] = False
    endpoints.cutout({"input_dir": str(tmp_path / "in"), "output_dir": str(tmp_path / "out2"), **WEIGHT_FREE})
    assert [s["extension"] for s in forge.saved] == ["jpg"] * 3


# ---- POST /cutout with images ---------------------------------------------------------------------

def test_cutout_endpoint_returns_pngs_masks_and_per_image_errors(forge):
    empty = Image.new("RGB", (48, 48), (80, 80, 80))
    reply = endpoints.cutout({"images": [b64(subject_image()), b64(empty)], "return_mask": True,
                              "return_preview": True, **WEIGHT_FREE})
    first, second = reply["images"]
    image, mask = unb64(first["image"]), unb64(first["mask"])
    assert image.mode == "RGBA" and mask.mode == "L"
    assert np.array_equal(np.asarray(image)[..., 3], np.asarray(mask))
    assert np.array_equal(np.asarray(unb64(first["preview"])), preview(np.asarray(image)))
    assert first["model"] == "weight-free" and "layerdiffusion_cutout_model: weight-free" in first["parameters"]
    assert second["field"] == "images[1]" and "no subject" in second["error"]
    colour = endpoints.cutout({"image": b64(subject_image()), "output": "over a colour", "color": "#00ff00",
                               **WEIGHT_FREE})
    assert unb64(colour["images"][0]["image"]).mode == "RGB"


@pytest.mark.parametrize("body, status, field", [
    ([], 422, "body"),
    ({"images": []}, 422, "images"),
    ({"images": ["aGVsbG8="]}, 422, "images[0]"),
    ({"image": 5}, 422, "image"),
    ({"image": "x", "images": ["x"]}, 422, "images"),
    ({"images": ["x"] * 65}, 413, "images"),
    ({"image": "x", "modle": "u2net"}, 422, "modle"),
    ({"image": "x", "fg_threshold": 400}, 422, "fg_threshold"),
    ({"image": "x", "refine": "sharpen"}, 422, "refine"),
    ({"image": "x", "return_mask": "yes"}, 422, "return_mask"),
    ({"input_dir": "/no/such/folder"}, 422, "input_dir"),
])
def test_bad_requests_name_the_field(forge, body, status, field):
    with pytest.raises(endpoints.RequestError) as err:
        endpoints.cutout(body)
    assert (err.value.status, err.value.field) == (status, field)
    assert err.value.message


# ---- GET /methods, /weights ---------------------------------------------------------------------------

def write_checkpoint(path: Path, family: str) -> Path:
    """A safetensors file with a tiny LDM UNet of `family`'s layout (the family detection reads
    names and shapes only)."""
    layout = ldm_unet_layout(TINY[family])
    save_file({f"model.diffusion_model.{k}": torch.zeros(v) for k, v in layout.items()}, str(path))
    return path


def select_checkpoint(monkeypatch, tmp_path: Path, family: str) -> str:
    title = f"{family}-tiny.safetensors [0123456789]"
    path = write_checkpoint(tmp_path / f"{family}.safetensors", family)
    monkeypatch.setattr(sys.modules["modules.sd_models"], "get_closet_checkpoint_match",
                        lambda t: types.SimpleNamespace(filename=str(path)) if family in str(t) else None)
    sys.modules["modules.shared"].opts.data["sd_model_checkpoint"] = title
    return title


def test_methods_follow_the_selected_checkpoint(forge, monkeypatch, tmp_path):
    select_checkpoint(monkeypatch, tmp_path, "sd15")
    reply = endpoints.methods({})
    assert reply["family"] == "sd15"
    assert [m["name"] for m in reply["methods"]] == ["FG_ONLY_ATTN_SD15", "FG_TO_BG_SD15", "BG_TO_FG_SD15", "JOINT_SD15"]
    first = reply["methods"][0]
    assert first["default"] and first["transparent"] and first["batch_multiple"] == 1
    assert first["ready"]  # its files are here, not hashed yet ("present"): ready, verified on first use
    assert {f["name"] for f in first["weight_files"]} == set(Method.FG_ONLY_ATTN_SD15.spec.weight_files)
    joint = reply["methods"][3]
    assert joint["batch_multiple"] == 3 and joint["frames"] == ["fg", "bg", "blend"]
    assert {m["family"] for m in endpoints.methods({"family": "SDXL"})["methods"]} == {"sdxl"}
    assert len(endpoints.methods({"family": "all"})["methods"]) == len(Method) - 1  # Qwen runs on Neo's own engine
    with pytest.raises(endpoints.RequestError) as err:
        endpoints.methods({"family": "sd3"})
    assert err.value.field == "family"


def test_weights_lists_every_file_with_its_state(forge):
    reply = endpoints.weights({})
    store = unet_files.weight_store()
    assert reply["folder"] == str(store.folder)
    by_name = {f["name"]: f for f in reply["files"]}
    assert set(by_name) == set(store.catalog)
    present = [f for f in by_name.values() if f["bytes"]]
    assert present and all(Path(f["path"]).stat().st_size == f["bytes"] for f in present)
    assert all(f["methods"] for f in by_name.values() if f["role"] != "vae-pickle")  # converted, never loaded
    with pytest.raises(endpoints.RequestError):
        endpoints.weights({"verify": "maybe"})


def test_routes_answer_json_with_4xx_and_honour_api_auth(forge, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    endpoints.register(None, app)
    client = TestClient(app)
    assert client.post("/layerdiffuse/v1/cutout", content=b"{not json").status_code == 400
    bad = client.post("/layerdiffuse/v1/cutout", json={"images": ["QUJD"]})
    assert bad.status_code == 422 and bad.json()["field"] == "images[0]"
    good = client.post("/layerdiffuse/v1/cutout", json={"image": b64(subject_image()), **WEIGHT_FREE})
    assert good.status_code == 200 and unb64(good.json()["images"][0]["image"]).mode == "RGBA"
    assert client.get("/layerdiffuse/v1/methods?family=all").status_code == 200
    assert client.get("/layerdiffuse/v1/weights").status_code == 200
    # with --api-auth the routes ask for the same credentials as the WebUI's own API
    sys.modules["modules.shared"].cmd_opts.api_auth = "ann:secret"
    app = FastAPI()
    endpoints.register(None, app)
    client = TestClient(app)
    assert client.get("/layerdiffuse/v1/weights").status_code == 401
    assert client.get("/layerdiffuse/v1/weights", auth=("ann", "secret")).status_code == 200
    # without --api no route is added
    sys.modules["modules.shared"].cmd_opts.api = False
    app = FastAPI()
    endpoints.register(None, app)
    assert not [r for r in app.routes if "layerdiffuse" in getattr(r, "path", "")]


# ---- Settings -> LayerDiffuse -------------------------------------------------------------------------

def test_settings_are_registered_in_their_section_and_read_at_call_time(forge, gradio):
    settings_page.register()
    labels = forge.opts.data_labels
    assert set(labels) == {o.key for o in settings_page.OPTIONS}
    assert all(info.section == ("layerdiffuse", "LayerDiffuse") for info in labels.values())
    assert labels[settings_page.method_key(Family.SD15)].component_args["choices"] == [
        m.value for m in Method if m.family is Family.SD15]
    assert settings_page.default_method(Family.SD15) is Method.FG_ONLY_ATTN_SD15
    forge.opts.data[settings_page.method_key(Family.SDXL)] = Method.FG_ONLY_CONV.value
    assert settings_page.default_method(Family.SDXL) is Method.FG_ONLY_CONV
    forge.opts.data[settings_page.method_key(Family.SDXL)] = Method.JOINT_SD15.value  # not SDXL's: ignored
    assert settings_page.default_method(Family.SDXL) is Method.FG_ONLY_ATTN


def test_a_fresh_install_reads_the_defaults_before_the_section_exists(forge):
    forge.opts.data.clear()  # early Forge builds the tabs before on_ui_settings runs
    assert settings_page.value(settings_page.TRANSPARENT_COPY) is True
    assert settings_page.preview_style() == (PreviewStyle.CHECKERBOARD, (255, 255, 255))


def test_weights_folder_setting_is_used_and_the_flag_wins(forge, tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERDIFFUSE_MODELS_DIR", raising=False)  # the test suite sets one
    unet_files.use_store(None)
    forge.opts.data[settings_page.MODELS_DIR] = str(tmp_path / "mine")
    assert resolve_models_dir().path == tmp_path / "mine"
    assert unet_files.weight_store().folder == tmp_path / "mine"
    sys.modules["modules.shared"].cmd_opts.layerdiffuse_models_dir = str(tmp_path / "flag")
    assert unet_files.weight_store().folder == tmp_path / "flag"


@pytest.mark.parametrize("style", ["none", "dark checkerboard", "colour"])
def test_preview_follows_the_setting(forge, style):
    forge.opts.data[settings_page.PREVIEW] = style
    forge.opts.data[settings_page.PREVIEW_COLOUR] = "#102030"
    p = processing("sdxl", forge.generation)
    _, outputs = run_job(p, args_for(Method.FG_ONLY_ATTN))
    if style == "none":
        assert p.extra_result_images == []
        return
    assert len(p.extra_result_images) == 1
    expected = preview(np.asarray(outputs[0]), PreviewStyle.parse(style), (16, 32, 48))
    assert np.array_equal(np.asarray(p.extra_result_images[0]), expected)


def test_saving_the_preview_is_a_setting(forge):
    forge.opts.data[settings_page.SAVE_PREVIEW] = True
    p = processing("sdxl", forge.generation, saved=True)
    run_job(p, args_for(Method.FG_ONLY_ATTN))
    previews = [s for s in forge.saved if s["suffix"] == "-preview"]
    assert len(previews) == 1  # opaque (current Forge's stealth writer may add its 254/255 alpha)
    assert np.asarray(previews[0]["file"].convert("RGBA"))[..., 3].min() >= 254


def test_png_copy_of_jpeg_generations_can_be_switched_off(forge):
    forge.opts.samples_format = "jpg"
    run_job(processing("sdxl", forge.generation, saved=True), args_for(Method.FG_ONLY_ATTN))
    assert [s["suffix"] for s in forge.saved] == [saving.SUFFIX, ""]
    forge.saved.clear()
    forge.opts.data[settings_page.TRANSPARENT_COPY] = False
    run_job(processing("sdxl", forge.generation, saved=True), args_for(Method.FG_ONLY_ATTN))
    assert [s["suffix"] for s in forge.saved] == [""]


# ---- defaults that follow the checkpoint ------------------------------------------------------------

class FakeScript:
    def elem_id(self, item_id):
        return f"script_layerdiffuse_{item_id}"


def test_panel_starts_on_the_checkpoints_family_and_follows_the_dropdown(forge, gradio, monkeypatch, tmp_path):
    select_checkpoint(monkeypatch, tmp_path, "sd15")
    components = ui.build_ui(FakeScript(), False)
    method = components[1]
    assert method.value == Method.FG_ONLY_ATTN_SD15.value
    assert method.do_not_save_to_config  # a value in the WebUI's ui-config.json would win over the family
    assert method.kwargs["choices"][:4] == [m.value for m in Method if m.family is Family.SD15]
    hint = next(c for c in ff.Component.created if type(c).__name__ == "Markdown" and "SD1.5" in str(c.value))
    assert "Selected checkpoint: **SD1.5**" in hint.value
    assert "This method needs SDXL" in ui.panel_hint(Method.FG_ONLY_ATTN, Family.SD15)
    # the WebUI builds its checkpoint dropdown after the tabs: the panel hooks onto it
    dropdown = gradio.Dropdown("sd15-tiny.safetensors [0123456789]", label="Checkpoint")
    ui.attach_to_checkpoint(dropdown, label="Checkpoint", elem_classes=["model_selection"])  # current Forge
    other = gradio.Dropdown("x", label="Checkpoint")
    ui.attach_to_checkpoint(other, label="Checkpoint", elem_id="setting_sd_model_checkpoint")  # early Forge, Neo
    ui.attach_to_checkpoint(gradio.Dropdown("x", label="VAE"), label="VAE", elem_id="setting_sd_vae")
    (fn, inputs, outputs, _), = dropdown.events
    # current Forge makes its dropdown outside any Blocks: wired at the next component made inside one
    context = types.SimpleNamespace(root_block=None)
    monkeypatch.setattr(gradio, "context", types.SimpleNamespace(Context=context), raising=False)
    outside = gradio.Dropdown("x", label="Checkpoint")
    ui.attach_to_checkpoint(outside, label="Checkpoint", elem_classes=["model_selection"])
    assert outside.events == []
    context.root_block = object()
    ui.attach_to_checkpoint(gradio.Row(), elem_id="footer")
    assert len(outside.events) == 1
    assert inputs == [dropdown, method] and outputs[0] is method and len(other.events) == 1
    select_checkpoint(monkeypatch, tmp_path, "sdxl")
    new_method, new_hint = fn("sdxl-tiny.safetensors [0123456789]", method.value)
    assert new_method["value"] == Method.FG_ONLY_ATTN.value
    assert new_method["choices"][0] == Method.FG_ONLY_ATTN.value and "**SDXL**" in new_hint["value"]
    _, empty = fn(None, Method.FG_ONLY_ATTN.value)  # Neo's dropdown starts empty: the selected checkpoint
    assert "**SDXL**" in empty["value"]
    kept, _ = fn("sdxl-tiny.safetensors [0123456789]", Method.FG_ONLY_CONV.value)  # a method of the family stays
    assert kept["value"] == Method.FG_ONLY_CONV.value


def test_a_call_without_a_method_runs_the_loaded_familys_default(forge, gradio, monkeypatch, tmp_path):
    select_checkpoint(monkeypatch, tmp_path, "sdxl")
    ui.build_ui(FakeScript(), False)  # the panel starts on SDXL's default: what Forge's API fills in
    p = processing("sd15", forge.generation)  # then an SD1.5 checkpoint is loaded
    run_job(p, args_for(Method.FG_ONLY_ATTN))
    assert job_of(p).params.method is Method.FG_ONLY_ATTN_SD15 and job_of(p).error is None
    assert "no method was chosen" in p.extra_generation_params[NOTE_KEY]
    named = processing("sd15", forge.generation)
    run_job(named, ({"enabled": True},))
    assert job_of(named).params.method is Method.FG_ONLY_ATTN_SD15
    chosen = processing("sd15", forge.generation)  # a method the user named is never replaced
    run_job(chosen, ({"method": Method.FG_ONLY_CONV.value},))
    assert job_of(chosen).error is not None


def test_checkpoint_family_never_loads_a_model(forge, monkeypatch):
    model_data = sys.modules["modules.sd_models"].model_data
    model_data.sd_model = type("FakeInitialModel", (), {})()
    assert checkpoint.loaded_model() is None and checkpoint.checkpoint_family() is None
