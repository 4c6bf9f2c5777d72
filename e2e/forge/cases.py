"""The matrix the rig runs through Forge's HTTP API, and what each case must show.

Every case is one API call. What is measured: HTTP status, seconds, the images in the
response (mode and alpha), the files Forge saved during the call (mode and alpha), the
infotext, and tracebacks in the server log during the call.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import requests
from PIL import Image

SD15_ATTN = "(SD1.5) Only Generate Transparent Image (Attention Injection)"
SD15_FG_TO_BG = "(SD1.5) From Foreground to Background (need batch size 2)"
SD15_BG_TO_FG = "(SD1.5) From Background to Foreground (need batch size 2)"
SD15_JOINT = "(SD1.5) Generate Everything Together (need batch size 3)"
SDXL_ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
SDXL_CONV = "(SDXL) Only Generate Transparent Image (Conv Injection)"
SDXL_FG_TO_BLEND = "(SDXL) From Foreground to Blending"
SDXL_FG_BLEND_TO_BG = "(SDXL) From Foreground and Blending to Background"
SDXL_BG_TO_BLEND = "(SDXL) From Background to Blending"
SDXL_BG_BLEND_TO_FG = "(SDXL) From Background and Blending to Foreground"
FLUX_FG = "(Flux) Only Generate Transparent Image"
BASE = {"prompt": "a glass cup", "negative_prompt": "", "steps": 2, "cfg_scale": 7, "seed": 1234,
        "sampler_name": "Euler", "scheduler": "Automatic", "width": 512, "height": 512, "batch_size": 1,
        "save_images": True, "send_images": True}


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def condition_image(kind: str) -> str:
    """A condition image: an RGBA disc (foreground) or an opaque gradient (background)."""
    y, x = np.mgrid[0:512, 0:512]
    if kind == "fg":
        rgba = np.zeros((512, 512, 4), np.uint8)
        inside = (x - 256) ** 2 + (y - 256) ** 2 < 160 ** 2
        rgba[inside] = (200, 60, 40, 255)
        return png_base64(Image.fromarray(rgba, "RGBA"))
    rgb = np.stack([x // 2, y // 2, np.full_like(x, 128)], -1).astype(np.uint8)
    return png_base64(Image.fromarray(rgb, "RGB"))


def flat_image(rgba: bool) -> str:
    if rgba:
        image = np.zeros((512, 512, 4), np.uint8)
        image[128:384, 128:384] = (40, 120, 220, 255)
        return png_base64(Image.fromarray(image, "RGBA"))
    return png_base64(Image.new("RGB", (512, 512), (70, 160, 90)))


def layer_args(method: str, **fields: Any) -> list:
    """Positional LayerDiffuse args in the UI's order (enabled, method, weight, stop at, fg, bg,
    blend images, resize mode, output origin, fg / bg / blend prompts)."""
    values = {"weight": 1.0, "stop_at": 1.0, "fg": None, "bg": None, "blend": None,
              "resize_mode": "Crop and Resize", "output_origin": False, "fg_prompt": "", "bg_prompt": "",
              "blend_prompt": ""}
    values.update(fields)
    return [True, method, values["weight"], values["stop_at"], values["fg"], values["bg"], values["blend"],
            values["resize_mode"], values["output_origin"], values["fg_prompt"], values["bg_prompt"],
            values["blend_prompt"]]


@dataclass
class Case:
    name: str
    payload: dict
    endpoint: str = "txt2img"
    transparent: int = 0  # main images that must come back RGBA with the decoder's alpha
    varied_alpha: bool = True  # that alpha has 3+ values; off: any decoder alpha, a constant one too
    images: Optional[int] = None  # main images expected (batch size when None)
    layer: bool = True  # the infotext has the layerdiffusion_* keys
    refused: Optional[str] = None  # text the error in the infotext must contain; a traceback is allowed
    options: dict = field(default_factory=dict)  # Forge settings for this case, restored after it
    extra: Optional[Callable[["Result"], list[str]]] = None  # more checks: failures as text
    chain: bool = False  # the next case follows at once: no plain restoration call in between
    same_as: Optional[str] = None  # an earlier case whose main images these must equal, bit for bit
    differs_from: Optional[str] = None  # an earlier case whose first main image this one must not equal


@dataclass
class ImageStats:
    mode: str
    size: tuple[int, int]
    alpha_values: int = 0  # distinct alpha values (0 for images without alpha)
    alpha_min: int = 255
    alpha_mean: float = 255.0
    digest: str = ""  # of the pixels (mode, size, bytes)
    rgb_digest: str = ""  # of the RGB channels alone
    parameters: bool = False  # a 'parameters' PNG text chunk

    @property
    def real_alpha(self) -> bool:
        """Alpha from a decoder, not only the {254, 255} that stealth infotext writes."""
        return self.mode == "RGBA" and self.alpha_values > 2 and self.alpha_min < 254

    def short(self) -> str:
        if self.mode != "RGBA":
            return f"{self.mode} {self.size[0]}x{self.size[1]}"
        return (f"RGBA {self.size[0]}x{self.size[1]} a:{self.alpha_values}v "
                f"min {self.alpha_min} mean {self.alpha_mean:.0f}")


def _digest(*parts: Any) -> str:
    return hashlib.sha1(b"|".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)).hexdigest()[:16]


def image_stats(image: Image.Image) -> ImageStats:
    stats = ImageStats(image.mode, image.size, digest=_digest(image.mode, image.size, image.tobytes()),
                       rgb_digest=_digest(image.size, image.convert("RGB").tobytes()),
                       parameters="parameters" in image.info)
    if image.mode == "RGBA":
        alpha = np.asarray(image)[..., 3]
        stats.alpha_values, stats.alpha_min = len(np.unique(alpha)), int(alpha.min())
        stats.alpha_mean = float(alpha.mean())
    return stats


@dataclass
class Result:
    case: Case
    http: int
    seconds: float
    response: list[ImageStats]
    main: list[ImageStats]  # the response's main images (grid and extras left out)
    saved: list[tuple[str, ImageStats]]
    info: dict
    tracebacks: int
    log_errors: list[str]
    notes: list[str] = field(default_factory=list)  # what LayerDiffuse told the user in the log
    failures: list[str] = field(default_factory=list)
    restored: str = "-"  # what the plain call after the case (or its chain) showed
    log: str = ""  # Forge's console during the call
    peak_gb: float = 0.0  # Forge's peak resident memory so far, after the case

    @property
    def cutout_refusal(self) -> Optional[str]:
        """Why the cutout kept an image as it was, when it said so in the log."""
        return next((n.split(": ", 1)[-1] for n in self.notes if "was not cut out: " in n), None)

    @property
    def infotext(self) -> str:
        texts = self.info.get("infotexts") or []
        return texts[0] if texts else ""


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))
    image.load()
    return image


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")}


def run_case(case: Case, url: str, server, outputs: Path, earlier: Optional[dict[str, Result]] = None) -> Result:
    for key, value in case.options.items():
        requests.post(f"{url}/sdapi/v1/options", json={key: value}, timeout=60).raise_for_status()
    before, offset = _files(outputs) if outputs.exists() else set(), server.log_size()
    start = time.monotonic()
    reply = requests.post(f"{url}/sdapi/v1/{case.endpoint}", json=case.payload, timeout=3600)
    seconds = time.monotonic() - start
    log_text = server.log_since(offset)
    body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
    images = [_decode(b) for b in body.get("images") or []]
    info = body.get("info")
    info = json.loads(info) if isinstance(info, str) else (info or {"error": body})
    total = case.payload.get("batch_size", 1) * case.payload.get("n_iter", 1)
    # a grid first when a call makes more than one image; main images then come before the extras
    skip = 1 if total > 1 and images and images[0].size[0] > case.payload.get("width", 512) * 1.5 else 0
    response = [image_stats(i) for i in images]
    main = response[skip:skip + total]
    saved = []
    for path in sorted(_files(outputs) - before) if outputs.exists() else []:
        with Image.open(path) as image:
            saved.append((path.name, image_stats(image)))
    lines = log_text.splitlines()
    errors = [line.strip() for line in lines if "Error" in line and not line.lstrip().startswith("File ")]
    # Neo's progress bars leave cursor moves in front of a line: find the marker anywhere
    notes = [line[line.index("[LayerDiffuse]"):].strip() for line in lines if "[LayerDiffuse]" in line]
    result = Result(case, reply.status_code, seconds, response, main, saved, info,
                    log_text.count("Traceback (most recent call last)"), errors[:3], notes)
    result.log = log_text
    result.failures = expectations(result, earlier)
    for key in case.options:
        restore = DEFAULT_OPTIONS.get(key)
        if restore is not None:
            requests.post(f"{url}/sdapi/v1/options", json={key: restore}, timeout=60)
    return result


DEFAULT_OPTIONS = {"samples_format": "png", "stealth_pnginfo_option": "Alpha", "enable_pnginfo": True}


def expectations(r: Result, earlier: Optional[dict[str, Result]] = None) -> list[str]:
    c, out = r.case, []
    if r.http != 200:
        return [f"HTTP {r.http}: {str(r.info)[:200]}"]
    wanted = c.images if c.images is not None else c.payload.get("batch_size", 1) * c.payload.get("n_iter", 1)
    if len(r.main) < wanted:
        out.append(f"{len(r.main)} main images in the response, expected {wanted}")
    decoded = (lambda s: s.real_alpha) if c.varied_alpha else (lambda s: s.mode == "RGBA" and s.alpha_min < 254)
    real = [s for s in r.main if decoded(s)]
    if len(real) < c.transparent:
        out.append(f"{len(real)} of {len(r.main)} response images have real alpha, expected {c.transparent}")
    saved_real = [s for _, s in r.saved if decoded(s)]
    if len(saved_real) < c.transparent:
        out.append(f"{len(saved_real)} saved files have real alpha, expected {c.transparent}")
    error = f"layerdiffusion_error: {c.refused}" if c.refused else None
    if c.refused:
        if c.refused not in r.infotext:
            out.append(f"the infotext does not carry the refusal ({c.refused!r})")
    else:
        if "layerdiffusion_error" in r.infotext:
            start = r.infotext.index("layerdiffusion_error")
            out.append(r.infotext[start:start + 200])
        if r.tracebacks:
            out.append(f"{r.tracebacks} traceback(s) in the log: {' | '.join(r.log_errors)[:300]}")
    if c.layer and "layerdiffusion_method" not in r.infotext and error is None:
        out.append("no layerdiffusion_* keys in the infotext")
    if not c.layer and not c.refused and "layerdiffusion_method" in r.infotext:
        out.append("layerdiffusion_* keys in the infotext of a call without LayerDiffuse")
    if c.extra is not None:
        out.extend(c.extra(r))
    earlier = earlier or {}
    if c.same_as and c.same_as in earlier:
        if [s.digest for s in r.main] != [s.digest for s in earlier[c.same_as].main]:
            out.append(f"the images differ from those of {c.same_as!r} (same settings)")
    if c.differs_from and c.differs_from in earlier and r.main and earlier[c.differs_from].main:
        if r.main[0].rgb_digest == earlier[c.differs_from].main[0].rgb_digest:
            out.append(f"the image equals that of {c.differs_from!r}: the LoRA had no effect")
    return out


def _payload(**overrides: Any) -> dict:
    payload = dict(BASE)
    scripts = overrides.pop("scripts", None)
    payload.update(overrides)
    if scripts is not None:
        payload["alwayson_scripts"] = {"LayerDiffuse": {"args": scripts}}
    return payload


def _saved_jpg_and_png(r: Result) -> list[str]:
    kinds = {Path(name).suffix.lower() for name, _ in r.saved}
    png_alpha = any(s.real_alpha for name, s in r.saved if name.lower().endswith(".png"))
    if {".jpg", ".png"} <= kinds and png_alpha:
        return []
    return [f"saved {sorted(kinds)}, expected a .jpg and a .png with real alpha"]


def _hires_size(r: Result) -> list[str]:
    sizes = {s.size for s in r.main}
    return [] if sizes == {(576, 576)} else [f"hires result sizes {sorted(sizes)}, expected 576x576"]


def _weight_recorded(expected: str) -> Callable[[Result], list[str]]:
    def check(r: Result) -> list[str]:
        return [] if expected in r.infotext else [f"{expected!r} not in the infotext"]
    return check


def _cutout_ran(r: Result) -> list[str]:
    """The cutout ran: the image came back with real alpha, or it was kept with the reason
    (random weights make img2img output noise, which the weight-free cutout may refuse)."""
    if "layerdiffusion_cutout" not in r.infotext:
        return ["no layerdiffusion_cutout key in the infotext"]
    if (r.main and r.main[0].real_alpha) or r.cutout_refusal:
        return []
    return [f"the cutout's image is {r.main[0].short() if r.main else 'missing'}, without real alpha "
            "and without a reason in the log"]


def _local_model_ran(r: Result) -> list[str]:
    """The cutout ran the ONNX file from models/u2net: real alpha, or no subject in the noise
    that random weights make (anything else, such as a missing file, is a failure)."""
    failures = _cutout_ran(r)
    if r.cutout_refusal and not r.cutout_refusal.startswith("no subject found"):
        failures.append(f"the local model did not run: {r.cutout_refusal[:200]}")
    if "local:BiRefNet-rig.onnx" not in r.infotext:
        failures.append("the infotext does not name local:BiRefNet-rig.onnx")
    return failures


def matrix(controlnet: Optional[str] = None, stealth: bool = True, upscaler: str = "Latent") -> list[Case]:
    """The cases, plain call first (the baseline every ratio is measured against); the
    combination cases last. `upscaler`: the hires fix's (Neo has no latent upscalers: "None")."""
    fg, bg = condition_image("fg"), condition_image("bg")
    cases = [
        Case("plain txt2img (LayerDiffuse off)", _payload(), layer=False),
        Case("SD1.5 fg-only, batch 1", _payload(scripts=layer_args(SD15_ATTN)), transparent=1),
        Case("SD1.5 fg-only, batch 2", _payload(batch_size=2, scripts=layer_args(SD15_ATTN)), transparent=2),
        Case("SD1.5 fg->bg (fg image), batch 2",
             _payload(batch_size=2, scripts=layer_args(SD15_FG_TO_BG, fg=fg)), transparent=0),
        Case("SD1.5 bg->fg (bg image), batch 2",
             _payload(batch_size=2, scripts=layer_args(SD15_BG_TO_FG, bg=bg)), transparent=1),
        Case("SD1.5 joint, batch 3, layer prompts",
             _payload(batch_size=3, scripts=layer_args(SD15_JOINT, fg_prompt="a cat", bg_prompt="a room",
                                                       blend_prompt="a cat in a room")), transparent=1),
        Case("SD1.5 fg-only, 520x512", _payload(width=520, scripts=layer_args(SD15_ATTN)), transparent=1),
        Case("null prompts", _payload(scripts=layer_args(SD15_ATTN, fg_prompt=None, bg_prompt=None,
                                                         blend_prompt=None)), transparent=1),
        Case("short args [true, method]", _payload(scripts=[True, SD15_ATTN]), transparent=1),
        Case("unprefixed (old) method name",
             _payload(scripts=[True, "Only Generate Transparent Image (Attention Injection)"]), transparent=1),
        Case("member name FG_ONLY_ATTN_SD15", _payload(scripts=[True, "FG_ONLY_ATTN_SD15"]), transparent=1),
        Case("named args [{method, weight}]",
             _payload(scripts=[{"enabled": True, "method": "FG_ONLY_ATTN_SD15", "weight": 0.8}]), transparent=1,
             extra=_weight_recorded("layerdiffusion_weight: 0.8")),
        Case("SDXL method on SD1.5 (refused)", _payload(scripts=[True, SDXL_ATTN]), refused="SDXL", layer=False),
        Case("Weight 0, Stop At 0.5", _payload(scripts=layer_args(SD15_ATTN, weight=0.0, stop_at=0.5)),
             transparent=1, extra=_weight_recorded("layerdiffusion_weight: 0")),
        Case(f"hires fix ({upscaler}) 1.125x, fg-only",
             # current Forge's API leaves hr_additional_modules None and its hires pass then fails
             _payload(enable_hr=True, hr_scale=1.125, hr_upscaler=upscaler, hr_second_pass_steps=1,
                      denoising_strength=0.6, hr_additional_modules=["Use same choices"], scripts=layer_args(SD15_ATTN)), transparent=1, extra=_hires_size),
        Case("RGBA img2img, fg-only",
             _payload(init_images=[flat_image(rgba=True)], denoising_strength=0.7, scripts=layer_args(SD15_ATTN)),
             endpoint="img2img", transparent=1),
        Case("cutout weight-free on img2img of a flat image",
             _payload(init_images=[flat_image(rgba=False)], denoising_strength=0.3,
                      scripts=[{"cutout": True, "cutout_model": "weight-free"}]),
             endpoint="img2img", layer=False, extra=_cutout_ran),
        Case("cutout local:BiRefNet-rig.onnx (models/u2net) on img2img",
             _payload(init_images=[flat_image(rgba=False)], denoising_strength=0.3,
                      scripts=[{"cutout": True, "cutout_model": "local:BiRefNet-rig.onnx"}]),
             endpoint="img2img", layer=False, extra=_local_model_ran),
        # the API encodes its images in the output format, so only the saved PNG copy has alpha
        Case("JPEG output format, fg-only", _payload(scripts=layer_args(SD15_ATTN)), transparent=0,
             options={"samples_format": "jpg"}, extra=_saved_jpg_and_png),
    ]
    return cases + combinations(controlnet, stealth)


LORA_A, LORA_B = "rig-lora-a", "rig-lora-b"  # lora_files.write_kohya_lora, in models/Lora
OTHER_SD15 = "rig-random-sd15-other.safetensors"  # a second random SD1.5 checkpoint


def _lora(name: str, weight: float = 1.0) -> str:
    return f"{BASE['prompt']} <lora:{name}:{weight:g}>"


def _saved_as_returned(parameters: bool) -> Callable[[Result], list[str]]:
    """The saved main PNG is the returned image, bit for bit, with the decoder's alpha; its PNG
    text has the parameters exactly when Forge writes PNG info."""
    def check(r: Result) -> list[str]:
        files = [(n, s) for n, s in r.saved if n.lower().endswith(".png") and not n.startswith("grid")]
        if len(files) != 1 or not r.main:
            return [f"expected one saved PNG and a main image, got {[n for n, _ in r.saved]}"]
        name, stats = files[0]
        out = []
        if stats.digest != r.main[0].digest:
            out.append(f"{name} differs from the returned image")
        if stats.parameters != parameters:
            out.append(f"{name} {'lacks' if parameters else 'has'} the parameters text")
        return out
    return check


def _grid_transparent(r: Result) -> list[str]:
    """The grid (first in the response) and the saved grid PNG have the images' alpha."""
    out = []
    grid = r.response[0] if len(r.response) > len(r.main) else None
    if grid is None or not grid.real_alpha:
        out.append(f"the returned grid is {grid.short() if grid else 'missing'}, without real alpha")
    # a grid saved as JPEG/WebP (Neo's default) has its transparent copy as "-transparent.png"
    files = [s for n, s in r.saved if n.startswith("grid") and n.lower().endswith(".png")]
    if not files or not all(s.real_alpha for s in files):
        out.append(f"the saved grid PNG is {files[0].short() if files else 'missing'}, without real alpha")
    return out


def _controlnet_ran(r: Result) -> list[str]:
    return [] if "Current ControlNet" in r.log else ["Forge's log does not show the ControlNet unit running"]


def controlnet_unit(model: str) -> dict:
    """One unit of Forge's built-in ControlNet, as its API takes it: the model by its listed
    name ("name [short hash]"), no preprocessor, the condition image as base64."""
    return {"enabled": True, "module": "None", "model": model, "weight": 1.0, "image": condition_image("bg"),
            "resize_mode": "Crop and Resize", "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False}


def combinations(controlnet: Optional[str] = None, stealth: bool = True) -> list[Case]:
    """What users combine with LayerDiffuse: user LoRAs whose set changes between calls (with
    every SD1.5 method), a switch to another SD1.5 checkpoint and back, every stealth-infotext
    and PNG-info setting (`stealth`: the host has stealth infotext), batch count 2 with the grid,
    and (given its listed name) one unit of Forge's built-in ControlNet. The rig makes a plain
    call after every case (or chain of cases) and compares it with one made before any
    LayerDiffuse call."""
    fg, bg = condition_image("fg"), condition_image("bg")
    fg_only = layer_args(SD15_ATTN)
    stealth_cases = [
        Case("stealth infotext RGB, fg-only", _payload(scripts=fg_only), transparent=1,
             options={"stealth_pnginfo_option": "RGB"}, extra=_saved_as_returned(parameters=True)),
        Case("stealth infotext None, fg-only", _payload(scripts=fg_only), transparent=1,
             options={"stealth_pnginfo_option": "None"}, extra=_saved_as_returned(parameters=True),
             same_as="SD1.5 fg-only, batch 1"),
        Case("stealth infotext Alpha, fg-only", _payload(scripts=fg_only), transparent=1,
             extra=_saved_as_returned(parameters=True), same_as="SD1.5 fg-only, batch 1"),
    ]
    return [
        Case("LoRA A, plain", _payload(prompt=_lora(LORA_A)), layer=False, chain=True),
        Case("fg-only, LoRA A in the call before", _payload(scripts=fg_only), transparent=1,
             same_as="SD1.5 fg-only, batch 1"),
        Case("fg-only + LoRA A", _payload(prompt=_lora(LORA_A), scripts=fg_only), transparent=1,
             differs_from="SD1.5 fg-only, batch 1"),
        Case("fg-only + LoRA A at 0.5", _payload(prompt=_lora(LORA_A, 0.5), scripts=fg_only), transparent=1,
             chain=True, differs_from="fg-only + LoRA A"),
        Case("fg-only + LoRA A at 1.0 (0.5 before)", _payload(prompt=_lora(LORA_A), scripts=fg_only), transparent=1,
             chain=True, same_as="fg-only + LoRA A"),
        Case("fg-only + LoRA B (A before)", _payload(prompt=_lora(LORA_B), scripts=fg_only), transparent=1,
             differs_from="fg-only + LoRA A"),
        Case("fg->bg + LoRA A, batch 2", _payload(prompt=_lora(LORA_A), batch_size=2,
                                                  scripts=layer_args(SD15_FG_TO_BG, fg=fg))),
        Case("bg->fg + LoRA A, batch 2", _payload(prompt=_lora(LORA_A), batch_size=2,
                                                  scripts=layer_args(SD15_BG_TO_FG, bg=bg)), transparent=1),
        Case("LoRA B, plain", _payload(prompt=_lora(LORA_B)), layer=False, chain=True),
        Case("joint + LoRA A, batch 3 (B before)", _payload(prompt=_lora(LORA_A), batch_size=3,
                                                            scripts=layer_args(SD15_JOINT)), transparent=1),
        Case("fg-only + LoRA A on another SD1.5 checkpoint", _payload(
            prompt=_lora(LORA_A), scripts=fg_only, override_settings={"sd_model_checkpoint": OTHER_SD15}),
            transparent=1, differs_from="fg-only + LoRA A"),
        Case("fg-only, first checkpoint again", _payload(scripts=fg_only), transparent=1,
             same_as="SD1.5 fg-only, batch 1"),
        Case("PNG info off, fg-only", _payload(scripts=fg_only), transparent=1,
             options={"enable_pnginfo": False}, extra=_saved_as_returned(parameters=False),
             same_as="SD1.5 fg-only, batch 1"),
        Case("batch count 2 with the grid, fg-only", _payload(n_iter=2, scripts=fg_only), transparent=2,
             extra=_grid_transparent),
    ] + (stealth_cases if stealth else []) + ([] if controlnet is None else [
        Case("fg-only + ControlNet (one unit)", _with_script(_payload(scripts=fg_only), "ControlNet",
                                                             [controlnet_unit(controlnet)]),
             transparent=1, differs_from="SD1.5 fg-only, batch 1", extra=_controlnet_ran),
    ])


def _with_script(payload: dict, title: str, args: list) -> dict:
    payload["alwayson_scripts"] = {**payload.get("alwayson_scripts", {}), title: {"args": args}}
    return payload


SDXL_LORA = "rig-lora-xl"  # lora_files.write_kohya_lora for SDXL's UNet, in models/Lora


def sdxl_matrix(layer_methods: bool = False) -> list[Case]:
    """The SDXL cases (a random SDXL checkpoint), plain call first: attention injection with
    batch 1 and 2, RGBA img2img (the transparent encoder) and a user LoRA before, with and
    after attention injection (the LoRA and the injection patch the same projections). With
    `layer_methods` also the four layer methods (their conv_in widened to 8 or 12 channels) and
    conv injection (a diff of 1.8 G parameters: the most weight memory any method needs), last."""
    fg, bg = condition_image("fg"), condition_image("bg")
    blend = flat_image(rgba=False)
    attention = layer_args(SDXL_ATTN)
    layers = [
        Case("SDXL fg->blend (fg image), batch 2", _payload(batch_size=2, scripts=layer_args(
            SDXL_FG_TO_BLEND, fg=fg))),
        Case("SDXL fg+blend->bg (fg and blend images)", _payload(scripts=layer_args(
            SDXL_FG_BLEND_TO_BG, fg=fg, blend=blend))),
        Case("SDXL bg->blend (bg image)", _payload(scripts=layer_args(SDXL_BG_TO_BLEND, bg=bg))),
        Case("SDXL bg+blend->fg (bg and blend images)", _payload(scripts=layer_args(
            SDXL_BG_BLEND_TO_FG, bg=bg, blend=blend)), transparent=1),
        Case("SDXL conv injection, batch 1", _payload(scripts=layer_args(SDXL_CONV)), transparent=1),
    ]
    return [
        Case("SDXL plain txt2img (LayerDiffuse off)", _payload(), layer=False),
        Case("SDXL attention injection, batch 1", _payload(scripts=attention), transparent=1),
        Case("SDXL attention injection, batch 2", _payload(batch_size=2, scripts=attention), transparent=2),
        # the rig's random offset encoder moves the latents far (|offset| x 300 in the thousands) and
        # the random SDXL decoder then answers alpha 0 everywhere: a constant alpha is that decoder's
        Case("SDXL RGBA img2img, attention injection",
             _payload(init_images=[flat_image(rgba=True)], denoising_strength=0.7, scripts=attention),
             endpoint="img2img", transparent=1, varied_alpha=False),
        Case("SD1.5 method on SDXL (refused)", _payload(scripts=[True, SD15_ATTN]), refused="SD1.5", layer=False),
        Case("SDXL LoRA, plain", _payload(prompt=_lora(SDXL_LORA)), layer=False, chain=True),
        Case("SDXL attention, LoRA in the call before", _payload(scripts=attention), transparent=1,
             same_as="SDXL attention injection, batch 1"),
        Case("SDXL attention + LoRA", _payload(prompt=_lora(SDXL_LORA), scripts=attention), transparent=1,
             differs_from="SDXL attention injection, batch 1"),
    ] + (layers if layer_methods else [])


def flux_matrix(nan_with_automatic: bool = True) -> list[Case]:
    """The FLUX.1-dev cases (random GGUF transformer, fp8 T5), plain call first. 128x128: every
    size costs nearly the same on a CPU, where reading the 12B weights dominates. Scheduler
    Simple, as Forge's Flux preset sets it: with "Automatic", Euler on current Forge's Flux takes
    its sigmas from the predictor's 10000 pseudo-timesteps and starts at sigma 10000 (NaN latents
    even without LayerDiffuse: `nan_with_automatic`, where LayerDiffuse must name the scheduler);
    Forge Neo's does not, and the same call must give a transparent image there."""
    size = dict(width=128, height=128, cfg_scale=1, distilled_cfg_scale=3.5, scheduler="Simple")
    automatic = _payload(**{**size, "scheduler": "Automatic"}, scripts=layer_args(FLUX_FG))
    return [
        Case("Flux plain txt2img (LayerDiffuse off)", _payload(**size), layer=False),
        Case("Flux fg-only, batch 1", _payload(**size, scripts=layer_args(FLUX_FG)), transparent=1,
             extra=_weight_recorded("layerdiffusion_method: (Flux) Only Generate Transparent Image")),
        Case("Flux fg-only, batch 2", _payload(**size, batch_size=2, scripts=layer_args(FLUX_FG)), transparent=2),
        Case("Flux RGBA img2img, fg-only",
             _payload(**size, init_images=[flat_image(rgba=True)], denoising_strength=0.7, scripts=layer_args(FLUX_FG)),
             endpoint="img2img", transparent=1),
        Case("SD1.5 method on Flux (refused)", _payload(**size, scripts=[True, SD15_ATTN]), refused="SD1.5",
             layer=False),
        Case("Flux fg-only, scheduler Automatic (NaN, named)", automatic, extra=_names_scheduler)
        if nan_with_automatic else Case("Flux fg-only, scheduler Automatic", automatic, transparent=1),
    ]


def _names_scheduler(r: Result) -> list[str]:
    """Forge's own Flux sampling gives NaN here; LayerDiffuse must say what to change."""
    if any("set the scheduler to Simple" in n for n in r.notes):
        return []
    return [f"no note naming the scheduler in the log (notes: {r.notes[:2]})"]
