"""LayerDiffuse's own REST endpoints on the WebUI's FastAPI app (with `--api`, like `/sdapi/v1`).

- `POST /layerdiffuse/v1/cutout`: cut out base64 images (`image` or `images`) and return PNGs
  as base64, or (with `input_dir`) run the Extras tab's batch from a directory with the
  LayerDiffuse cutout, saving like Extras does, with a per-file error list;
- `GET /layerdiffuse/v1/methods`: the methods for the selected checkpoint's family (or
  `?family=sd15|sdxl|flux|all`), with what each one needs and whether its files are here;
- `GET /layerdiffuse/v1/weights`: every weight file: state, path, size (`?verify=true` hashes).

Bad input is answered with HTTP 4xx and `{"error": ..., "field": ...}`; a cutout backend that
cannot run (rembg missing, a model that will not load) with 503. The handlers are plain
functions of the request's JSON (tested without a server); `register` wires them into FastAPI,
behind the WebUI's `--api-auth` when it is set (the WebUI applies it only to its own routes).
"""

from __future__ import annotations

import base64
import inspect
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from PIL import Image

from ..cutout.options import CutoutSettings
from ..methods import Family, Method
from ..settings import name_key
from .checkpoint import checkpoint_family, selected_title

log = logging.getLogger("lib_layerdiffuse.forge")

PREFIX = "/layerdiffuse/v1"
REQUEST_FIELDS = ("image", "images", "input_dir", "output_dir", "return_mask", "return_preview")
MAX_IMAGES = 64


class RequestError(Exception):
    """Bad input: HTTP `status` with a message that names the field."""

    def __init__(self, status: int, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


# ---- POST /cutout ---------------------------------------------------------------------------

def _flag(body: Mapping, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(422, f"{name} must be true or false, got {value!r}", name)
    return value


def _settings(body: Mapping) -> CutoutSettings:
    named = {k: v for k, v in body.items() if k not in REQUEST_FIELDS}
    if isinstance(named.get("settings"), Mapping):  # also accepted nested
        named = {**{k: v for k, v in named.items() if k != "settings"}, **named["settings"]}
    try:
        return CutoutSettings.from_values({**named, "enabled": True})
    except (TypeError, ValueError) as exc:
        message = str(exc)
        fields = [f for f in CutoutSettings.field_names() if re.search(rf"\b{f}\b", message)]
        unknown = re.search(r"argument '([^']+)'", message)
        field = unknown.group(1) if unknown else (fields[0] if fields else "settings")
        raise RequestError(422, message, field) from None


def _decode(text: Any, field: str) -> Image.Image:
    if not isinstance(text, str) or not text.strip():
        raise RequestError(422, f"{field} must be a base64-encoded image (PNG, JPEG, WebP), optionally a data URL",
                           field)
    try:
        raw = base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=False)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except Exception as exc:
        raise RequestError(422, f"{field} is not a readable base64 image ({type(exc).__name__}: {exc})",
                           field) from None
    return image


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _images(body: Mapping) -> list[tuple[str, Image.Image]]:
    if "image" in body and "images" in body:
        raise RequestError(422, "give either image (one) or images (a list), not both", "images")
    if "image" in body:
        return [("image", _decode(body["image"], "image"))]
    items = body.get("images")
    if not isinstance(items, list) or not items:
        raise RequestError(422, "images must be a non-empty list of base64 images (or give image, or input_dir)",
                           "images")
    if len(items) > MAX_IMAGES:
        raise RequestError(413, f"images holds {len(items)} images; send at most {MAX_IMAGES} per request, "
                                "or put them in a folder and give input_dir", "images")
    return [(f"images[{i}]", _decode(item, f"images[{i}]")) for i, item in enumerate(items)]


def cutout(body: Any) -> dict:
    """`POST /cutout`: see the module docstring; the response lists one entry per image."""
    if not isinstance(body, Mapping):
        raise RequestError(422, "the request body must be a JSON object", "body")
    settings = _settings(body)
    if "input_dir" in body:
        return _cut_out_folder(body, settings)
    return_mask, return_preview = _flag(body, "return_mask"), _flag(body, "return_preview")
    images = _images(body)
    from ..cutout import CutoutError
    from ..cutout.rembg_backend import CutoutModelError, CutoutUnavailable
    from ..previews import preview
    from .extras import cut_out_or_keep

    results = []
    for field, image in images:
        try:
            result = cut_out_or_keep(image, settings)
        except CutoutError as exc:
            results.append({"field": field, "error": str(exc)})
            continue
        except (CutoutUnavailable, CutoutModelError) as exc:
            raise RequestError(503, str(exc), "model") from None
        entry = {"field": field, "image": _png(result.render()), "model": result.model, "notes": result.notes,
                 "parameters": result.parameters()}
        if return_mask:
            entry["mask"] = _png(Image.fromarray(result.mask(), "L"))
        if return_preview:
            entry["preview"] = _png(Image.fromarray(preview(result.rgba()), "RGB"))
        results.append(entry)
    return {"images": results, "settings": settings.to_infotext(), "output": settings.output.value}


def _other_script_args(script: Any) -> dict:
    """Arguments that leave another Extras script doing nothing: its own defaults, switched off
    where it has a switch, and no upscaling."""
    off = {"upscale_mode": 0, "upscale_by": 1.0, "max_side_length": 0, "upscaler_1_name": "None",
           "upscaler_2_name": "None", "upscaler_name": "None"}
    values = {}
    for name in getattr(script, "controls", None) or {}:
        param = inspect.signature(script.process).parameters.get(name)
        if "enable" in name:
            values[name] = False
        elif name in off:
            values[name] = off[name]
        elif param is not None and param.default is not inspect.Parameter.empty:
            values[name] = param.default
    return values


def _cut_out_folder(body: Mapping, settings: CutoutSettings) -> dict:
    """Extras' "Batch from directory" with the LayerDiffuse cutout, through the WebUI's own
    postprocessing run (its file naming, formats and saving)."""
    from modules import call_queue, postprocessing, scripts, shared  # the WebUI

    from . import extras

    if getattr(shared.cmd_opts, "hide_ui_dir_config", False):
        raise RequestError(403, "the WebUI runs with --hide-ui-dir-config, which forbids folder paths", "input_dir")
    folder = body.get("input_dir")
    if not isinstance(folder, str) or not Path(folder).is_dir():
        raise RequestError(422, f"input_dir must be a folder on the server, got {folder!r}", "input_dir")
    output_dir = body.get("output_dir") or ""
    if not isinstance(output_dir, str):
        raise RequestError(422, f"output_dir must be a folder path, got {output_dir!r}", "output_dir")
    runner = scripts.scripts_postproc
    ours = {"enable": True, **{k: v for k, v in settings.to_dict().items() if k != "enabled"}}
    named = {s.name: (ours if s.name == extras.NAME else _other_script_args(s))
             for s in runner.scripts_in_preferred_order()}
    if extras.NAME not in named:
        raise RequestError(503, "the LayerDiffuse cutout is switched off in Settings -> Postprocessing "
                                "('Disable postprocessing operations in Extras')", "input_dir")
    args = runner.create_args_for_run(named)
    fixed = [p for p in inspect.signature(postprocessing.run_postprocessing).parameters.values()
             if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "save_output"]
    head = [2, None, None, folder, output_dir, True] + [None] * (len(fixed) - 6)  # Neo: a video path
    with call_queue.queue_lock:
        outputs = postprocessing.run_postprocessing(*head, *args, save_output=True)[0]
    run = extras.last_run()
    saved = [str(getattr(image, "already_saved_as", "")) for image in outputs or []]
    failed = run.failed if run is not None else []
    return {"saved": [s for s in saved if s], "cut": run.cut if run is not None else 0,
            "errors": [{"file": name, "error": why} for name, why in failed], "output": settings.output.value}


# ---- GET /methods and /weights ---------------------------------------------------------------

def _family_query(query: Mapping) -> tuple[Optional[Family], bool]:
    """(family, all) from `?family=`; default the selected checkpoint's family."""
    text = str(query.get("family") or "").strip().casefold()
    if not text:
        family = checkpoint_family()
        return family, family is None
    if text == "all":
        return None, True
    for family in Family:
        if text in (family.value, name_key(family.label), family.name.casefold()) and not family.native_rgba:
            return family, False
    raise RequestError(422, f"unknown family {query.get('family')!r}; valid values are sd15, sdxl, flux, all",
                       "family")


def methods(query: Mapping) -> dict:
    """`GET /methods`."""
    from ..weights.store import USABLE, State
    from .settings_page import default_method
    from .unet_files import weight_store

    family, everything = _family_query(query)
    states = {s.entry.name: s.state for s in weight_store().statuses()}
    listed = [m for m in Method if not m.family.native_rgba and (everything or m.family is family)]
    out = []
    for m in listed:
        spec = m.spec
        files = [{"name": f, "state": states[f].value} for f in spec.weight_files]
        out.append({"name": m.name, "method": m.value, "family": m.family.value, "family_label": m.family.label,
                    "default": m is default_method(m.family), "transparent": bool(spec.transparent),
                    "conditions": list(spec.conditions), "prompts": list(spec.prompts),
                    "frames": list(spec.frames), "batch_multiple": spec.frame_count, "weight_files": files,
                    "ready": all(states[f] in (*USABLE, State.PRESENT) for f in spec.weight_files),
                    "licence": spec.licence or None})
    return {"checkpoint": selected_title(), "family": family.value if family else None, "methods": out}


def weights(query: Mapping) -> dict:
    """`GET /weights`."""
    from .unet_files import weight_store

    verify = str(query.get("verify") or "").strip().casefold()
    if verify not in ("", "true", "false", "1", "0"):
        raise RequestError(422, f"verify must be true or false, got {query.get('verify')!r}", "verify")
    store = weight_store()
    users: dict[str, list[str]] = {}
    for m in Method:
        for f in m.spec.weight_files:
            users.setdefault(f, []).append(m.name)
    files = []
    for status in store.statuses(verify=verify in ("true", "1")):
        entry, path = status.entry, status.path
        files.append({"name": entry.name, "family": entry.family.value, "role": entry.role,
                      "state": status.state.value, "detail": status.detail or None, "path": str(path),
                      "bytes": path.stat().st_size if path.is_file() else None,
                      "expected_bytes": entry.approx_size, "sha256": entry.sha256 or None, "url": entry.url,
                      "methods": users.get(entry.name, [])})
    return {"folder": str(store.folder), "folder_source": store.location.source,
            "allow_unpinned": store.allow_unpinned, "files": files}


# ---- FastAPI ------------------------------------------------------------------------------------

def _api_enabled() -> bool:
    cmd_opts = getattr(sys.modules.get("modules.shared"), "cmd_opts", None)
    return bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False))


def _auth() -> list:
    """The WebUI's `--api-auth` (user:password,...) as a FastAPI dependency, when it is set."""
    cmd_opts = getattr(sys.modules.get("modules.shared"), "cmd_opts", None)
    pairs = getattr(cmd_opts, "api_auth", None)
    if not pairs:
        return []
    import secrets

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    allowed = dict(pair.strip().split(":", 1) for pair in str(pairs).split(",") if ":" in pair)

    def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> None:
        password = allowed.get(credentials.username)
        if password is None or not secrets.compare_digest(credentials.password, password):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]


def _respond(handler: Callable[[Any], dict], argument: Any):
    from fastapi.responses import JSONResponse

    try:
        return JSONResponse(handler(argument))
    except RequestError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    except Exception as exc:  # a bug of ours: say so, in JSON, and keep the server up
        log.exception("[LayerDiffuse] %s failed", getattr(handler, "__name__", "endpoint"))
        return JSONResponse({"error": f"LayerDiffuse failed: {type(exc).__name__}: {exc}", "field": None},
                            status_code=500)


def register(_demo: Any, app: Any) -> None:
    """`script_callbacks.on_app_started` callback: add the routes when the WebUI serves its API."""
    if not _api_enabled():
        return
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    async def post_cutout(request: Request):
        try:
            body = await request.json()
        except Exception:
            return JSONResponse(RequestError(400, "the request body is not JSON", "body").body(), status_code=400)
        return await run_in_threadpool(_respond, _locked(cutout), body)

    async def get_methods(request: Request):
        return await run_in_threadpool(_respond, methods, dict(request.query_params))

    async def get_weights(request: Request):
        return await run_in_threadpool(_respond, weights, dict(request.query_params))

    for handler in (post_cutout, get_methods, get_weights):  # FastAPI reads the class, not this module's strings
        handler.__annotations__["request"] = Request
    auth = _auth()
    app.add_api_route(f"{PREFIX}/cutout", post_cutout, methods=["POST"], dependencies=auth)
    app.add_api_route(f"{PREFIX}/methods", get_methods, methods=["GET"], dependencies=auth)
    app.add_api_route(f"{PREFIX}/weights", get_weights, methods=["GET"], dependencies=auth)


def _locked(handler: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """`handler` run under the WebUI's queue lock (one GPU job at a time, like its own API);
    the folder run takes the lock itself around the WebUI's postprocessing."""
    def run(body: Any) -> dict:
        if isinstance(body, Mapping) and "input_dir" in body:
            return handler(body)
        from modules import call_queue  # the WebUI

        with call_queue.queue_lock:
            return handler(body)
    run.__name__ = handler.__name__
    return run
