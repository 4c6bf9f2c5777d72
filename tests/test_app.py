"""The web app's backend without a browser: what the page says is missing, and the files each
action writes (the browser tests in test_app_browser.py drive the same backend through the page)."""

from __future__ import annotations

import json
import threading
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_layerdiffuse.app import Backend, check_model
from lib_layerdiffuse.app.backend import ModelNotReadyError
from lib_layerdiffuse.app.readiness import weights_report, weights_summary
from lib_layerdiffuse.cli import main
from lib_layerdiffuse.cutout import CutoutSettings, Output
from lib_layerdiffuse.cutout.models import DEFAULT_MODEL, REMBG_MODELS, WEIGHT_FREE
from lib_layerdiffuse.engine import LayerDiffuse, UnsupportedModelError
from lib_layerdiffuse.engine.family import hub_cache_dir
from lib_layerdiffuse.methods import Family, Method
from lib_layerdiffuse.reachability import Reach
from lib_layerdiffuse.testing.composites import synthetic_case
from lib_layerdiffuse.testing.layer_files import write_unet_files
from lib_layerdiffuse.testing.pipelines import tiny_pipeline
from lib_layerdiffuse.testing.unet_specs import TINY, ldm_unet_layout
from lib_layerdiffuse.weights import CATALOG, WeightStore

NOT_CACHED = "layerdiffuse-tests/not-downloaded"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per family: (tiny engine, its weight store)."""
    out = {}
    for family in ("sdxl", "sd15"):
        folder = tmp_path_factory.mktemp(f"app-weights-{family}")
        store = WeightStore(folder, allow_download=False, progress=False,
                            catalog=write_unet_files(folder, TINY[family]))
        out[family] = (LayerDiffuse(tiny_pipeline(family), store=store, progress=False, decoder_passes=1), store)
    out["flux"] = _tiny_flux(tmp_path_factory.mktemp("app-weights-flux"))
    return out


def _tiny_flux(folder):
    import dataclasses

    from lib_layerdiffuse.testing.flux import tiny_flux_pipeline, write_flux_lora, write_flux_vae_pickle
    from lib_layerdiffuse.testing.layer_files import TINY_DECODER_CONFIG, decoder_layout
    from lib_layerdiffuse.vae.convert import convert_flux_vae
    from lib_layerdiffuse.weights.integrity import layout_sha256

    pipe = tiny_flux_pipeline()
    decoder = Method.FLUX_FG_ONLY.spec.decoder_file
    catalog = dict(CATALOG)
    catalog[decoder] = dataclasses.replace(
        CATALOG[decoder], layout_sha256=layout_sha256(decoder_layout(latent_channels=16, **TINY_DECODER_CONFIG)))
    store = WeightStore(folder, allow_download=False, progress=False, catalog=catalog)
    write_flux_lora(folder / "layerlora.safetensors", pipe.transformer)
    convert_flux_vae(write_flux_vae_pickle(folder / "TransparentVAE.pth", decoder_config=TINY_DECODER_CONFIG), store)
    return LayerDiffuse(pipe, store=store, progress=False, decoder_passes=1), store


def backend_for(tiny, family, tmp_path, **kwargs) -> Backend:
    engine, store = tiny[family]
    return Backend("tiny", store=store, engine=engine, out_dir=tmp_path / "out", passes=1, **kwargs)


def offline_backend(tmp_path, **kwargs) -> Backend:
    backend = Backend(NOT_CACHED, offline=True, models_dir=str(tmp_path / "empty"), out_dir=tmp_path / "out", **kwargs)
    assert not backend.state.ready  # waits for the model check
    return backend


def disc_on_grey() -> np.ndarray:
    return synthetic_case("disc", "solid", 96).image


# ---- what is missing, and where it goes ---------------------------------------------------

def test_offline_hub_model_not_in_the_cache_says_how_to_get_it():
    state = check_model(NOT_CACHED, offline=True)
    assert not state.ready and state.family is None
    assert "not in the Hugging Face cache" in state.problem
    assert str(hub_cache_dir()) in state.problem
    assert f"hf download {NOT_CACHED}" in state.problem and "--model" in state.problem


def test_hub_offline_by_environment_says_so():
    state = check_model(NOT_CACHED, offline=False)  # HF_HUB_OFFLINE is set for the tests
    assert not state.ready and state.problem.startswith("**Model not downloaded:**")
    assert "HF_HUB_OFFLINE is set" in state.problem and f"hf download {NOT_CACHED}" in state.problem


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub as on a machine where downloads are on (the test network guard still
    refuses every host but loopback, like a closed network); records the hub requests."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []
    real = huggingface_hub.hf_hub_download

    def recorded(*args, **kwargs):
        asked.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recorded)
    return asked


def test_unreachable_hub_is_said_at_once_without_hub_internals(hub_online):
    state = check_model(NOT_CACHED, offline=False)
    assert not state.ready and state.problem.startswith("**Model not reachable:**")
    assert "cannot be reached from this machine" in state.problem and "huggingface.co" in state.problem
    assert f"hf download {NOT_CACHED}" in state.problem
    assert hub_online == []  # one quick probe, no hub client retries
    for internal in ("HFValidationError", "local_files_only", "LocalEntryNotFoundError", "Traceback"):
        assert internal not in state.problem


@pytest.mark.parametrize("error, title, said", [
    ("RepositoryNotFoundError", "Model not found", "no model"),
    ("GatedRepoError", "Model not reachable", "gated"),
    ("RemoteEntryNotFoundError", "Model cannot be used", "has no unet/config.json"),
])
def test_hub_answers_are_said_in_plain_words(hub_online, monkeypatch, error, title, said):
    import huggingface_hub
    from huggingface_hub import errors

    from lib_layerdiffuse import reachability

    def refused(*args, **kwargs):
        response = types.SimpleNamespace(headers={}, request=None)
        raise getattr(errors, error)("404 Client Error. (Request ID: Root=1-abc)", response=response)

    monkeypatch.setattr(reachability, "probe", lambda url, timeout=3.0: Reach(url, True))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    state = check_model(NOT_CACHED, offline=False)
    assert state.problem.startswith(f"**{title}:**") and said in state.problem
    assert "Request ID" not in state.problem and error not in state.problem


@pytest.mark.parametrize("model", ["/no/such/model.safetensors", "not-a-hub-id"])
def test_a_model_that_is_not_there_is_named(model):
    state = check_model(model, offline=False)
    assert not state.ready and "Model not found" in state.problem and model in state.problem


def test_local_folders_and_single_files_are_recognised_without_loading(tmp_path):
    tiny_pipeline("sdxl").save_pretrained(tmp_path / "xl")
    folder = check_model(str(tmp_path / "xl"), offline=True)
    assert folder.ready and folder.family is Family.SDXL and folder.source == "diffusers folder"
    ckpt = tmp_path / "model.safetensors"
    save_file({f"model.diffusion_model.{k}": torch.zeros(s, dtype=torch.float16)
               for k, s in ldm_unet_layout(TINY["sd15"]).items()}, str(ckpt))
    single = check_model(str(ckpt), offline=True)
    assert single.ready and single.family is Family.SD15 and single.source == "single-file checkpoint"
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(lora))
    refused = check_model(str(lora), offline=True)
    assert not refused.ready and "Model cannot be used" in refused.problem and "no SD UNet" in refused.problem


def test_missing_weight_files_are_listed_with_url_and_target_path(tmp_path):
    method = Method.FG_ONLY_ATTN
    offline = weights_report(WeightStore(tmp_path, allow_download=False), method)
    assert "LayerDiffuse weights missing" in offline
    for name in method.weight_files:
        assert f"from {CATALOG[name].url} to `{tmp_path / name}`" in offline
    online = weights_report(WeightStore(tmp_path, allow_download=True), method)
    assert "download into" in online and "on the first generation" in online
    (tmp_path / method.weight_files[0]).write_bytes(b"not the real file")
    store = WeightStore(tmp_path, allow_download=False)
    store.status(method.weight_files[0], verify=True)  # hash once: the file is known to be corrupt
    assert f"`{method.weight_files[0]}`, 743 MB, corrupt (SHA-256 " in weights_report(store, method)


def test_weights_of_a_ready_method_are_reported_ready(tiny):
    _, store = tiny["sdxl"]
    for name in Method.FG_TO_BLEND.weight_files:
        store.ensure(name)
    assert weights_report(store, Method.FG_TO_BLEND).startswith("LayerDiffuse weights for this method: ready")


def test_status_says_generation_is_off_and_the_cutout_still_works(tmp_path):
    backend = offline_backend(tmp_path)
    line, details = backend.model_status()
    assert line.startswith("**Model not downloaded:**") and "Cutout" in line and "\n" not in line  # one line
    assert "hf download" in details and "weight-free" in details
    weights, files = backend.weights_status()
    assert "layer_xl_transparent_attn.safetensors" in files and "\n" not in weights  # the default method's files
    assert weights.startswith("**Weights for FG_ONLY_ATTN missing**")
    assert backend.methods() == list(Method) and backend.default_size() == 1024


def test_weights_status_follows_the_method_asked_for(tmp_path):
    """[before: one status for the page, which after a Replace background run listed the
    weights of fg->blend while the Generate tab showed fg-only]"""
    backend = offline_backend(tmp_path)
    fg_only, fg_blend = backend.weights_status(Method.FG_ONLY_ATTN), backend.weights_status(Method.FG_TO_BLEND)
    assert "3 file(s), 953 MB" in fg_only[0] and "1 file(s), 702 MB" in fg_blend[0]
    assert weights_summary(WeightStore(tmp_path, allow_download=True), Method.FG_TO_BLEND)[0] == \
        "Weights for FG_TO_BLEND: 1 file(s), 702 MB, download on first use."


def test_reading_the_state_also_waits_for_the_check_callback(tmp_path):
    seen = []

    def slow_report(state):
        time.sleep(0.3)  # a callback slower than the check: the reader must still see its effect
        seen.append(state.model)

    backend = Backend(NOT_CACHED, offline=True, models_dir=str(tmp_path), on_checked=slow_report)
    assert not backend.state.ready and seen == [NOT_CACHED]


def test_the_model_is_checked_in_the_background_and_the_page_waits_for_it(tmp_path, monkeypatch):
    from lib_layerdiffuse.app import backend as backend_module
    from lib_layerdiffuse.app.page import _model_view

    release = threading.Event()
    checked = []

    def slow_check(model, offline):
        release.wait(10)
        return check_model(model, offline)

    monkeypatch.setattr(backend_module, "check_model", slow_check)
    backend = Backend(NOT_CACHED, offline=True, models_dir=str(tmp_path), on_checked=checked.append)
    assert not backend.checked and backend.model_status() == (f"Checking the model `{NOT_CACHED}` ...", "")
    early = _model_view(backend, wait=False)
    assert not early.ready and early.methods == [m.value for m in Method]
    assert early.method == Method.FG_ONLY_ATTN.value
    threading.Timer(0.2, release.set).start()
    late = _model_view(backend, wait=True)
    assert backend.checked and not late.ready and "Model not downloaded" in late.status[0] and late.why
    assert [s.model for s in checked] == [NOT_CACHED]


# ---- generating ---------------------------------------------------------------------------

def test_generate_writes_pngs_with_alpha_and_parameters_and_reports_progress(tiny, tmp_path):
    backend = backend_for(tiny, "sdxl", tmp_path)
    assert backend.methods() == [m for m in Method if m.family is Family.SDXL]
    stages = []
    out = backend.generate("an apple", Method.FG_ONLY_CONV.value, on_progress=lambda *a: stages.append(a),
                           steps=2, seed=4, width=64, height=64, batch=2)
    assert len(out.files) == 2 and [c for _, c in out.shown] == ["fg · transparent"] * 2
    for path in out.files:
        assert path.startswith(str(tmp_path / "out"))
        with Image.open(path) as img:
            assert img.mode == "RGBA" and np.asarray(img)[..., 3].min() < 255
            assert img.text["parameters"].startswith("an apple\nSteps: 2")
            assert json.loads(img.text["layerdiffuse"])["Seed"] == 4
    assert "layerdiffusion_method: (SDXL) Only Generate Transparent Image (Conv Injection)" in out.infotext
    names = [s[0] for s in stages]
    assert names.index("Checking weight file layer_xl_transparent_conv.safetensors") < names.index("Sampling")
    assert ("Sampling", 2, 2) in stages and stages[-1] == ("Decoding", 2, 2)


def test_batch_runs_a_prompt_list_or_a_job_on_the_apps_model(tiny, tmp_path):
    backend = backend_for(tiny, "sdxl", tmp_path)
    out = backend.batch(prompts="an apple\n\na cup\n", method=Method.FG_ONLY_CONV.value, seeds=2)
    assert len(out.shown) == 4 and out.files[0].endswith("manifest.jsonl")
    assert sorted(c.split(" · ")[:2] for _, c in out.shown) == [["a cup", "seed 1"], ["a cup", "seed 2"],
                                                                ["an apple", "seed 1"], ["an apple", "seed 2"]]
    for path in out.files[1:]:
        with Image.open(path) as img:
            assert img.mode == "RGBA"
    assert out.infotext.startswith("4 made, 0 already done")
    job = 'model = "app"\nmethod = "FG_ONLY_CONV"\n[defaults]\nsteps = 2\nsize = "64x64"\n[[items]]\nprompt = "x"\n'
    assert len(backend.batch(job_text=job).shown) == 1
    with pytest.raises(ValueError, match="this app runs tiny; the job asks for other/model"):
        backend.batch(job_text=job.replace('"app"', '"other/model"'))
    with pytest.raises(ValueError, match="write prompts"):
        backend.batch(prompts="  \n")


def test_a_batch_that_fails_before_its_first_image_leaves_no_folder(tiny, tmp_path):
    """[before: every failed run left a folder (empty, or with only job.toml), and a malformed
    job's error named that internal copy]"""
    from lib_layerdiffuse.batch import JobError

    backend = backend_for(tiny, "sdxl", tmp_path)
    with pytest.raises(JobError) as info:
        backend.batch(job_text='model = "app"\n[[items]\n')
    assert str(info.value).startswith("the job file you pasted: not valid TOML") and "job.toml" not in str(info.value)
    with pytest.raises(ValueError, match="unknown LayerDiffuse method"):
        backend.batch(job_text='model = "app"\nmethod = "NO_SUCH_METHOD"\n[[items]]\nprompt = "x"\n')
    with pytest.raises(ValueError, match="this app runs tiny"):
        backend.batch(job_text='model = "other/model"\n[[items]]\nprompt = "x"\n')
    offline = offline_backend(tmp_path / "offline")
    with pytest.raises(RuntimeError, match="Model not downloaded"):
        offline.batch(prompts="an apple")
    for root in (tmp_path / "out", tmp_path / "offline" / "out"):
        assert not list(root.rglob("batch-*")), list(root.rglob("*"))


def test_a_flux_model_offers_the_flux_method_and_generates(tiny, tmp_path):
    backend = backend_for(tiny, "flux", tmp_path)
    assert backend.methods() == [Method.FLUX_FG_ONLY] and backend.default_size() == 1024
    out = backend.generate("a bottle", Method.FLUX_FG_ONLY.value, steps=2, seed=3, width=64, height=64, cfg=3.5)
    with Image.open(out.files[0]) as img:
        assert img.mode == "RGBA" and "(Flux) Only Generate Transparent Image" in img.text["parameters"]
    with pytest.raises(ValueError, match="needs an SDXL model; tiny is Flux.1"):
        backend.replace(disc_on_grey(), "a beach", CutoutSettings(model="weight-free"))


def test_opaque_frames_and_condition_images(tiny, tmp_path):
    backend = backend_for(tiny, "sdxl", tmp_path)
    fg = np.zeros((40, 40, 4), np.uint8)
    fg[8:32, 8:32] = (200, 40, 40, 255)
    out = backend.generate("a table", "FG_TO_BLEND", steps=2, seed=1, width=64, height=64, fg=fg)
    assert [c for _, c in out.shown] == ["blend · opaque"]
    with Image.open(out.files[0]) as img:
        assert img.mode == "RGB"


def test_generation_is_refused_with_the_reason_before_any_work(tiny, tmp_path):
    offline = offline_backend(tmp_path)
    with pytest.raises(ModelNotReadyError, match="not in the Hugging Face cache") as err:
        offline.engine()
    assert "**" not in str(err.value)
    with pytest.raises(ModelNotReadyError, match=f"`{NOT_CACHED}` is not in the Hugging Face cache"):
        offline.generate("x", Method.FG_ONLY_ATTN)  # the model is named, not a weight file
    with pytest.raises(UnsupportedModelError, match="needs an SD1.5 model"):
        backend_for(tiny, "sdxl", tmp_path).generate("x", Method.JOINT_SD15)
    with pytest.raises(ValueError, match="needs a Foreground"):
        backend_for(tiny, "sdxl", tmp_path).generate("x", Method.FG_TO_BLEND, steps=1, width=64, height=64)


def test_a_saved_model_loads_on_the_first_generation(tiny, tmp_path):
    tiny_pipeline("sdxl").save_pretrained(tmp_path / "xl")
    _, store = tiny["sdxl"]
    backend = Backend(str(tmp_path / "xl"), store=store, offline=True, device="cpu", passes=1, out_dir=tmp_path / "o")
    stages = []
    out = backend.generate("an apple", "FG_ONLY_ATTN", steps=2, seed=1, width=64, height=64,
                           on_progress=lambda *a: stages.append(a[0]))
    assert f"Loading model {tmp_path / 'xl'}" in stages and backend.engine().family is Family.SDXL
    with Image.open(out.files[0]) as img:
        assert img.mode == "RGBA" and f"Model: {tmp_path / 'xl'}" in img.text["parameters"]


def test_the_model_loads_once_on_first_use(tmp_path, monkeypatch):
    tiny_pipeline("sd15").save_pretrained(tmp_path / "m")
    calls = []

    def from_model(model, **kwargs):
        calls.append((model, kwargs))
        time.sleep(0.2)
        return "engine"

    monkeypatch.setattr(LayerDiffuse, "from_model", staticmethod(from_model))
    backend = Backend(str(tmp_path / "m"), offline=True, out_dir=tmp_path / "out")
    assert backend.family is Family.SD15 and backend.default_method() is Method.FG_ONLY_ATTN_SD15
    assert backend.default_size() == 512
    threads = [threading.Thread(target=backend.engine) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and calls[0][1]["local_files_only"] is True
    assert backend.engine() == "engine"


# ---- cutouts and replacement --------------------------------------------------------------

def test_cutout_writes_the_chosen_output(tmp_path):
    backend = offline_backend(tmp_path)
    rgba = backend.cut_out(disc_on_grey(), CutoutSettings(model=WEIGHT_FREE))
    with Image.open(rgba.files[0]) as img:
        alpha = np.asarray(img)[..., 3]
        assert img.mode == "RGBA" and alpha.min() == 0 and alpha.max() == 255
        assert json.loads(img.text["layerdiffuse"])["layerdiffusion_cutout"] == WEIGHT_FREE
        assert img.text["parameters"] == rgba.infotext
    mask = backend.cut_out(disc_on_grey(), CutoutSettings(model=WEIGHT_FREE, output=Output.MASK))
    with Image.open(mask.files[0]) as img:
        assert img.mode == "L"
    assert rgba.files[0] != mask.files[0] and "layerdiffusion_cutout_model: weight-free" in rgba.infotext


def test_offline_default_cutout_model_is_one_that_runs(tmp_path, monkeypatch):
    models = tmp_path / "u2net"
    assert offline_backend(tmp_path, cutout_models_dir=str(models)).default_cutout_model() == WEIGHT_FREE
    models.mkdir()
    (models / REMBG_MODELS[DEFAULT_MODEL].local_name).write_bytes(b"onnx")
    assert offline_backend(tmp_path, cutout_models_dir=str(models)).default_cutout_model() == DEFAULT_MODEL


def test_without_network_the_default_cutout_model_is_weight_free_and_the_list_says_why(tmp_path, monkeypatch):
    from lib_layerdiffuse.cutout import availability

    # started without --offline, but the download host cannot be reached (the test network guard)
    online = Backend(NOT_CACHED, models_dir=str(tmp_path / "w"), cutout_models_dir=str(tmp_path / "none"))
    assert online.default_cutout_model() == WEIGHT_FREE
    labels = dict((value, label) for label, value in online.cutout_models.choices())
    assert labels[WEIGHT_FREE] == "weight-free · no download"
    assert labels[DEFAULT_MODEL].startswith(f"{DEFAULT_MODEL} · not downloaded, no download here")
    about = online.cutout_models.describe(DEFAULT_MODEL)
    assert "not downloadable here" in about and "use weight-free, or put the file at" in about
    assert str(tmp_path / "none" / "models" / DEFAULT_MODEL / f"{DEFAULT_MODEL}.onnx") in about
    # with the host reachable, the usual default stays, and downloads on first use
    monkeypatch.setattr(availability, "probe", lambda url, timeout=3.0: Reach(url, True))
    reachable = Backend(NOT_CACHED, models_dir=str(tmp_path / "w"), cutout_models_dir=str(tmp_path / "none"))
    assert reachable.default_cutout_model() == DEFAULT_MODEL
    assert "downloads on first use to" in reachable.cutout_models.describe(DEFAULT_MODEL)


def test_replace_with_a_given_background_needs_no_model(tmp_path):
    backend = offline_backend(tmp_path)
    image = disc_on_grey()
    background = np.zeros((50, 80, 3), np.uint8)
    background[..., 2] = 255
    out = backend.replace(image, "", CutoutSettings(model=WEIGHT_FREE), background=background)
    assert [c for _, c in out.shown] == ["new background", "cutout · transparent"]
    with Image.open(out.files[0]) as img, Image.open(out.files[1]) as cut:
        result, alpha = np.asarray(img), np.asarray(cut)[..., 3]
    opaque = alpha == 255
    assert opaque.sum() > 100 and np.array_equal(result[opaque], image[opaque])
    assert (result[alpha == 0] == (0, 0, 255)).all()


def test_replace_says_which_input_it_used_and_fills_the_parameters(tmp_path):
    backend = offline_backend(tmp_path)
    background = np.full((50, 80, 3), (0, 0, 255), np.uint8)
    both = backend.replace(disc_on_grey(), "a beach", CutoutSettings(model=WEIGHT_FREE), background=background)
    assert any("The prompt was not used: a background image was given" in n for n in both.notes)
    assert both.infotext.startswith("Background: given image 80x50 scaled to cover 96x96, ")
    assert "layerdiffusion_cutout_model: weight-free" in both.infotext
    with Image.open(both.files[0]) as img:
        assert img.text["parameters"] == both.infotext
    alone = backend.replace(disc_on_grey(), "", CutoutSettings(model=WEIGHT_FREE), background=background)
    assert not any("prompt" in n for n in alone.notes)


def test_replace_from_a_prompt_needs_the_model_and_names_it(tmp_path):
    with pytest.raises(ModelNotReadyError, match=f"`{NOT_CACHED}` is not in the Hugging Face cache"):
        offline_backend(tmp_path).replace(disc_on_grey(), "a beach", CutoutSettings(model=WEIGHT_FREE))


def test_cutout_reports_its_stages_in_order_up_to_the_written_file(tmp_path):
    seen = []
    offline_backend(tmp_path).cut_out(disc_on_grey(), CutoutSettings(model=WEIGHT_FREE),
                                      on_progress=lambda *a: seen.append(a))
    stages = list(dict.fromkeys(stage.split(" (")[0] for stage, _, _ in seen))
    assert stages == ["Finding the background", "Matting the edge", "Matting the edge, second pass",
                      "Estimating edge colours", "Filling colour under transparent pixels", "Done", "Writing the PNG"]
    cutting = [done / total for stage, done, total in seen if stage != "Writing the PNG"]
    assert cutting == sorted(cutting) and cutting[0] == 0 and cutting[-1] == 1  # one bar, forward only


def test_replace_generates_the_scene_on_sdxl_only(tiny, tmp_path):
    image = disc_on_grey()
    out = backend_for(tiny, "sdxl", tmp_path).replace(image, "a beach", CutoutSettings(model=WEIGHT_FREE),
                                                      max_side=64, steps=2, seed=3)
    assert "layerdiffusion_method: (SDXL) From Foreground to Blending" in out.infotext
    with Image.open(out.files[0]) as img:
        assert img.size == (96, 96) and "From Foreground to Blending" in img.text["parameters"]
    sd15 = backend_for(tiny, "sd15", tmp_path)
    with pytest.raises(ValueError, match="needs an SDXL model"):
        sd15.replace(image, "a beach", CutoutSettings(model=WEIGHT_FREE))
    with pytest.raises(ValueError, match="write a prompt"):
        sd15.replace(image, " ", CutoutSettings(model=WEIGHT_FREE))


# ---- the command ----------------------------------------------------------------------------

def test_app_command_builds_the_backend_from_its_flags(tmp_path, monkeypatch, capsys):
    from lib_layerdiffuse.app import page

    started = {}
    monkeypatch.setattr(page, "serve", lambda backend, **kw: started.update(backend=backend, **kw))
    code = main(["app", "--model", NOT_CACHED, "--offline", "--port", "7999", "--out", str(tmp_path / "o"),
                 "--models-dir", str(tmp_path / "w"), "--passes", "2"])
    assert code == 0
    backend = started["backend"]
    assert backend.offline and not backend.store.allow_download and backend.passes == 2
    assert backend.store.folder == tmp_path / "w" and started["port"] == 7999 and started["host"] == "127.0.0.1"
    assert not backend.state.ready  # waits for the background check and its report to the console
    assert "not in the Hugging Face cache" in capsys.readouterr().err


def test_app_command_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["app", "--offline"]) == 1
    assert 'needs gradio: pip install -e ".[app]"' in capsys.readouterr().err


# ---- Qwen-Image: native RGBA and the Layers tab -------------------------------------------

@pytest.fixture(scope="module")
def qwen_engines():
    from lib_layerdiffuse.layers.decompose import LayerDecomposer
    from lib_layerdiffuse.testing.qwen import tiny_layered_pipeline, tiny_qwen21_pipeline

    return LayerDiffuse(tiny_qwen21_pipeline(), progress=False), LayerDecomposer(tiny_layered_pipeline(), progress=False)


def test_a_qwen_image_model_offers_its_native_method_without_weights(qwen_engines, tmp_path):
    engine, _ = qwen_engines
    backend = Backend("tiny-qwen", engine=engine, out_dir=tmp_path / "out", models_dir=str(tmp_path / "w"))
    assert backend.methods() == [Method.QWEN21_RGBA] and backend.default_size() == 1024
    line, details = backend.weights_status(Method.QWEN21_RGBA.value)
    assert "no LayerDiffuse weights" in line and not details
    # the page sends its img2img strength with every generation: not a Qwen setting, dropped
    out = backend.generate("a fox", Method.QWEN21_RGBA.value, steps=2, seed=3, width=64, height=32, cfg=1.0,
                           strength=0.7, weight=1.0, stop_at=1.0, init_image=None)
    with Image.open(out.files[0]) as img:
        assert img.mode == "RGBA" and "(Qwen-Image-2.1) Native RGBA" in img.text["parameters"]


def test_the_layers_tab_writes_layers_psd_and_zip_and_says_what_is_empty(qwen_engines, tmp_path):
    _, decomposer = qwen_engines
    backend = Backend(NOT_CACHED, offline=True, out_dir=tmp_path / "out", models_dir=str(tmp_path / "w"),
                      decomposer=decomposer)
    assert not backend.layers_state().problem and "Apache" in backend.layers_status()[0]
    image = np.zeros((48, 64, 4), np.uint8)
    image[..., 3] = 255
    stages = []
    out = backend.decompose(image, 2, "a poster", steps=2, seed=1, on_progress=lambda *a: stages.append(a[0]))
    assert [name for _, name in out.shown] == ["Layer 1 (bottom)", "Layer 2 (top)"]
    assert [p.rsplit(".", 1)[1] for p in out.files] == ["png", "png", "psd", "zip"]
    assert "differ from the image by" in out.notes[0] and "Layers: 2" in out.infotext and "Sampling" in stages
    with pytest.raises(ValueError, match="upload the image"):
        backend.decompose(None, 2)


def test_the_layers_model_that_is_not_there_is_said_and_splitting_is_off(tmp_path):
    backend = offline_backend(tmp_path)
    line, details = backend.layers_status()
    assert "Model not downloaded" in line and "Qwen/Qwen-Image-Layered" in line and "hf download" in details
    with pytest.raises(ModelNotReadyError, match="not in the Hugging Face cache"):
        backend.decompose(np.zeros((8, 8, 4), np.uint8), 2)
    wrong = Backend(NOT_CACHED, offline=True, out_dir=tmp_path / "o", layers_model=str(tmp_path))
    assert "Model cannot be used" in wrong.layers_status()[0]
