"""Cutouts: the real rembg code path on tiny ONNX models built here, the weight-free backend on
composites with known alpha, refinement, outputs, bad input, settings, CLI and replacement."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffuse import images
from lib_layerdiffuse.cli import main
from lib_layerdiffuse.cutout import CutoutError, CutoutSettings, Output, Refine, cut_out, parse_color, rembg_backend
from lib_layerdiffuse.cutout import refine as refine_module
from lib_layerdiffuse.cutout.metrics import all_metrics, connectivity_error, edge_color_error, sad
from lib_layerdiffuse.cutout.replace import generation_size, replace_background
from lib_layerdiffuse.testing.composites import synthetic_case
from lib_layerdiffuse.testing.onnx_models import write_segmenter

HALO_BOUND = 6.0  # mean edge colour error (0..255) a decontaminated cutout must stay under


@pytest.fixture(autouse=True)
def _fresh_sessions():
    rembg_backend.release_sessions()
    yield
    rembg_backend.release_sessions()


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "u2net"
    monkeypatch.setenv("U2NET_HOME", str(folder))
    return folder


def red_on_blue(h=90, w=120) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 200
    img[25:65, 30:90] = (220, 30, 30)
    return img


# ---- rembg backend: the real code path on a tiny model --------------------------------------

def test_builtin_model_name_loads_from_the_models_folder_and_is_cached(home):
    write_segmenter(home / "u2netp.onnx")
    result = cut_out(red_on_blue(), model="u2netp", allow_download=False)
    assert result.model == "u2netp on CPUExecutionProvider"
    assert result.alpha[45, 60] > 0.99 and result.alpha[5, 5] < 0.01
    first = rembg_backend.get_session("u2netp", allow_download=False)
    assert rembg_backend.get_session("u2netp", allow_download=False) is first  # one session per key
    assert first.active == ["CPUExecutionProvider"] and not first.fell_back
    assert result.settings.to_infotext()["layerdiffusion_cutout_model"] == "u2netp"


def test_local_onnx_by_path_runs_with_onnxruntime_alone(home, tmp_path, monkeypatch):
    model = write_segmenter(tmp_path / "elsewhere" / "mine.onnx")
    monkeypatch.setattr(rembg_backend, "import_rembg", lambda: pytest.fail("rembg is not needed for local files"))
    result = cut_out(red_on_blue(), model="local file", model_path=str(model))
    assert result.model == "mine.onnx (U2-Net recipe) on CPUExecutionProvider"
    assert result.alpha[45, 60] > 0.99 and result.alpha[5, 5] < 0.01
    assert not home.exists()  # nothing is linked or copied into the models folder
    big = write_segmenter(tmp_path / "big.onnx", size=1024)
    assert "(IS-Net recipe)" in cut_out(red_on_blue(), model="local file", model_path=str(big)).model
    free = write_segmenter(tmp_path / "free.onnx", input_shape=["batch", 3, "height", "width"])
    session = rembg_backend.get_session("local file", str(free))
    assert session.session.recipe.size == 1024 and session.session.recipe.family == "IS-Net"
    odd = write_segmenter(tmp_path / "odd.onnx", size=256)
    assert cut_out(red_on_blue(), model="local file", model_path=str(odd)).alpha[45, 60] > 0.99


@pytest.mark.parametrize("name, size, expected", [
    ("isnet-mine.onnx", 1024, 0.8 - 0.5),  # IS-Net: mean 0.5, deviation 1, already in [0, 1]
    ("u2net-mine.onnx", 320, 1 / (1 + np.exp(-(0.8 - 0.485) / 0.229))),  # U2-Net: ImageNet, logits
    ("BiRefNet-general-mine.onnx", 1024, 1 / (1 + np.exp(-(0.8 - 0.485) / 0.229))),  # BiRefNet: ImageNet
])
def test_local_onnx_families_get_their_own_normalisation(tmp_path, name, size, expected):
    from lib_layerdiffuse.cutout.local_onnx import LocalSegmenter

    model = write_segmenter(tmp_path / name, size=size, weights=(1.0, 0.0, 0.0), logits=True)
    flat = np.full((40, 40, 3), (204, 0, 0), np.uint8)  # red 0.8
    pred = LocalSegmenter(model, ["CPUExecutionProvider"]).probabilities(flat)
    assert pred.shape == (size, size) and np.allclose(pred, expected, atol=1e-4)


def test_birefnet_logits_get_a_sigmoid_and_masks_are_not_stretched(tmp_path):
    model = write_segmenter(tmp_path / "BiRefNet-lite.onnx", size=1024, logits=True)
    result = cut_out(red_on_blue(), model="local file", model_path=str(model))
    assert "(BiRefNet recipe)" in result.model
    assert result.alpha[45, 60] > 0.99 and result.alpha[5, 5] < 0.01
    # an image with nothing in it stays empty (a min-max stretch would make a full mask of it)
    with pytest.raises(CutoutError, match="no subject found"):
        cut_out(np.full((60, 60, 3), (0, 0, 200), np.uint8), model="local file", model_path=str(model))


def test_local_onnx_that_is_not_a_segmenter_is_refused(tmp_path):
    wide = write_segmenter(tmp_path / "wide.onnx", input_shape=[1, 3, 320, 256])
    with pytest.raises(rembg_backend.CutoutModelError, match=r"\[1, 3, 320, 256\]; only square inputs"):
        cut_out(red_on_blue(), model="local file", model_path=str(wide))
    with pytest.raises(ValueError, match="needs the path of an ONNX file"):
        cut_out(red_on_blue(), model="local file")
    with pytest.raises(rembg_backend.CutoutModelError, match="does not exist"):
        cut_out(red_on_blue(), model="local file", model_path=str(tmp_path / "missing.onnx"))


def test_onnx_files_in_the_models_folder_are_listed_and_run_by_name(home):
    from lib_layerdiffuse.cutout.availability import CutoutModels
    from lib_layerdiffuse.cutout.models import LOCAL_FILE, model_choices, parse_model

    write_segmenter(home / "BiRefNet-portrait-mine.onnx", size=1024, logits=True)
    write_segmenter(home / "u2netp.onnx")  # rembg's own model: listed under its name only
    (home / "notes.txt").write_text("not a model")
    choices = model_choices(home)
    assert choices[-2:] == ["local:BiRefNet-portrait-mine.onnx", LOCAL_FILE]
    assert "local:u2netp.onnx" not in choices and "u2netp" in choices
    models = CutoutModels(home)
    labels = dict((value, label) for label, value in models.choices())
    assert labels["local:BiRefNet-portrait-mine.onnx"] == "local:BiRefNet-portrait-mine.onnx · in the models folder"
    assert str(home / "BiRefNet-portrait-mine.onnx") in models.describe("local:BiRefNet-portrait-mine.onnx")
    result = cut_out(red_on_blue(), model="local:BiRefNet-portrait-mine.onnx")
    assert result.model.startswith("BiRefNet-portrait-mine.onnx (BiRefNet recipe)") and result.alpha[45, 60] > 0.99
    assert result.settings.to_infotext()["layerdiffusion_cutout_model"] == "local:BiRefNet-portrait-mine.onnx"
    gone = models.of("local:other.onnx")
    assert not gone.usable and f"other.onnx is not in the cutout models folder {home}" == gone.reason
    with pytest.raises(rembg_backend.CutoutModelError, match=r"local:other.onnx is not in the cutout models folder"):
        cut_out(red_on_blue(), model="local:other.onnx")
    for bad in ("local:../x.onnx", "local:", "local:model.bin"):
        with pytest.raises(ValueError, match="the name of an .onnx file in the cutout models folder"):
            parse_model(bad)


def test_missing_model_offline_names_file_url_and_the_path_rembg_reads(home):
    from rembg.sessions.u2netp import U2netpSession

    with pytest.raises(rembg_backend.CutoutModelError) as err:
        cut_out(red_on_blue(), model="u2netp", allow_download=False)
    text = str(err.value)
    target = rembg_backend.model_target("u2netp", home)
    assert "releases/download/v0.0.0/u2netp.onnx" in text and "downloads are off" in text
    assert f"use weight-free, or put the file at {target} " in text and text.count(str(home)) == 1
    assert target == Path(U2netpSession.model_dir()) / "u2netp.onnx"  # where rembg itself downloads it
    write_segmenter(target)  # ... and where it reads it from
    assert cut_out(red_on_blue(), model="u2netp", allow_download=False).alpha[45, 60] > 0.99


def test_unreachable_download_host_fails_at_once_without_trying(home, monkeypatch):
    # the test network guard refuses github.com, like a machine without internet access
    calls = []
    monkeypatch.setattr(rembg_backend, "_new_session", lambda *a, **k: calls.append(a))
    with pytest.raises(rembg_backend.CutoutModelError) as err:
        cut_out(red_on_blue(), model="u2netp")
    text = str(err.value)
    assert "is not downloadable here (github.com cannot be reached" in text
    assert f"put the file at {rembg_backend.model_target('u2netp', home)}" in text and calls == []


def test_failed_download_says_where_to_put_the_file(home, monkeypatch):
    import pooch

    from lib_layerdiffuse import reachability

    monkeypatch.setattr(reachability, "probe", lambda url, timeout=3.0: reachability.Reach(url, True))

    def cut_connection(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(pooch, "retrieve", cut_connection)
    with pytest.raises(rembg_backend.CutoutModelError,
                       match=r"u2netp is not downloaded and is not downloadable here \(the download failed: "
                             r"ConnectionError: connection reset by peer\): use weight-free, or put the file at "):
        cut_out(red_on_blue(), model="u2netp")


def test_corrupt_onnx_file_is_a_clear_error(home, tmp_path):
    home.mkdir(parents=True)
    (home / "u2netp.onnx").write_bytes(b"not an onnx model at all")
    with pytest.raises(rembg_backend.CutoutModelError, match="damaged or not an ONNX model: delete it"):
        cut_out(red_on_blue(), model="u2netp", allow_download=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(rembg_backend.CutoutModelError, match="damaged or not an ONNX model"):
        cut_out(red_on_blue(), model="local file", model_path=str(bad))


def test_missing_onnxruntime_or_an_exiting_rembg_never_ends_the_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(rembg_backend.CutoutUnavailable, match="onnxruntime is not available.+weight-free"):
        rembg_backend.import_rembg()
    monkeypatch.undo()

    class ExitingFinder:
        def find_spec(self, name, path=None, target=None):
            if name == "rembg":
                from importlib.machinery import ModuleSpec

                loader = types.SimpleNamespace(create_module=lambda spec: None,
                                               exec_module=lambda module: sys.exit(1))
                return ModuleSpec(name, loader)
            return None

    monkeypatch.delitem(sys.modules, "rembg", raising=False)
    monkeypatch.setattr(sys, "meta_path", [ExitingFinder(), *sys.meta_path])
    with pytest.raises(rembg_backend.CutoutUnavailable, match="exited during import"):
        rembg_backend.import_rembg()


def test_providers_are_checked_and_a_cpu_fall_back_is_reported():
    assert rembg_backend.choose_providers() == ["CPUExecutionProvider"]  # no GPU build here
    with pytest.raises(ValueError, match="TensorrtExecutionProvider is not available"):
        rembg_backend.choose_providers(["TensorrtExecutionProvider"])
    session = types.SimpleNamespace(inner_session=types.SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider"]))
    described = rembg_backend._described(session, "u2net", "x.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert described.fell_back and "runs it on the CPU" in described.notes[0]


def test_models_folder_follows_forge(monkeypatch, tmp_path):
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.setitem(sys.modules, "modules.paths", types.SimpleNamespace(models_path=str(tmp_path / "webui")))
    assert rembg_backend.models_home() == (tmp_path / "webui" / "u2net").resolve()


# ---- weight-free backend and refinement on composites with known alpha -----------------------

# (SAD, MSE, connectivity, edge colour error) each result must stay under; strands over a
# gradient are the hard case (one-pixel lines whose colour mixes with a changing background)
@pytest.mark.parametrize("foreground, background, bounds", [
    ("disc", "solid", (0.1, 1e-4, 0.05, HALO_BOUND)),
    ("disc", "gradient", (0.1, 1e-4, 0.05, HALO_BOUND)),
    ("strands", "solid", (0.15, 2e-4, 0.1, HALO_BOUND)),
    ("strands", "gradient", (0.3, 1e-3, 0.3, 2 * HALO_BOUND)),
])
def test_weight_free_recovers_alpha_and_colour_without_a_halo(foreground, background, bounds):
    case = synthetic_case(foreground, background, 160)
    result = cut_out(case.image, model="weight-free")
    scores = all_metrics(result.alpha, result.foreground, case.alpha, case.fg)
    assert all(v < b for v, b in zip((scores["SAD"], scores["MSE"], scores["Conn"], scores["FG err"]), bounds)), scores
    naive = edge_color_error(case.image.astype(np.float32) / 255, case.fg, case.alpha)
    assert scores["FG err"] < naive / 4  # the old background is gone from the edge


def test_refinement_options_differ_where_they_should():
    case = synthetic_case("disc", "gradient", 160)
    none = cut_out(case.image, model="weight-free", refine="none")
    deco = cut_out(case.image, model="weight-free", refine="decontaminate")
    np.testing.assert_array_equal(none.alpha, deco.alpha)  # decontamination never changes alpha
    opaque = case.alpha > 0.999
    np.testing.assert_array_equal(none.rgba()[opaque][:, :3], case.image[opaque])
    assert edge_color_error(none.foreground, case.fg, case.alpha) > 4 * edge_color_error(deco.foreground, case.fg, case.alpha)


def test_alpha_matting_fixes_a_blurry_model_mask(home):
    # the tiny model sees the subject, its mask is blurred by rembg's resize; matting sharpens it
    write_segmenter(home / "u2netp.onnx")
    case = synthetic_case("disc", "solid", 200)
    image = case.image.copy()
    image[..., 2] = np.where(case.alpha > 0.5, image[..., 2] // 4, image[..., 2])
    plain = cut_out(image, model="u2netp", refine="none")
    matted = cut_out(image, model="u2netp", refine="alpha matting")
    assert sad(matted.alpha, case.alpha) < sad(plain.alpha, case.alpha)


@pytest.mark.parametrize("side", [3, 5, 8])
def test_weight_free_finds_small_subjects_in_small_images(side):
    image = np.zeros((side, side, 3), np.uint8)
    image[..., 2] = 255
    middle = slice(side // 2 - (side == 8), side // 2 + 1)
    image[middle, middle] = (255, 0, 0)
    alpha = cut_out(image, model="weight-free").alpha
    subject = np.zeros((side, side), bool)
    subject[middle, middle] = True
    assert alpha[subject].min() > 0.95 and alpha[~subject].max() < 0.05


def test_textured_background_and_empty_image_are_clear_errors():
    with pytest.raises(CutoutError, match="flat or smooth background.+isnet-general-use"):
        cut_out(synthetic_case("disc", "textured", 128).image, model="weight-free")
    with pytest.raises(CutoutError, match="no subject found"):
        cut_out(np.full((64, 80, 3), 180, np.uint8), model="weight-free")


def test_matting_work_is_tiled_and_bounded(monkeypatch):
    seen = []
    import pymatting

    original = pymatting.estimate_alpha_cf

    def spy(image, trimap, *args, **kwargs):
        seen.append(image.shape[:2])
        return original(image, trimap, *args, **kwargs)

    monkeypatch.setattr(pymatting, "estimate_alpha_cf", spy)
    monkeypatch.setattr(refine_module, "MATTING_TILE", 48)
    monkeypatch.setattr(refine_module, "MATTING_MARGIN", 8)
    case = synthetic_case("disc", "gradient", 200)
    result = cut_out(case.image, model="weight-free")
    assert len(seen) > 4
    assert max(h * w for h, w in seen) <= (48 + 16) ** 2
    assert sad(result.alpha, case.alpha) < 0.2  # tiles join without visible seams
    assert list(refine_module.tiles(np.zeros((10, 10), bool), 4, 1)) == []


def test_large_images_fill_transparent_colour_from_a_smaller_copy(monkeypatch):
    case = synthetic_case("disc", "gradient", 160)
    exact = cut_out(case.image, model="weight-free")
    monkeypatch.setattr(refine_module, "FILL_PIXELS", 40 * 40)  # 160 px: filled at a quarter of the size
    monkeypatch.setattr(refine_module, "STRIP_BYTES", 160 * 3 * 4 * 3 * 7)  # and scaled up 7 rows at a time
    scaled = cut_out(case.image, model="weight-free")
    np.testing.assert_array_equal(scaled.alpha, exact.alpha)
    shown = exact.alpha > refine_module.TRANSPARENT
    np.testing.assert_array_equal(scaled.colour[shown], exact.colour[shown])  # visible pixels untouched
    clear = ~shown
    near = clear & (np.hypot(*np.mgrid[:160, :160] - 80) < 0.3 * 160 + 12)  # just outside the disc edge
    assert np.abs(scaled.colour[near].astype(int) - exact.colour[near].astype(int)).mean() < 12
    assert np.abs(scaled.colour[clear].astype(int) - case.image[clear].astype(int)).mean() > 60  # not the old background


def test_one_console_bar_per_cutout_moving_forward(monkeypatch):
    from lib_layerdiffuse.cutout import run as run_module

    bars = []

    class Recording(run_module.ProgressBar):
        def __init__(self):
            super().__init__()
            self.seen, self.closed = [], False
            bars.append(self)

        def __call__(self, stage, done, total):
            self.seen.append((stage, done, total))

        def close(self):
            self.closed = True

    monkeypatch.setattr(run_module, "ProgressBar", Recording)
    cut_out(synthetic_case("disc", "solid", 96).image, model="weight-free", refine="alpha matting", progress=True)
    assert len(bars) == 1 and bars[0].closed
    done = [d for _, d, _ in bars[0].seen]
    assert done == sorted(done) and done[-1] == bars[0].seen[-1][2]
    assert {s.split(" (")[0] for s, _, _ in bars[0].seen} >= {"Refining the edge by matting", "Estimating edge colours"}


@pytest.mark.slow
def test_memory_per_pixel_stays_within_the_stated_bound():
    """Peak numpy allocation (tracemalloc) grows by at most 60 bytes per extra pixel: measured as
    the difference between a 1 and a 4 megapixel cutout, so the matting tiles' fixed cost cancels."""
    import tracemalloc

    def peak(side: int) -> int:
        image = synthetic_case("disc", "gradient", side).image
        tracemalloc.start()
        try:
            cut_out(image, model="weight-free").render()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(1000), peak(2000)
    assert (large - small) / (2000 ** 2 - 1000 ** 2) <= 60


# ---- outputs -------------------------------------------------------------------------------

def test_outputs_straight_alpha_mask_and_composites(monkeypatch):
    case = synthetic_case("disc", "solid", 128)
    result = cut_out(case.image, model="weight-free")
    rgba = result.rgba()
    assert rgba.dtype == np.uint8 and rgba.shape == (128, 128, 4)
    np.testing.assert_array_equal(rgba[..., 3], result.mask())
    clear = rgba[..., 3] == 0
    # colour under clear pixels is the subject's spread outwards, not the old near-white background
    assert np.abs(rgba[clear][:, :3].astype(int) - case.image[clear].astype(int)).mean() > 60
    monkeypatch.setattr(refine_module, "STRIP_BYTES", 128 * 3 * 4 * 4 * 5)  # composites made 5 rows at a time
    red = result.over((255, 0, 0))
    a = result.alpha[..., None]
    expected = np.round((a * result.foreground + (1 - a) * np.array([1.0, 0, 0])) * 255)
    assert np.abs(red.astype(int) - expected).max() <= 1
    backdrop = np.zeros((40, 300, 3), np.uint8)
    backdrop[..., 1] = 255
    assert result.over(backdrop).shape == (128, 128, 3)  # fitted to cover, centred
    for output, mode in ((Output.RGBA, "RGBA"), (Output.MASK, "L"), (Output.COLOR, "RGB")):
        result.settings = CutoutSettings(output=output)
        assert result.render().mode == mode
    result.settings = CutoutSettings(output=Output.IMAGE, background=backdrop)
    assert result.render().size == (128, 128)


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA"])
def test_grey_palette_and_transparent_inputs(mode):
    case = synthetic_case("disc", "solid", 96)
    img = Image.fromarray(case.image)
    img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.ADAPTIVE)
    if mode == "RGBA":
        own = np.full((96, 96), 255, np.uint8)
        own[:, :20] = 0
        img.putalpha(Image.fromarray(own))
    result = cut_out(img, model="weight-free")
    assert result.alpha[48, 48] > 0.95 and result.alpha[2, 2] < 0.05
    if mode == "RGBA":
        assert result.alpha[:, :20].max() == 0.0  # the image's own transparency is kept


def test_huge_and_unreadable_images_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "MAX_PIXELS", 50 * 50)
    with pytest.raises(ValueError, match="megapixels"):
        cut_out(np.zeros((60, 60, 3), np.uint8), model="weight-free")
    path = tmp_path / "big.png"
    Image.new("RGB", (80, 80)).save(path)
    with pytest.raises(ValueError, match="big.png"):
        images.read_image_file(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png' is not an image"):
        images.read_image_file(broken)


# ---- settings ------------------------------------------------------------------------------

def test_settings_parse_names_positions_and_infotext():
    named = CutoutSettings.from_values({"cutout_model": "Weight_Free", "refine": "alpha_matting",
                                        "erode": 4, "bgcolor": "10, 20, 30", "output": "over a colour"})
    assert named.enabled and named.model == "weight-free" and named.refine is Refine.MATTING
    assert named.edge_band == 4 and named.color == "#0a141e" and named.rgb == (10, 20, 30)
    back = CutoutSettings.from_infotext({k: str(v) for k, v in named.to_infotext().items()})
    assert back == named
    positional = CutoutSettings.from_values(True, "u2net", None, "none", 200)
    assert positional.model == "u2net" and positional.refine is Refine.NONE and positional.fg_threshold == 200
    assert CutoutSettings.from_infotext({"Steps": "20"}).enabled is False


@pytest.mark.parametrize("values, message", [
    ({"model": "rmbg-3"}, "unknown cutout model 'rmbg-3'; valid models are weight-free, isnet-general-use"),
    ({"fg_threshold": 5, "bg_threshold": 9}, "must be below the foreground threshold"),
    ({"color": "#12345"}, "colour must be"),
    ({"edge_band": 2.5}, "whole number"),
    ({"output": "over an image"}, "needs a background image"),
    ({"refine": "magic"}, "valid values are 'none', 'alpha matting', 'decontaminate'"),
])
def test_bad_settings_name_the_field(values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CutoutSettings.from_values(values)


def test_colour_forms():
    assert parse_color("white") == (255, 255, 255)
    assert parse_color("#00FF80") == (0, 255, 128)
    assert parse_color((1, 2, 3, 4)) == (1, 2, 3)
    with pytest.raises(ValueError):
        parse_color("300,0,0")


def test_default_model_is_permissive():
    from lib_layerdiffuse.cutout import DEFAULT_MODEL, REMBG_MODELS

    assert REMBG_MODELS[DEFAULT_MODEL].commercial
    assert not REMBG_MODELS["bria-rmbg"].commercial and "non-commercial" in REMBG_MODELS["bria-rmbg"].label()


def test_connectivity_error_penalises_islands():
    truth = np.zeros((40, 40))
    truth[10:30, 10:30] = 1
    island = truth.copy()
    island[2:6, 2:6] = 0.8
    assert connectivity_error(truth, truth) == 0.0
    assert connectivity_error(island, truth) > 0.0


# ---- command line --------------------------------------------------------------------------

def test_cli_cuts_out_a_folder_reports_bad_files_and_goes_on(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(synthetic_case("disc", "gradient", 96).image).save(folder / "a.png")
    Image.fromarray(synthetic_case("strands", "solid", 96).image).save(folder / "b.jpg", quality=95)
    (folder / "c.png").write_bytes(b"garbage")
    code = main(["cutout", str(folder), "-o", str(tmp_path / "out"), "--cutout-model", "weight-free", "-q"])
    out, err = capsys.readouterr()
    assert code == 1 and "FAILED" in err and "c.png" in err and "1 of 3 images failed" in err
    written = Image.open(tmp_path / "out" / "a.png")
    assert written.mode == "RGBA" and "layerdiffuse" in written.info
    assert np.asarray(written)[..., 3].min() == 0 and np.asarray(written)[..., 3].max() == 255
    assert (tmp_path / "out" / "b.png").exists()


def test_cli_single_file_mask_and_colour(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(synthetic_case("disc", "solid", 96).image).save(src)
    assert main(["cutout", str(src), "-o", str(tmp_path / "mask.png"), "--cutout-model", "weight-free",
                 "--mask", "-q"]) == 0
    assert Image.open(tmp_path / "mask.png").mode == "L"
    assert main(["cutout", str(src), "-o", str(tmp_path / "c"), "--cutout-model", "weight-free",
                 "--bg", "#00ff00", "-q"]) == 0
    assert np.asarray(Image.open(tmp_path / "c" / "a.png"))[0, 0].tolist() == [0, 255, 0]


def test_cli_offline_missing_model_is_reported(tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(red_on_blue()).save(src)
    assert main(["cutout", str(src), "-o", str(tmp_path / "o"), "--cutout-model", "u2net", "--offline", "-q"]) == 1
    err = capsys.readouterr().err
    assert "(downloads are off): use weight-free, or put the file at" in err and "u2net.onnx" in err


@pytest.mark.parametrize("flags", [[], ["--offline"]])
def test_cli_default_model_is_weight_free_when_the_usual_one_cannot_be_had(tmp_path, capsys, flags):
    src = tmp_path / "a.png"
    Image.fromarray(synthetic_case("disc", "solid", 96).image).save(src)
    assert main(["cutout", str(src), "-o", str(tmp_path / "o.png"), "-q", *flags]) == 0
    err = capsys.readouterr().err
    assert "note: using the weight-free cutout: the cutout model isnet-general-use is not downloaded" in err
    with Image.open(tmp_path / "o.png") as img:
        assert json.loads(img.info["layerdiffuse"])["layerdiffusion_cutout_model"] == "weight-free"


# ---- background replacement -----------------------------------------------------------------

def test_replacement_over_a_given_image_keeps_opaque_subject_pixels(tmp_path):
    case = synthetic_case("disc", "solid", 96)
    backdrop = np.zeros((50, 70, 3), np.uint8)
    backdrop[..., 1] = 200
    out = replace_background(case.image, background=backdrop, settings=CutoutSettings(model="weight-free"))
    result = np.asarray(out.image)
    opaque = out.cutout.mask() == 255
    np.testing.assert_array_equal(result[opaque], case.image[opaque])
    assert result[0, 0].tolist() == [0, 200, 0]
    src, bg = tmp_path / "s.png", tmp_path / "b.png"
    Image.fromarray(case.image).save(src)
    Image.fromarray(backdrop).save(bg)
    assert main(["replace-bg", str(src), "--background", str(bg), "--cutout-model", "weight-free",
                 "-o", str(tmp_path / "r"), "-q"]) == 0
    assert Image.open(tmp_path / "r" / "s-replaced.png").size == (96, 96)
    assert Image.open(tmp_path / "r" / "s-cutout.png").mode == "RGBA"


@pytest.mark.slow
def test_replacement_generates_with_from_foreground_to_blending(tmp_path):
    from lib_layerdiffuse.engine import LayerDiffuse
    from lib_layerdiffuse.methods import Method
    from lib_layerdiffuse.testing.layer_files import write_unet_files
    from lib_layerdiffuse.testing.pipelines import tiny_pipeline
    from lib_layerdiffuse.testing.unet_specs import TINY
    from lib_layerdiffuse.weights import WeightStore

    catalog = write_unet_files(tmp_path / "w", TINY["sdxl"])
    store = WeightStore(tmp_path / "w", allow_download=False, progress=False, catalog=catalog)
    engine = LayerDiffuse(tiny_pipeline("sdxl"), store=store, progress=False, decoder_passes=1)
    calls = []
    original = engine.generate
    engine.generate = lambda *a, **k: calls.append((a, k)) or original(*a, **k)
    case = synthetic_case("disc", "solid", 72)
    out = replace_background(case.image, "a beach", engine=engine, max_side=64, steps=2, seed=1,
                             settings=CutoutSettings(model="weight-free"))
    (prompt, method), kwargs = calls[0]
    assert method is Method.FG_TO_BLEND and (kwargs["width"], kwargs["height"]) == (64, 64)
    assert kwargs["fg"].shape == (72, 72, 4)
    result = np.asarray(out.image)
    opaque = out.cutout.mask() == 255
    np.testing.assert_array_equal(result[opaque], case.image[opaque])
    assert out.image.size == (72, 72) and len(out.generated) == 1 and "a beach" in out.infotext
    assert generation_size(1000, 500, 1024) == (1024, 512)


@pytest.mark.parametrize("band", [1, 4, 7, 30])
def test_trimap_sure_regions_are_the_square_erosion(band):
    from scipy.ndimage import binary_erosion, gaussian_filter

    alpha = gaussian_filter(np.random.default_rng(band).random((240, 180)), 12)
    alpha = (alpha - alpha.min()) / np.ptp(alpha)  # sure regions reach the image border
    trimap = refine_module.trimap_from_alpha(alpha, 0.6, 0.4, band)
    square = np.ones((band, band), bool)
    assert np.array_equal(trimap == 1.0, binary_erosion(alpha > 0.6, structure=square, border_value=1))
    assert np.array_equal(trimap == 0.0, binary_erosion(alpha < 0.4, structure=square, border_value=1))
    assert (trimap == 1.0).any() and (trimap == 0.0).any()
