"""The web app end to end in a real headless Chromium (driven by Playwright), against the app
serving a tiny SDXL model: generate, download, errors, the queue, the offline page, cutouts and
background replacement. `.ci/run` installs the browser; without one these tests skip locally
(and fail in CI, where LAYERDIFFUSE_REQUIRE_BROWSER is set)."""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture says what is missing
    expect = None

from lib_layerdiffuse.app import Backend
from lib_layerdiffuse.cutout.metrics import sad
from lib_layerdiffuse.engine import LayerDiffuse
from lib_layerdiffuse.layers.decompose import LayerDecomposer
from lib_layerdiffuse.methods import Method
from lib_layerdiffuse.testing.browser import find_browser, launch_chromium, running_app
from lib_layerdiffuse.testing.composites import synthetic_case
from lib_layerdiffuse.testing.layer_files import write_unet_files
from lib_layerdiffuse.testing.pipelines import tiny_pipeline
from lib_layerdiffuse.testing.qwen import tiny_layered_pipeline
from lib_layerdiffuse.testing.unet_specs import TINY
from lib_layerdiffuse.weights import WeightStore

pytestmark = pytest.mark.slow
WAIT_MS = 60_000


def _unavailable(reason: str):
    if os.environ.get("LAYERDIFFUSE_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    executable = find_browser()
    if executable is None:
        _unavailable("no Chromium on PATH (apt install chromium, or set LAYERDIFFUSE_BROWSER)")
    if expect is None:
        _unavailable("playwright is not installed (pip install -e .[test])")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw, executable)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """(URL, backend) of the app on a tiny SDXL pipeline with tiny weight files."""
    folder = tmp_path_factory.mktemp("browser-weights")
    store = WeightStore(folder, allow_download=False, progress=False, catalog=write_unet_files(folder, TINY["sdxl"]))
    engine = LayerDiffuse(tiny_pipeline("sdxl"), store=store, progress=False, decoder_passes=1)
    decomposer = LayerDecomposer(tiny_layered_pipeline(), progress=False)
    backend = Backend("tiny-sdxl", store=store, engine=engine, passes=1, out_dir=tmp_path_factory.mktemp("out"),
                      decomposer=decomposer)
    with running_app(backend) as url:
        yield url, backend


@pytest.fixture(scope="module")
def offline_app(tmp_path_factory):
    """The app offline with a hub model that is not in the cache and no weight files."""
    root = tmp_path_factory.mktemp("offline")
    backend = Backend("layerdiffuse-tests/not-downloaded", offline=True, models_dir=str(root / "weights"),
                      cutout_models_dir=str(root / "u2net"), out_dir=root / "out")
    with running_app(backend) as url:
        yield url, backend


def choose(page, elem_id: str, option: str) -> None:
    page.click(f"{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def small_generation(page, **numbers) -> None:
    for name, value in dict(dict(width=64, height=64, steps=2), **numbers).items():
        set_number(page, f"#ld-{name}", value)


def download(page, link) -> Image.Image:
    with page.expect_download() as info:
        link.click()
    img = Image.open(info.value.path())
    img.load()
    return img


def upload(page, elem_id: str, array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path)
    page.set_input_files(f"{elem_id} input[type=file]", str(path))
    page.wait_for_selector(f"{elem_id} img", timeout=WAIT_MS)


def test_generate_and_download_a_png_with_real_alpha(page, tiny_app):
    url, _ = tiny_app
    page.goto(url)
    page.fill("#ld-prompt textarea", "an apple")
    choose(page, "#ld-method", Method.FG_ONLY_CONV.value)
    small_generation(page, batch=2)
    set_number(page, "#ld-seed", 11)
    page.click("#ld-generate")
    page.wait_for_selector("#ld-gallery img", timeout=WAIT_MS)
    links = page.locator("#ld-files a")
    assert links.count() == 2
    img = download(page, links.first)
    alpha = np.asarray(img)[..., 3]
    assert img.format == "PNG" and img.mode == "RGBA" and img.size == (64, 64)
    assert alpha.min() < 255 and len(np.unique(alpha)) > 10  # a real alpha channel, not a constant
    text = img.text["parameters"]
    assert text.startswith("an apple\nSteps: 2") and "Seed: 11" in text
    assert f"layerdiffusion_method: {Method.FG_ONLY_CONV.value}" in text
    background = page.locator("#ld-gallery img").first.evaluate("e => getComputedStyle(e).backgroundImage")
    assert "conic-gradient" in background  # transparent results are shown over a checkerboard
    assert "Seed: 11" in page.input_value("#ld-info textarea")


def test_batch_tab_runs_a_job_and_lists_every_image(page, tiny_app):
    url, _ = tiny_app
    page.goto(url)
    page.get_by_role("tab", name="Batch").click()
    job = ('model = "app"\nmethod = "FG_ONLY_CONV"\n[defaults]\nsteps = 2\nsize = "64x64"\n'
           '[matrix]\nprompts = ["an apple", "a cup"]\n')
    page.locator("#ld-batch-job .cm-content").fill(job)
    page.click("#ld-batch-run")
    page.wait_for_selector("#ld-batch-gallery img", timeout=WAIT_MS)
    assert page.locator("#ld-batch-files a").count() == 3  # the manifest and two PNGs
    assert page.input_value("#ld-batch-info textarea").startswith("2 made, 0 already done")
    img = download(page, page.locator("#ld-batch-files a").nth(1))
    assert img.mode == "RGBA" and img.size == (64, 64)


def test_a_method_shows_its_inputs_and_errors_are_shown(page, tiny_app, tmp_path):
    url, _ = tiny_app
    page.goto(url)
    page.fill("#ld-prompt textarea", "an apple on a table")
    choose(page, "#ld-method", Method.FG_TO_BLEND.value)
    expect(page.locator("#ld-hint")).to_contain_text("needs a foreground")
    expect(page.locator("#ld-fg-image")).to_be_visible()
    expect(page.locator("#ld-bg-image")).to_be_hidden()
    small_generation(page)
    page.click("#ld-generate")
    page.get_by_text(re.compile("needs a Foreground")).first.wait_for(timeout=WAIT_MS)
    fg = np.zeros((48, 48, 4), np.uint8)
    fg[8:40, 8:40] = (220, 30, 30, 255)
    upload(page, "#ld-fg-image", fg, tmp_path / "fg.png")
    page.click("#ld-generate")
    page.wait_for_selector("#ld-gallery img", timeout=WAIT_MS)
    img = download(page, page.locator("#ld-files a").first)
    assert img.mode == "RGB" and "From Foreground to Blending" in img.text["parameters"]


def test_progress_shows_and_the_next_generation_waits_with_its_place(browser, tiny_app, monkeypatch):
    url, backend = tiny_app
    engine = backend.engine()
    sampling, gate, running, peak = threading.Event(), threading.Event(), [], []
    generate = engine.generate

    def held(*args, on_progress, **kwargs):
        """The first sampling step of every generation waits for the gate."""
        def report(stage, done, total):
            on_progress(stage, done, total)
            if (stage, done) == ("Sampling", 1):
                sampling.set()
                gate.wait(WAIT_MS / 1000)

        running.append(1)
        peak.append(len(running))
        try:
            return generate(*args, on_progress=report, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(engine, "generate", held)
    pages = [browser.new_context().new_page() for _ in range(2)]
    for p in pages:
        p.goto(url)
        p.fill("#ld-prompt textarea", "a pear")
        small_generation(p, steps=3)
    pages[0].click("#ld-generate")
    assert sampling.wait(30), "the first generation did not start sampling"
    expect(pages[0].locator("#ld-gallery")).to_contain_text(re.compile(r"1/3 steps.*Sampling"), timeout=WAIT_MS)
    pages[1].click("#ld-generate")
    expect(pages[1].locator("#ld-gallery")).to_contain_text(re.compile(r"queue: 1/\d"), timeout=WAIT_MS)
    assert len(running) == 1
    gate.set()
    for p in pages:
        p.wait_for_selector("#ld-gallery img", timeout=WAIT_MS)
        p.context.close()
    assert max(peak) == 1


def test_offline_page_says_what_is_missing_and_cutouts_still_work(page, offline_app, tmp_path):
    url, backend = offline_app
    page.goto(url)
    page.locator("#ld-status").get_by_text(re.compile("Model not downloaded")).wait_for(timeout=WAIT_MS)
    page.click("#ld-status-more")  # details on demand
    expect(page.locator("#ld-status-details")).to_contain_text("hf download layerdiffuse-tests/not-downloaded")
    page.click("#ld-weights-more")
    text = page.locator("#ld-weights-details").inner_text()
    for name in Method.FG_ONLY_ATTN.weight_files:
        assert str(backend.store.folder / name) in text
    assert page.is_disabled("#ld-generate")

    page.get_by_role("tab", name="Cutout").click()
    assert page.input_value("#ld-cut-cutout_model input") == "weight-free · no download"
    page.click("#ld-cut-cutout_model input")
    listed = page.get_by_role("option").all_inner_texts()
    assert "isnet-general-use · not downloaded (offline), 171 MB" in listed and "local file · an ONNX file of yours" in listed
    page.keyboard.press("Escape")
    case = synthetic_case("disc", "solid", 128)
    upload(page, "#ld-cut-image", case.image, tmp_path / "disc.png")
    page.click("#ld-cut-run")
    page.wait_for_selector("#ld-cut-gallery img", timeout=WAIT_MS)
    img = download(page, page.locator("#ld-cut-files a").first)
    alpha = np.asarray(img)[..., 3] / 255.0
    assert img.mode == "RGBA" and alpha.min() == 0 and alpha.max() == 1
    assert sad(alpha, case.alpha) < 0.5  # the weight-free matte of a clean disc is close to exact

    page.get_by_role("tab", name="Replace background").click()
    upload(page, "#ld-rep-image", case.image, tmp_path / "subject.png")
    upload(page, "#ld-rep-background", np.full((64, 96, 3), (0, 90, 200), np.uint8), tmp_path / "bg.png")
    page.click("#ld-rep-run")
    page.wait_for_selector("#ld-rep-gallery img", timeout=WAIT_MS)
    assert page.locator("#ld-rep-files a").count() == 2
    composite = np.asarray(download(page, page.locator("#ld-rep-files a").first))
    assert composite.shape == case.image.shape and (composite[0, 0] == (0, 90, 200)).all()


def clipped(page, selector: str) -> bool:
    """Whether the element's text is cut off (wider than the element shows)."""
    return page.locator(selector).first.evaluate("e => e.scrollWidth > e.clientWidth + 1")


def test_expected_errors_print_no_traceback_and_leave_the_status_readable(page, tiny_app, tmp_path, capfd):
    url, _ = tiny_app
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(url)
    assert not clipped(page, "#ld-sampler input")  # "Default for the method" fits
    choose(page, "#ld-method", Method.FG_TO_BLEND.value)
    small_generation(page)
    page.click("#ld-generate")
    page.get_by_text(re.compile("needs a Foreground")).first.wait_for(timeout=WAIT_MS)
    expect(page.locator("#ld-gallery").get_by_text("Error", exact=True)).to_be_visible()
    expect(page.locator("#ld-status").get_by_text("Error", exact=True)).to_have_count(0)  # no pill over it
    page.locator("#ld-fg-image input[type=file]").set_input_files(
        files=[{"name": "holiday.png", "mimeType": "image/png", "buffer": b"this is not a picture"}])
    page.wait_for_timeout(500)
    page.click("#ld-generate")
    page.get_by_text(re.compile(r"'holiday.png' is not an image \(PIL: cannot identify image file\)")).first.wait_for(
        timeout=WAIT_MS)
    console = capfd.readouterr()
    text = console.out + console.err
    assert "Traceback" not in text and "Could not preprocess" not in text and "UnidentifiedImageError" not in text


def test_offline_replacement_needs_a_background_and_says_what_it_used(page, offline_app, tmp_path):
    url, _ = offline_app
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(url)
    page.get_by_role("tab", name="Replace background").click()
    assert not clipped(page, "#ld-rep-side [data-testid=max-value]")  # "2048" is not cut to "204"
    page.fill("#ld-rep-prompt textarea", "a beach at dusk")
    case = synthetic_case("disc", "solid", 96)
    upload(page, "#ld-rep-image", case.image, tmp_path / "subject.png")
    expect(page.locator("#ld-rep-run")).to_be_disabled()  # a prompt alone needs the model, which is not here
    expect(page.locator("#ld-rep-why")).to_contain_text("needs the model")
    upload(page, "#ld-rep-background", np.full((64, 96, 3), (0, 90, 200), np.uint8), tmp_path / "bg.png")
    expect(page.locator("#ld-rep-run")).to_be_enabled()
    page.click("#ld-rep-run")
    page.wait_for_selector("#ld-rep-gallery img", timeout=WAIT_MS)
    expect(page.locator("#ld-rep-notes")).to_contain_text("The prompt was not used: a background image was given")
    assert page.input_value("#ld-rep-info textarea").startswith("Background: given image 96x64")


def test_the_page_is_compact_and_each_tab_states_what_it_needs(page, offline_app, tmp_path):
    """At 1280x800 with the model missing: the tabs start near the top (the status is one line,
    details on demand; before, every weight file's URL and path pushed them to y=424), the
    decoder passes fit on one line, a disabled button says why on hover, the weights line of a
    tab follows its own method (before: after a Replace background run the one status listed
    fg->blend's file while Generate showed fg-only), an SD1.5 method gets SD1.5's size, and the
    Batch tab has a method and is off like Generate."""
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(offline_app[0])
    page.locator("#ld-generate-why").get_by_text(re.compile("Generating is off")).wait_for(timeout=WAIT_MS)
    assert page.get_by_role("tab", name="Generate").bounding_box()["y"] < 250
    tops = {round(b["y"]) for b in (e.bounding_box() for e in page.locator("#ld-passes label").all())}
    assert len(tops) == 1, tops  # "8" does not wrap onto a second line
    assert "Generating is off" in page.get_attribute("#ld-generate", "title")
    expect(page.locator("#ld-weights")).to_contain_text("FG_ONLY_ATTN missing")
    expect(page.locator("#ld-weights")).to_contain_text("953 MB")

    page.get_by_role("tab", name="Replace background").click()
    expect(page.locator("#ld-rep-weights")).to_contain_text("FG_TO_BLEND")
    case = synthetic_case("disc", "solid", 96)
    upload(page, "#ld-rep-image", case.image, tmp_path / "subject.png")
    upload(page, "#ld-rep-background", np.full((64, 96, 3), (0, 90, 200), np.uint8), tmp_path / "bg.png")
    page.click("#ld-rep-run")
    page.wait_for_selector("#ld-rep-gallery img", timeout=WAIT_MS)
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#ld-weights")).to_contain_text("FG_ONLY_ATTN")
    expect(page.locator("#ld-status")).not_to_contain_text("FG_TO_BLEND")

    choose(page, "#ld-method", Method.FG_ONLY_ATTN_SD15.value)
    expect(page.locator("#ld-width input[type=number]")).to_have_value("512")
    expect(page.locator("#ld-height input[type=number]")).to_have_value("512")

    page.get_by_role("tab", name="Batch").click()
    assert page.input_value("#ld-batch-method input") == Method.FG_ONLY_ATTN.value  # not blank
    expect(page.locator("#ld-batch-run")).to_be_disabled()
    expect(page.locator("#ld-batch-why")).to_contain_text("Generating is off")


def test_layers_tab_splits_an_image_into_layers_with_psd_and_zip(page, tiny_app, tmp_path):
    url, _ = tiny_app
    page.goto(url)
    page.get_by_role("tab", name="Layers").click()
    expect(page.locator("#ld-layers-run")).to_be_enabled(timeout=WAIT_MS)
    expect(page.locator("#ld-layers-status")).to_contain_text("Apache")
    poster = np.zeros((48, 64, 4), np.uint8)
    poster[..., 3] = 255
    poster[12:36, 16:48] = (230, 200, 30, 255)
    upload(page, "#ld-layers-image", poster, tmp_path / "poster.png")
    page.fill("#ld-layers-prompt textarea", "a poster")
    set_number(page, "#ld-layers-count", 2)
    set_number(page, "#ld-layers-steps", 2)
    page.click("#ld-layers-run")
    page.wait_for_selector("#ld-layers-gallery img", timeout=WAIT_MS)
    expect(page.locator("#ld-layers-gallery img")).to_have_count(2, timeout=WAIT_MS)
    links = page.locator("#ld-layers-files a")
    names = [links.nth(i).get_attribute("download") or links.nth(i).get_attribute("href") for i in range(links.count())]
    assert [n.rsplit(".", 1)[-1] for n in names] == ["png", "png", "psd", "zip"], names
    layer = download(page, links.first)
    assert layer.mode == "RGBA" and layer.size == (736, 544) and "Layers: 2" in layer.text["parameters"]
    expect(page.locator("#ld-layers-notes")).to_contain_text("differ from the image by")


def test_layers_tab_offline_without_the_model_says_so(page, offline_app):
    url, _ = offline_app
    page.goto(url)
    page.get_by_role("tab", name="Layers").click()
    expect(page.locator("#ld-layers-status")).to_contain_text("Model not downloaded", timeout=WAIT_MS)
    expect(page.locator("#ld-layers-run")).to_be_disabled()
