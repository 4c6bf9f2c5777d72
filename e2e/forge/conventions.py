"""The Forge conventions in a real host (`run.py --conventions`): LayerDiffuse's REST endpoints,
the Extras cutout (a batch from a directory through `POST /layerdiffuse/v1/cutout`, which runs
the WebUI's own Extras postprocessing), the WebUI's own Extras API left working, Settings ->
LayerDiffuse read at call time, and the panel's method following the SD1.5 checkpoint.

Each check returns its failures as text; run.py makes the plain restoration call after each.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import requests
from PIL import Image, PngImagePlugin

from cases import BASE, SD15_ATTN, _decode, _files, image_stats, png_base64

API = "/layerdiffuse/v1"
WEIGHT_FREE = {"model": "weight-free", "refine": "none"}


@dataclass
class Check:
    name: str
    failures: list[str] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0
    restored: str = "-"


def subject(seed: int = 0, size: int = 256) -> Image.Image:
    """A red square with texture on a flat blue background: the weight-free model cuts it out."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = (30, 60, 200)
    inner = slice(size // 4, 3 * size // 4)
    pixels[inner, inner] = (200, 40, 30) + rng.integers(0, 20, (size // 2, size // 2, 3))
    return Image.fromarray(pixels, "RGB")


def _json(reply: requests.Response) -> dict:
    try:
        return reply.json()
    except ValueError:
        return {"error": reply.text[:200]}


def check_routes(url: str, context: dict) -> list[str]:
    out = []
    methods = requests.get(f"{url}{API}/methods", timeout=120)
    body = _json(methods)
    if methods.status_code != 200:
        return [f"GET methods: HTTP {methods.status_code} {body}"]
    names = [m["name"] for m in body.get("methods", [])]
    if body.get("family") != "sd15" or names[:1] != ["FG_ONLY_ATTN_SD15"] or not body["methods"][0]["default"]:
        out.append(f"GET methods: family {body.get('family')}, methods {names}")
    if not all(m["ready"] for m in body["methods"]):
        out.append("GET methods: the rig's SD1.5 files are not all ready: "
                   + ", ".join(m["name"] for m in body["methods"] if not m["ready"]))
    bad = requests.get(f"{url}{API}/methods", params={"family": "sd3"}, timeout=120)
    if bad.status_code != 422 or _json(bad).get("field") != "family":
        out.append(f"GET methods?family=sd3: HTTP {bad.status_code} {_json(bad)}")
    weights = requests.get(f"{url}{API}/weights", timeout=120)
    files = {f["name"]: f for f in _json(weights).get("files", [])}
    if weights.status_code != 200 or not files:
        out.append(f"GET weights: HTTP {weights.status_code}")
    elif not files.get("layer_sd15_transparent_attn.safetensors", {}).get("bytes"):
        out.append(f"GET weights: the rig's SD1.5 file is not listed with its size in {_json(weights)['folder']}")
    context["detail"] = f"{len(names)} SD1.5 methods; {sum(1 for f in files.values() if f['bytes'])} files here"
    return out


def check_cutout_images(url: str, context: dict) -> list[str]:
    empty = Image.new("RGB", (128, 128), (90, 90, 90))
    reply = requests.post(f"{url}{API}/cutout", timeout=600, json={
        "images": [png_base64(subject()), png_base64(empty)], "return_mask": True, **WEIGHT_FREE})
    body = _json(reply)
    if reply.status_code != 200:
        return [f"HTTP {reply.status_code} {body}"]
    first, second = body["images"]
    image = _decode(first["image"])
    stats = image_stats(image)
    out = [] if stats.real_alpha else [f"the cutout is {stats.short()}, without real alpha"]
    mask = np.asarray(_decode(first["mask"]))
    if not np.array_equal(mask, np.asarray(image)[..., 3]):
        out.append("the mask is not the cutout's alpha")
    if "no subject" not in second.get("error", ""):
        out.append(f"the empty image was not reported: {second}")
    for body_, status, name in (({"images": ["QUJD"]}, 422, "images[0]"), ({"image": "x", "modle": "u2net"}, 422, "modle"),
                                ({"image": "x", "fg_threshold": 400}, 422, "fg_threshold")):
        bad = requests.post(f"{url}{API}/cutout", json=body_, timeout=120)
        if bad.status_code != status or _json(bad).get("field") != name:
            out.append(f"{body_}: HTTP {bad.status_code} {_json(bad)}, expected {status} naming {name}")
    raw = requests.post(f"{url}{API}/cutout", data=b"{not json", timeout=120,
                        headers={"content-type": "application/json"})
    if raw.status_code != 400:
        out.append(f"a body that is not JSON: HTTP {raw.status_code}")
    context["detail"] = f"{stats.short()}; errors named: no subject, images[0], modle, fg_threshold, body"
    return out


def _folder(root: Path) -> Path:
    folder = root / "extras-in"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(3):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"a cup, Seed: {i}")  # as if sent from txt2img: stealth infotext applies
        subject(seed=i).save(folder / f"good{i}.png", pnginfo=info)
    Image.new("RGB", (128, 128), (90, 90, 90)).save(folder / "empty.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def _run_folder(url: str, root: Path, name: str) -> tuple[dict, int, list[Path]]:
    out_dir = root / name
    shutil.rmtree(out_dir, ignore_errors=True)
    reply = requests.post(f"{url}{API}/cutout", timeout=1200, json={
        "input_dir": str(_folder(root)), "output_dir": str(out_dir), **WEIGHT_FREE})
    files = sorted(p for p in out_dir.rglob("*") if p.is_file()) if out_dir.exists() else []
    return _json(reply), reply.status_code, files


def check_extras_folder(url: str, context: dict) -> list[str]:
    body, status, files = _run_folder(url, context["root"], "extras-out")
    if status != 200:
        return [f"HTTP {status} {body}"]
    out = []
    if body.get("cut") != 3 or [e["file"] for e in body.get("errors", [])] != ["empty.png"]:
        out.append(f"cut {body.get('cut')}, errors {body.get('errors')}")
    pngs = [p for p in files if p.suffix == ".png"]
    if len(pngs) != 3:
        out.append(f"{len(pngs)} files saved: {[p.name for p in files]}")
    shown = []
    for path in pngs:
        with Image.open(path) as image:
            stats = image_stats(image)
            text = " ".join(str(v) for v in image.info.values())
        shown.append(stats.short())
        if not stats.real_alpha:
            out.append(f"{path.name} is {stats.short()}: the alpha was lost")
        if "layerdiffusion_cutout" not in text:
            out.append(f"{path.name} has no cutout settings in its PNG text")
    context["detail"] = f"saved {'; '.join(shown)}; errors: {[e['file'] for e in body.get('errors', [])]}"
    return out


def check_extras_jpeg(url: str, context: dict) -> list[str]:
    _options(url, samples_format="jpg")
    try:
        body, status, files = _run_folder(url, context["root"], "extras-jpg")
    finally:
        _options(url, samples_format="png")
    if status != 200:
        return [f"HTTP {status} {body}"]
    jpgs = [p for p in files if p.suffix == ".jpg"]
    copies = [p for p in files if p.name.endswith("-transparent.png")]
    out = [] if (len(jpgs), len(copies)) == (3, 3) else [f"saved {[p.name for p in files]}"]
    for path in copies:
        with Image.open(path) as image:
            if not image_stats(image).real_alpha:
                out.append(f"{path.name} has no real alpha")
    context["detail"] = f"{len(jpgs)} JPEG, {len(copies)} transparent PNG copies"
    return out


def check_webui_extras_api(url: str, context: dict) -> list[str]:
    """The WebUI's own Extras API passes None to extension scripts: ours stays off, nothing breaks."""
    image = subject()
    reply = requests.post(f"{url}/sdapi/v1/extra-single-image", timeout=600,
                          json={"image": png_base64(image), "upscaling_resize": 1, "upscaler_1": "None"})
    if reply.status_code != 200:
        return [f"HTTP {reply.status_code} {_json(reply)}"]
    result = _decode(reply.json()["image"])
    out = ["extra-single-image ran the cutout although nobody asked"] if image_stats(result).real_alpha else []
    batch = requests.post(f"{url}/sdapi/v1/extra-batch-images", timeout=600, json={
        "imageList": [{"data": png_base64(subject(seed=i)), "name": f"s{i}.png"} for i in range(2)],
        "upscaling_resize": 1, "upscaler_1": "None"})
    if batch.status_code != 200 or len(batch.json().get("images", [])) != 2:
        out.append(f"extra-batch-images: HTTP {batch.status_code} {str(_json(batch))[:200]}")
    context["detail"] = f"single {result.mode} {result.size[0]}x{result.size[1]}; batch of 2: HTTP {batch.status_code}"
    return out


def _options(url: str, **values) -> None:
    requests.post(f"{url}/sdapi/v1/options", json=values, timeout=120).raise_for_status()


def _generate(url: str, args: list, save: bool = True) -> tuple[list[Image.Image], dict]:
    payload = {**BASE, "width": 256, "height": 256, "save_images": save,
               "alwayson_scripts": {"LayerDiffuse": {"args": args}}}
    reply = requests.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=3600)
    reply.raise_for_status()
    body = reply.json()
    return [_decode(b) for b in body["images"]], json.loads(body["info"])


def check_settings(url: str, context: dict) -> list[str]:
    # GET /sdapi/v1/options may leave them out: current Forge's answer lists only the options its
    # API model knew when it was built; setting them works, which is what is checked here
    out: list[str] = []
    try:
        _options(url, layerdiffuse_preview="none")
        images, _ = _generate(url, [True, SD15_ATTN], save=False)
        if len(images) != 1:
            out.append(f"preview 'none': {len(images)} images returned, expected the RGBA alone")
        _options(url, layerdiffuse_preview="colour", layerdiffuse_preview_colour="#ff0000")
        images, _ = _generate(url, [True, SD15_ATTN], save=False)
        if len(images) != 2:
            out.append(f"preview 'colour': {len(images)} images returned")
        else:
            rgba = np.asarray(images[0].convert("RGBA")).astype(np.float32)
            a = rgba[..., 3:] / 255.0
            expected = rgba[..., :3] * a + np.array([255.0, 0.0, 0.0]) * (1 - a)
            diff = np.abs(np.asarray(images[1].convert("RGB")).astype(np.float32) - expected).max()
            if diff > 1.5:
                out.append(f"preview 'colour' is not the result over red (max difference {diff:.0f})")
        _options(url, layerdiffuse_preview="checkerboard", layerdiffuse_save_preview=True, samples_format="jpg",
                 layerdiffuse_transparent_copy=False)
        outputs = context["outputs"]
        before = _files(outputs) if outputs.exists() else set()
        _generate(url, [True, SD15_ATTN])
        new = sorted(p.name for p in _files(outputs) - before)
        if not any("-preview" in n for n in new) or any("-transparent" in n for n in new):
            out.append(f"save preview on, PNG copy off, JPEG: saved {new}")
    finally:
        _options(url, layerdiffuse_preview="checkerboard", layerdiffuse_save_preview=False, samples_format="png",
                 layerdiffuse_transparent_copy=True)
    context["detail"] = "set through the API: preview none and colour, save preview, PNG copy off: each as set"
    return out


def _dependencies_between(config: dict, source: int, target: int) -> bool:
    for dep in config.get("dependencies", []):
        targets = [t[0] if isinstance(t, (list, tuple)) else t for t in dep.get("targets", [])]
        if source in targets and target in dep.get("outputs", []):
            return True
    return False


def check_panel_defaults(url: str, context: dict) -> list[str]:
    config = requests.get(f"{url}/config", timeout=120).json()
    components = config.get("components", [])
    by_elem = {c.get("props", {}).get("elem_id"): c for c in components}
    method = by_elem.get("script_txt2img_layerdiffuse_method")
    if method is None:
        return ["no txt2img method dropdown in /config"]
    props = method["props"]
    choices = [c[0] if isinstance(c, (list, tuple)) else c for c in props.get("choices", [])]
    out = []
    if props.get("value") != SD15_ATTN or choices[:1] != [SD15_ATTN]:
        out.append(f"the panel starts on {props.get('value')!r} with {choices[:1]} first on an SD1.5 checkpoint")
    # the dropdown users see: current Forge's "model_selection" one (it also keeps a settings
    # component of that elem_id), else early Forge's and Neo's setting_sd_model_checkpoint
    dropdown = next((c for c in components if c.get("props", {}).get("label") == "Checkpoint"
                     and "model_selection" in (c["props"].get("elem_classes") or [])),
                    None) or by_elem.get("setting_sd_model_checkpoint")
    if dropdown is None:
        out.append("no checkpoint dropdown found in /config")
    elif not _dependencies_between(config, dropdown["id"], method["id"]):
        out.append("the method dropdown does not follow the checkpoint dropdown")
    if "setting_layerdiffuse_preview" not in by_elem:
        out.append("no Settings -> LayerDiffuse components in /config")
    if "extras_layerdiffuse_cutout" not in by_elem:
        out.append("no LayerDiffuse cutout accordion in the Extras tab")
    images, info = _generate(url, [True], save=False)  # the API fills the method in from the panel
    if "layerdiffusion_method: (SD1.5) Only Generate" not in (info.get("infotexts") or [""])[0] \
            or not image_stats(images[0]).real_alpha:
        out.append(f"a call with only [True] did not run SD1.5 fg-only: {(info.get('infotexts') or [''])[0][-200:]}")
    context["detail"] = "starts on SD1.5 fg-only; follows the checkpoint dropdown; [True] runs it"
    return out


CHECKS: list[tuple[str, Callable[[str, dict], list[str]]]] = [
    ("REST methods and weights", check_routes),
    ("REST cutout of base64 images, errors by field", check_cutout_images),
    ("Extras batch from directory (REST input_dir)", check_extras_folder),
    ("Extras batch as JPEG, PNG copies", check_extras_jpeg),
    ("WebUI's own extra-single-image and extra-batch-images still work", check_webui_extras_api),
    ("Settings -> LayerDiffuse at call time", check_settings),
    ("Panel defaults follow the checkpoint", check_panel_defaults),
]


def run_checks(url: str, root: Path, outputs: Path, restoration) -> list[Check]:
    checks = []
    for name, fn in CHECKS:
        context = {"root": root, "outputs": outputs, "detail": ""}
        check = Check(name)
        start = time.monotonic()
        try:
            check.failures = fn(url, context)
        except Exception as exc:  # a check that cannot finish fails, the others still run
            check.failures = [f"{type(exc).__name__}: {exc}"]
        check.seconds = time.monotonic() - start
        check.detail = context["detail"]
        check.restored = restoration.check()
        if check.restored != "same":
            check.failures.append(f"the plain call after it: {check.restored}")
        checks.append(check)
        print(f"[forge-rig] convention: {name}: {'ok' if not check.failures else check.failures}", flush=True)
    return checks


def table(checks: list[Check]) -> str:
    rows = ["| Convention | s | What came back | Plain call after | Expectations |", "|---|---|---|---|---|"]
    for c in checks:
        verdict = "ok" if not c.failures else "FAILED: " + " / ".join(c.failures)
        rows.append(f"| {c.name} | {c.seconds:.0f} | {c.detail} | {c.restored} | {verdict} |")
    return "\n".join(rows)

