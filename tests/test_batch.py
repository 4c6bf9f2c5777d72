"""Batch production: job files (validation errors with line and field, matrix expansion, seeds per
item), the resumable manifest (a stopped run loses at most the item in flight, changed files are
made again), alpha checks on images of known alpha, and a real run on a tiny SDXL pipeline."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffuse.batch import JobError, Manifest, check_alpha, load_job, run_job, trim
from lib_layerdiffuse.testing.batch import DiscEngine


def job_file(tmp_path, text: str, name: str = "job.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# ---- job files -----------------------------------------------------------------------------

def test_matrix_and_items_expand_with_defaults_and_stable_seeds(tmp_path):
    Image.new("RGBA", (8, 8)).save(tmp_path / "fg.png")
    path = job_file(tmp_path, """
        model = "some/model"
        method = "FG_ONLY_ATTN"
        [defaults]
        steps = 4
        size = "128x96"
        [matrix]
        prompts = ["a cup", "an apple"]
        seeds = [1, 2]
        sizes = ["64x64", "128x128"]
        [[items]]
        prompt = "a dog"
        fg = "fg.png"
        method = "FG_TO_BLEND"
        """)
    job = load_job(path)
    assert len(job.items) == 2 * 2 * 2 + 1
    first = job.items[0].settings
    assert first == {"method": "FG_ONLY_ATTN", "steps": 4, "width": 64, "height": 64, "prompt": "a cup", "seed": 1}
    dog = job.items[-1].settings
    assert dog["width"] == 128 and dog["height"] == 96 and dog["fg"] == str((tmp_path / "fg.png").resolve())
    assert dog["method"] == "FG_TO_BLEND"
    # an item without a seed gets one from its settings: the same in any job that holds it
    alone = load_job(job_file(tmp_path, """
        model = "some/model"
        [[items]]
        prompt = "a dog"
        fg = "fg.png"
        method = "FG_TO_BLEND"
        size = "128x96"
        steps = 4
        """, "other.toml"))
    assert alone.items[0].settings["seed"] == dog["seed"] and alone.items[0].key == job.items[-1].key
    assert len({it.key for it in job.items}) == len(job.items)


@pytest.mark.parametrize("body, message", [
    ('model = "m"\n[defaults]\nsteps = "ten"\n[matrix]\nprompts = ["x"]\n', "line 3, defaults.steps: must be an integer"),
    ('model = "m"\n[[items]]\nprompt = "x"\n\n[[items]]\nprompt = "y"\nsteep = 3\n',
     "line 7, items[1].steep: unknown setting"),
    ('model = "m"\n[[items]]\nprompt = "x"\nnegative = "y"\n', "unknown setting; settings are"),
    ('model = "m"\n[[items]]\nprompt = "x"\nnegativeprompt = "y"\n', "did you mean `negative_prompt`"),
    ('model = "m"\n[[items]]\nprompt = "x"\nsteep = 3\n', "did you mean `steps`"),
    ('model = "m"\n[[items]]\nprompt = "x"\nsize = "big"\n', "line 4, items[0].size: a size is WIDTHxHEIGHT"),
    ('model = "m"\n[[items]]\nprompt = "x"\nwidth = 100\n', "must be a multiple of 8 from 64"),
    ('model = "m"\n[[items]]\nprompt = "x"\nfg = "nowhere.png"\n', "line 4, items[0].fg: no such image file"),
    ('model = "m"\n[[items]]\nseed = 3\n', "line 2, items[0]: no prompt"),
    ('[[items]]\nprompt = "x"\n', "`model` must name the model"),
    ('model = "m"\n', "no items"),
    ('model = "m"\nmodle = "x"\n', "line 2, modle: unknown field"),
    ('model = "m"\n[matrix]\nprompt = ["x"]\n', "line 3, matrix.prompt: unknown matrix axis"),
    ('model = "m"\n[matrix]\nprompts = ["x"]\n[qa]\nretry = 99\n', "line 5, qa.retry: must be 0 .. 10"),
    ('model = "m"\n[matrix]\nprompts = ["x"]\n[qa]\nchecks = ["pink"]\n', "unknown check 'pink'"),
    ('model = "m"\n[matrix]\nprompts = ["x", "x"]\n', "two items have the same settings"),
    ('model = "m"\n[[items]\n', "not valid TOML"),
])
def test_bad_job_files_name_the_line_and_field(tmp_path, body, message):
    with pytest.raises(JobError) as info:
        load_job(job_file(tmp_path, body))
    assert message in str(info.value) and str(tmp_path / "job.toml") in str(info.value)


def test_yaml_job_files_report_lines_too(tmp_path):
    path = job_file(tmp_path, """
        model: m
        matrix:
          prompts: [a cup]
          seeds: [1, 2]
        items:
          - prompt: a dog
          - prompt: a cat
            steps: -1
        """, "job.yaml")
    with pytest.raises(JobError, match=r"line 8, items\[1\]\.steps: must be at least 1"):
        load_job(path)
    path.write_text(path.read_text().replace("steps: -1", "steps: 3"))
    assert [it.settings.get("steps") for it in load_job(path).items] == [None, None, None, 3]


# ---- alpha checks ------------------------------------------------------------------------------

def _alpha(fill=None):
    alpha = np.zeros((64, 64), np.uint8)
    if fill is not None:
        fill(alpha)
    return alpha


def test_alpha_checks_flag_each_failure_and_pass_a_clean_subject():
    def disc(a):
        y, x = np.mgrid[:64, :64]
        a[(x - 32) ** 2 + (y - 32) ** 2 < 15 ** 2] = 255
    def cut(a):
        a[20:64, 10:50] = 255
    def speckle(a):
        rng = np.random.default_rng(0)
        a[rng.random((64, 64)) < 0.08] = 255

    assert check_alpha(_alpha(disc)).passed
    assert check_alpha(_alpha()).flags == ("empty",)
    assert check_alpha(np.full((64, 64), 255, np.uint8)).flags == ("opaque",)
    assert check_alpha(_alpha(cut)).flags == ("cut",)
    assert check_alpha(_alpha(speckle)).flags == ("noise",)
    assert check_alpha(_alpha(cut), checks=("empty", "opaque")).passed
    report = check_alpha(_alpha(disc))
    assert report.bbox == (18, 18, 47, 47) and 0.15 < report.coverage < 0.2


def test_trim_keeps_the_subject_plus_padding_inside_the_image():
    rgba = np.zeros((50, 60, 4), np.uint8)
    rgba[10:20, 30:55] = 255
    out = trim(Image.fromarray(rgba, "RGBA"), 8)
    assert out.size == (60 - 22, 20 + 8 - 2)  # right side stops at the image edge
    assert np.array_equal(np.asarray(out)[8:18, 8:33], rgba[10:20, 30:55])
    empty = Image.fromarray(np.zeros((5, 5, 4), np.uint8), "RGBA")
    assert trim(empty, 2).size == (5, 5)


# ---- running, resuming -------------------------------------------------------------------------

class FakeEngine(DiscEngine):
    """The library's disc engine that can also be interrupted (Ctrl+C) on its `fail_at`-th call."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.fail_at = fail_at

    def generate(self, prompt, method=None, *, seed, **kwargs):
        if self.fail_at is not None and len(self.calls) + 1 == self.fail_at:
            raise KeyboardInterrupt
        return super().generate(prompt, method, seed=seed, **kwargs)


def _job(tmp_path, qa=""):
    return load_job(job_file(tmp_path, f"""
        model = "m"
        [matrix]
        prompts = ["a", "b", "c"]
        seeds = [1, 4]
        {qa}
        """))


def test_a_stopped_run_loses_only_the_item_in_flight_and_a_rerun_finishes(tmp_path):
    job, out = _job(tmp_path), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(job, out, lambda model: FakeEngine(fail_at=4), progress=False)
    assert len(Manifest(out).records) == 3
    (out / "leftover.png.part").write_bytes(b"half")
    engine = FakeEngine()
    summary = run_job(job, out, lambda model: engine, progress=False)
    assert len(summary.made) == 3 and len(summary.skipped) == 3 and len(engine.calls) == 3
    assert not list(out.glob("*.part"))
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(it.key for it in job.items)
    for record in records:
        [entry] = record["files"]
        assert (out / entry["name"]).is_file() and len(entry["sha256"]) == 64
    # nothing left to do: no engine is even made
    summary = run_job(job, out, lambda model: pytest.fail("engine made"), progress=False)
    assert len(summary.skipped) == 6 and not summary.made


def test_changed_or_missing_outputs_and_a_cut_off_manifest_line_are_made_again(tmp_path):
    job, out = _job(tmp_path), tmp_path / "out"
    run_job(job, out, lambda model: FakeEngine(), progress=False)
    records = Manifest(out).records
    first, second = (records[it.key]["files"][0]["name"] for it in job.items[:2])
    before = (out / first).read_bytes()
    (out / first).write_bytes(before[:-10])
    (out / second).unlink()
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"key": "cut off')
    engine = FakeEngine()
    summary = run_job(job, out, lambda model: engine, progress=False)
    assert sorted(summary.made) == sorted(it.key for it in job.items[:2])
    assert (out / first).read_bytes() == before  # identical settings, identical file
    manifest = Manifest(out)
    assert manifest.unreadable == 1 and all(manifest.done(it.key) for it in job.items)


def test_alpha_failures_retry_with_the_next_seed_and_are_recorded(tmp_path):
    job, out = _job(tmp_path, "[qa]\nretry = 1\ntrim = 2"), tmp_path / "out"
    engine = FakeEngine()
    summary = run_job(job, out, lambda model: engine, progress=False)
    # seed 1 passes; seed 4 is fine too; no item starts on a multiple of 3, so force one
    assert summary.retries == 0 and not summary.flagged
    job = load_job(job_file(tmp_path, 'model = "m"\n[[items]]\nprompt = "z"\nseed = 3\n[qa]\nretry = 1\ntrim = 2\n'))
    summary = run_job(job, tmp_path / "out2", lambda model: engine, progress=False)
    record = Manifest(tmp_path / "out2").records[job.items[0].key]
    assert summary.retries == 1 and record["seed"] == 4 and record["attempts"] == 2
    assert record["files"][0]["qa"]["flags"] == [] and record["files"][0]["size"] == [2 * 9 + 2 * 2 - 1] * 2
    job = load_job(job_file(tmp_path, 'model = "m"\n[[items]]\nprompt = "z"\nseed = 3\n'))
    summary = run_job(job, tmp_path / "out3", lambda model: engine, progress=False)
    assert summary.flagged == [job.items[0].key]
    assert Manifest(tmp_path / "out3").records[job.items[0].key]["files"][0]["qa"]["flags"] == ["empty"]


def test_batch_command_runs_a_job_on_a_tiny_pipeline(tmp_path, capsys, monkeypatch):
    from lib_layerdiffuse.cli import main
    from lib_layerdiffuse.testing.layer_files import write_unet_files
    from lib_layerdiffuse.testing.pipelines import tiny_pipeline
    from lib_layerdiffuse.testing.unet_specs import TINY
    from lib_layerdiffuse.weights import catalog as catalog_module

    model, weights = tmp_path / "model", tmp_path / "weights"
    tiny_pipeline("sdxl").save_pretrained(model)
    for name, entry in write_unet_files(weights, TINY["sdxl"]).items():
        monkeypatch.setitem(catalog_module.CATALOG, name, entry)
    path = job_file(tmp_path, f"""
        model = "{model}"
        [defaults]
        steps = 2
        size = "64x64"
        [matrix]
        prompts = ["an apple"]
        seeds = [3, 4]
        methods = ["FG_ONLY_ATTN", "FG_ONLY_CONV"]
        """)
    from lib_layerdiffuse.engine import LayerDiffuse

    together = []
    each = LayerDiffuse.generate_each
    monkeypatch.setattr(LayerDiffuse, "generate_each",
                        lambda self, items, *a, **k: together.append(len(items)) or each(self, items, *a, **k))
    out = tmp_path / "out"
    args = ["batch", str(path), "--out", str(out), "--models-dir", str(weights), "--passes", "1", "--offline", "-q"]
    assert main(args) == 0, capsys.readouterr().err
    assert together == [2, 2]  # per method, both seeds in one batch
    records = Manifest(out).records
    assert len(records) == 4
    for record in records.values():
        with Image.open(out / record["files"][0]["name"]) as image:
            assert image.mode == "RGBA" and image.size == (64, 64)
            assert f"Seed: {record['seed']}" in image.text["parameters"]
    assert "4 made, 0 already done" in capsys.readouterr().err
    assert main(args + ["--sprite-sheet", "sheet"]) == 0
    assert len(json.loads((out / "sheet.json").read_text())["frames"]) == 4
    # sampled two at a time above; one at a time gives each item the same image
    single = tmp_path / "single"
    assert main(args[:3] + [str(single)] + args[4:] + ["--batch-size", "1"]) == 0
    for key, record in records.items():
        [entry] = record["files"]
        [alone] = Manifest(single).records[key]["files"]
        with Image.open(out / entry["name"]) as a, Image.open(single / alone["name"]) as b:
            assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 2
    with pytest.raises(SystemExit):
        main(args + ["--batch-size", "0"])
    # what each Ray worker builds from the command's options (the Ray runner itself is tested below)
    from lib_layerdiffuse.cli import build_parser, ray_engine

    options = {k: v for k, v in vars(build_parser().parse_args(args)).items() if k != "func"}
    engine = ray_engine(options, "FG_ONLY_CONV", str(model))
    assert engine.decoder_passes == 1
    result = engine.generate("an apple", "FG_ONLY_CONV", seed=3, steps=2, width=64, height=64)
    with Image.open(out / records[next(k for k, r in records.items() if r["seed"] == 3
                                       and "Conv" in r["method"])]["files"][0]["name"]) as made:
        assert np.abs(np.asarray(made).astype(int) - np.asarray(result.images[0].image).astype(int)).max() <= 2
    assert "0 made, 4 already done" in capsys.readouterr().err


# ---- exports -----------------------------------------------------------------------------------

def test_packing_never_overlaps_and_respects_the_width():
    from lib_layerdiffuse.batch.exports import pack

    rng = np.random.default_rng(1)
    sizes = [tuple(int(v) for v in rng.integers(5, 60, 2)) for _ in range(40)]
    positions, width, height = pack(sizes, padding=2, max_width=150)
    assert width <= 150
    boxes = [(x, y, x + w + 2, y + h + 2) for (x, y), (w, h) in zip(positions, sizes)]
    for i, a in enumerate(boxes):
        assert a[2] - 2 <= width and a[3] - 2 <= height
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_sprite_sheet_and_psd_read_back_with_every_frame_and_layer(tmp_path):
    from psd_tools import PSDImage

    from lib_layerdiffuse.atomic import write_atomic
    from lib_layerdiffuse.batch.exports import export_psds, export_sprite_sheet

    out = tmp_path / "out"
    run_job(_job(tmp_path), out, lambda model: FakeEngine(), progress=False)
    # one item of a layer method: a transparent foreground, a background and the blend
    rng = np.random.default_rng(0)
    layers = {"fg": rng.integers(0, 256, (48, 40, 4), dtype=np.uint8),
              "bg": rng.integers(0, 256, (48, 40, 4), dtype=np.uint8),
              "blend": rng.integers(0, 256, (48, 40, 4), dtype=np.uint8)}
    layers["bg"][..., 3] = layers["blend"][..., 3] = 255
    files = []
    for i, (frame, pixels) in enumerate(layers.items()):
        name = f"layered-{i:02d}-{frame}.png"
        sha = write_atomic(out / name, lambda p, px=pixels: Image.fromarray(px, "RGBA").save(p, format="PNG"))
        files.append({"name": name, "frame": frame, "transparent": frame == "fg", "sha256": sha})
    Manifest(out).append({"key": "layered", "status": "done", "files": files})

    png, frame_map = export_sprite_sheet(out, "sheet")
    mapping = json.loads(frame_map.read_text())
    assert mapping["meta"]["image"] == "sheet.png" and len(mapping["frames"]) == 7  # 6 discs + the layered fg
    with Image.open(png) as sheet:
        sheet = np.asarray(sheet.convert("RGBA"))
        assert (sheet.shape[1], sheet.shape[0]) == (mapping["meta"]["size"]["w"], mapping["meta"]["size"]["h"])
        for name, entry in mapping["frames"].items():
            f = entry["frame"]
            with Image.open(out / name) as image:
                assert np.array_equal(sheet[f["y"]:f["y"] + f["h"], f["x"]:f["x"] + f["w"]],
                                      np.asarray(image.convert("RGBA")))
    [psd_path] = export_psds(out)
    psd = PSDImage.open(psd_path)
    assert [(layer.name, layer.visible) for layer in psd] == [("bg", True), ("blend", False), ("fg", True)]
    for layer in psd:
        assert np.array_equal(np.asarray(layer.topil().convert("RGBA")), layers[layer.name])


# ---- through Forge's API -----------------------------------------------------------------------

class _FakeForgeAPI:
    """Forge's txt2img endpoint as the LayerDiffuse extension answers it: RGBA for the
    transparent frame, the infotext with the layerdiffusion_* keys (or an error)."""

    def __init__(self):
        import http.server
        import threading

        self.payloads = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.payloads.append((self.path, payload))
                body = json.dumps(api.answer(payload)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, payload):
        import base64
        import io

        if "alwayson_scripts" not in payload:  # Forge Neo's own Qwen-Image-2.1 engine: RGBA, no LayerDiffuse keys
            return self.native(payload)
        layer = payload["alwayson_scripts"]["LayerDiffuse"]["args"][0]
        if "SDXL" in layer["method"]:
            return {"images": [], "info": json.dumps({"infotexts": [
                'x\nSteps: 2, layerdiffusion_error: "(SDXL) ... needs an SDXL model, but the model is SD1.5", '
                'Version: f2']})}
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[20:44, 20:44] = (200, 50, 50, 255)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
        main = base64.b64encode(buffer.getvalue()).decode()
        buffer = io.BytesIO()
        Image.fromarray(rgba[..., :3], "RGB").save(buffer, format="PNG")
        original = base64.b64encode(buffer.getvalue()).decode()  # real Forge: the opaque decode as an extra
        text = f"{payload['prompt']}\nSteps: 2, Seed: {payload['seed']}, layerdiffusion_method: {layer['method']}"
        return {"images": [main, original], "info": json.dumps({"infotexts": [text]})}

    def native(self, payload):
        import base64
        import io

        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[8:40, 8:56] = (30, 90, 200, 255)
        rgba[40:48, 8:56, 3] = 100
        buffer = io.BytesIO()
        Image.fromarray(rgba if self.rgba else rgba[..., :3]).save(buffer, format="PNG")
        text = f"{payload['prompt']}\nSteps: 2, Seed: {payload['seed']}, Model: qwen_image_2.1_bf16"
        return {"images": [base64.b64encode(buffer.getvalue()).decode()], "info": json.dumps({"infotexts": [text]})}

    rgba = True

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_batch_through_forge_neo_keeps_its_qwen_image_rgba(tmp_path, capsys):
    """Forge Neo runs Qwen-Image-2.1 with its own engine: the job's method says so, LayerDiffuse is
    not sent, and the RGBA Neo returns is what the manifest and the alpha checks see."""
    from lib_layerdiffuse.cli import main

    path = job_file(tmp_path, """
        model = "qwen_image_2.1_bf16.safetensors"
        method = "QWEN21_RGBA"
        [defaults]
        size = "64x64"
        [matrix]
        prompts = ["a glass teapot"]
        """)
    forge = _FakeForgeAPI()
    try:
        out = tmp_path / "out"
        assert main(["batch", str(path), "--out", str(out), "--forge-url", forge.url, "-q"]) == 0, \
            capsys.readouterr().err
        (endpoint, payload), = forge.payloads
        assert "alwayson_scripts" not in payload
        assert payload["override_settings"] == {"sd_model_checkpoint": "qwen_image_2.1_bf16.safetensors"}
        record, = Manifest(out).records.values()
        entry, = record["files"]
        assert entry["transparent"] and entry["qa"]["flags"] == []
        with Image.open(out / entry["name"]) as saved:
            assert saved.mode == "RGBA" and sorted(set(np.asarray(saved)[..., 3].ravel())) == [0, 100, 255]
        forge.rgba = False  # a WebUI whose Qwen engine returns RGB: said, not saved as transparent
        assert main(["batch", str(path), "--out", str(tmp_path / "o2"), "--forge-url", forge.url, "-q"]) != 0
        assert "without alpha" in capsys.readouterr().err
    finally:
        forge.close()


def test_batch_through_forges_api_keeps_the_same_manifest(tmp_path, capsys):
    from lib_layerdiffuse.cli import main

    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(tmp_path / "fg.png")
    path = job_file(tmp_path, """
        model = "forge"
        method = "FG_ONLY_ATTN_SD15"
        [defaults]
        steps = 2
        size = "64x64"
        [matrix]
        prompts = ["a cup", "a lamp"]
        """)
    forge = _FakeForgeAPI()
    try:
        out = tmp_path / "out"
        assert main(["batch", str(path), "--out", str(out), "--forge-url", forge.url, "-q"]) == 0, \
            capsys.readouterr().err
        assert len(forge.payloads) == 2
        endpoint, payload = forge.payloads[0]
        assert endpoint == "/sdapi/v1/txt2img" and "override_settings" not in payload
        assert payload["batch_size"] == 1 and payload["width"] == 64 and payload["steps"] == 2
        assert payload["alwayson_scripts"]["LayerDiffuse"]["args"][0]["method"].startswith("(SD1.5) Only Generate")
        records = Manifest(out).records
        assert len(records) == 2
        for record in records.values():
            assert record["files"][0]["qa"]["flags"] == [] and record["method"].startswith("(SD1.5)")
            assert f"Seed: {record['seed']}" in record["infotext"]
        assert main(["batch", str(path), "--out", str(out), "--forge-url", forge.url, "-q"]) == 0
        assert len(forge.payloads) == 2  # resumed: nothing sent again
        bad = job_file(tmp_path, 'model = "forge"\nmethod = "FG_ONLY_ATTN"\n[[items]]\nprompt = "x"\n', "bad.toml")
        assert main(["batch", str(bad), "--out", str(tmp_path / "o2"), "--forge-url", forge.url, "-q"]) != 0
        assert "needs an SDXL model, but the model is SD1.5" in capsys.readouterr().err
        assert not Manifest(tmp_path / "o2").records
        nomethod = job_file(tmp_path, 'model = "forge"\n[[items]]\nprompt = "x"\n', "nomethod.toml")
        assert main(["batch", str(nomethod), "--out", str(tmp_path / "o3"), "--forge-url", forge.url, "-q"]) == 2
        assert "items have no method" in capsys.readouterr().err
    finally:
        forge.close()


# ---- on a Ray cluster --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_run_survives_a_killed_worker_and_loses_nothing(tmp_path, local_ray):
    import functools

    from lib_layerdiffuse.batch.ray_runner import run_job_on_ray
    from lib_layerdiffuse.testing.batch import disc_engine

    job = load_job(job_file(tmp_path, """
        model = "m"
        [matrix]
        prompts = ["a", "b", "c", "d"]
        seeds = [1, 4]
        """))
    out, marker = tmp_path / "out", tmp_path / "died"
    engine_for = functools.partial(disc_engine, die_on="b", marker=str(marker))
    summary = run_job_on_ray(job, out, engine_for, workers=2, batch_size=2, progress=False)
    assert marker.exists()  # a worker process really ended in the middle of the job
    assert sorted(summary.made) == sorted(it.key for it in job.items)
    manifest = Manifest(out)
    assert all(manifest.done(it.key) for it in job.items) and len(manifest.records) == 8
    pids = {r["infotext"].rsplit("pid ", 1)[1] for r in manifest.records.values()}
    assert len(pids) >= 2 and marker.read_text() not in pids  # the dead worker's items were made elsewhere
    # the images are those a local run makes (the PNG text differs: it names the process), and a
    # rerun on Ray has nothing to do
    local = tmp_path / "local"
    run_job(job, local, disc_engine, progress=False)
    for key, record in manifest.records.items():
        [entry], [alone] = record["files"], Manifest(local).records[key]["files"]
        with Image.open(out / entry["name"]) as a, Image.open(local / alone["name"]) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
    again = run_job_on_ray(job, out, engine_for, workers=2, progress=False)
    assert not again.made and len(again.skipped) == 8


@pytest.mark.slow
def test_ray_run_stops_with_the_reason_when_a_chunk_keeps_killing_workers(tmp_path, local_ray):
    import functools

    from lib_layerdiffuse.batch.ray_runner import run_job_on_ray
    from lib_layerdiffuse.testing.batch import disc_engine

    job = load_job(job_file(tmp_path, 'model = "m"\n[matrix]\nprompts = ["a", "b"]\n'))
    engine_for = functools.partial(disc_engine, die_on="b")  # no marker: every worker that meets "b" dies
    with pytest.raises(RuntimeError, match=r"a Ray worker died 2 times on the items"):
        run_job_on_ray(job, tmp_path / "out", engine_for, workers=2, batch_size=1, retries=1, progress=False)
    records = Manifest(tmp_path / "out").records
    assert [r["settings"]["prompt"] for r in records.values()] == ["a"]  # what finished is kept


def test_a_batch_too_large_for_the_device_is_split_and_gives_the_same_images(tmp_path):
    from lib_layerdiffuse.methods import Family

    class Batching(FakeEngine):
        family = Family.SDXL

        def __init__(self):
            super().__init__()
            self.batches = []

        def generate_each(self, items, method, **kwargs):
            self.batches.append(len(items))
            if len(items) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return [self.generate(p, method, seed=s, **kwargs) for p, s in items]

    job = load_job(job_file(tmp_path, 'model = "m"\nmethod = "FG_ONLY_CONV"\n[matrix]\n'
                                      'prompts = ["a", "b", "c", "d", "e", "f", "g"]\nseeds = [1]\n'))
    engine = Batching()
    summary = run_job(job, tmp_path / "out", lambda model: engine, progress=False, batch_size=4)
    # 4 did not fit: halved, and the rest of the run keeps to 2 ("g" alone needs no batch)
    assert engine.batches == [4, 2, 2, 2] and len(summary.made) == 7
    run_job(job, tmp_path / "one", lambda model: FakeEngine(), progress=False, batch_size=1)
    for key, record in Manifest(tmp_path / "out").records.items():
        assert record["files"][0]["sha256"] == Manifest(tmp_path / "one").records[key]["files"][0]["sha256"]
    other = Batching()
    other.generate_each = lambda items, method, **kwargs: (_ for _ in ()).throw(ValueError("bad prompt"))
    with pytest.raises(ValueError, match="bad prompt"):  # only running out of memory is retried smaller
        run_job(job, tmp_path / "bad", lambda model: other, progress=False)
