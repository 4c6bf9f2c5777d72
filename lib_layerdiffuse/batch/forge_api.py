"""A running Forge as the batch runner's engine: each item is one call of Forge's HTTP API
(txt2img, or img2img with an init image) with LayerDiffuse's named script arguments, and the
images come back as a `LayerResult`, so the manifest, alpha checks and exports are the same as
on diffusers. The checkpoint is the job's `model` (Forge's checkpoint name or title; "forge"
keeps the one Forge has loaded). A native-RGBA method (Qwen-Image-2.1, which Forge Neo runs
with its own engine) is sent without LayerDiffuse, and the RGBA images Forge returns are kept."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any, Optional

import numpy as np
import requests
from PIL import Image

from ..engine.outputs import LayerImage, LayerResult
from ..images import to_rgba_uint8
from ..methods import Method

CURRENT_MODEL = "forge"  # a job model that keeps Forge's loaded checkpoint
SCRIPT = "LayerDiffuse"


def _png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _infotext_value(text: str, key: str) -> Optional[str]:
    """One value of an infotext's parameter line; Forge quotes values holding commas as JSON."""
    match = re.search(rf'(?:^|, ){re.escape(key)}: ("(?:[^"\\]|\\.)*"|[^,]*)', text, re.M)
    if match is None:
        return None
    value = match.group(1)
    return json.loads(value) if value.startswith('"') else value


class ForgeEngine:
    """`generate(...)` as `LayerDiffuse.generate` takes it, run by the Forge at `url`."""

    family = None  # Forge knows its model's family; items are sent one at a time

    def __init__(self, url: str, model: str = CURRENT_MODEL, timeout: float = 3600.0):
        self.url, self.model, self.timeout = url.rstrip("/"), model, timeout

    def generate(self, prompt: str, method: Optional[str] = None, *, seed: int, negative_prompt: str = "",
                 steps: Optional[int] = None, cfg: Optional[float] = None, width: Optional[int] = None,
                 height: Optional[int] = None, sampler: Optional[str] = None, weight: float = 1.0,
                 stop_at: float = 1.0, strength: float = 0.7, fg_prompt: str = "", bg_prompt: str = "",
                 blend_prompt: str = "", fg=None, bg=None, blend=None, init_image=None) -> LayerResult:
        if not method:
            raise ValueError("running a job through Forge needs a method for every item (method = ... in the "
                             "job file): Forge's loaded model decides the family, not the job")
        parsed = Method.parse(method)
        spec = parsed.spec
        layer: dict[str, Any] = {"enabled": True, "method": parsed.value, "weight": weight, "stop_at": stop_at,
                                 "fg_prompt": fg_prompt, "bg_prompt": bg_prompt, "blend_prompt": blend_prompt}
        for name, image in (("fg_image", fg), ("bg_image", bg), ("blend_image", blend)):
            if image is not None:
                layer[name] = _png_base64(to_rgba_uint8(image, name))
        payload: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "batch_size": spec.frame_count,
            "send_images": True, "save_images": False}
        if not parsed.family.native_rgba:  # the host's own engine makes RGBA: LayerDiffuse stays off
            payload["alwayson_scripts"] = {SCRIPT: {"args": [layer]}}
        for key, value in (("steps", steps), ("cfg_scale", cfg), ("width", width), ("height", height),
                           ("sampler_name", sampler)):
            if value is not None:
                payload[key] = value
        if self.model and self.model != CURRENT_MODEL:
            payload["override_settings"] = {"sd_model_checkpoint": self.model}
        endpoint = "txt2img"
        if init_image is not None:
            endpoint = "img2img"
            payload.update(init_images=[_png_base64(to_rgba_uint8(init_image, "init"))], denoising_strength=strength)
        return self._result(self._post(endpoint, payload), parsed, seed)

    def _post(self, endpoint: str, payload: dict) -> dict:
        url = f"{self.url}/sdapi/v1/{endpoint}"
        try:
            reply = requests.post(url, json=payload, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RuntimeError(f"Forge at {self.url} did not answer ({type(exc).__name__}); is it running with "
                               "--api?") from None
        if reply.status_code != 200:
            raise RuntimeError(f"Forge answered HTTP {reply.status_code} to {endpoint}: {reply.text[:300]}")
        return reply.json()

    @staticmethod
    def _result(body: dict, method: Method, seed: int) -> LayerResult:
        info = body.get("info") or "{}"
        info = json.loads(info) if isinstance(info, str) else info
        infotexts = info.get("infotexts") or [""]
        for text in infotexts:
            error = _infotext_value(text, "layerdiffusion_error")
            if error is not None:
                raise RuntimeError(f"Forge's LayerDiffuse refused the item: {error}")
        spec = method.spec
        images = [Image.open(io.BytesIO(base64.b64decode(b.split(",", 1)[-1]))) for b in body.get("images") or []]
        # Forge sends the main images first, then extras (LayerDiffuse's opaque originals), and a
        # grid before everything when it made several images (then the first is larger)
        grid = spec.frame_count > 1 and len(images) > spec.frame_count and images[0].size != images[1].size
        images = images[1:] if grid else images
        images = images[:spec.frame_count]
        if len(images) < spec.frame_count:
            raise RuntimeError(f"Forge sent {len(images)} images, {method.value} makes {spec.frame_count}")
        out = []
        for i, image in enumerate(images):
            image.load()
            transparent = i in spec.transparent
            if transparent and image.mode != "RGBA":
                why = (f"does this WebUI's {method.family.label} engine return RGBA (Forge Neo with its RGBA VAE)?"
                       if method.family.native_rgba else "is the LayerDiffuse extension installed and enabled there?")
                raise RuntimeError(f"Forge sent the transparent {spec.frames[i]} image without alpha ({image.mode}); "
                                   + why)
            out.append(LayerImage(image, spec.frames[i], transparent, image.convert("RGB"), index=i))
        return LayerResult(out, method, seed, infotexts[0])
