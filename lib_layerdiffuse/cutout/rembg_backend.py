"""rembg as a cutout backend: imported lazily and guarded, one session per (model, file, providers).

What we take from rembg is the model zoo, its downloads and its per-model pre-processing
(`session.predict`); edges, colours and outputs are ours (`refine.py`, `result.py`). ONNX files
of the user's (`local:<name>` in the models folder, or "local file" by path) are run by
`local_onnx.py` with onnxruntime alone, through the same session cache. Guards:
- onnxruntime is checked before rembg is imported (rembg >= 2.0.71 calls `sys.exit` at import
  when it is missing, which would end the WebUI), and `SystemExit` is caught as well;
- rembg's models folder (`U2NET_HOME`, read by every rembg version) points at our models
  folder unless the user set it; built-in models missing with downloads off, failed downloads
  and files onnxruntime cannot load all give a message with the file, its URL and the path;
- the execution provider is chosen (CUDA, then ROCm, else CPU) and the one the session really
  got is reported, so a silent fall-back to the CPU is visible.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..weights.location import PROJECT_MODELS_DIR, forge_models_root
from .models import LOCAL_FILE, LOCAL_PREFIX, REMBG_MODELS, local_name

HOME_ENV = "U2NET_HOME"
ACCELERATED = ("CUDAExecutionProvider", "ROCMExecutionProvider")
CPU = "CPUExecutionProvider"


class CutoutUnavailable(RuntimeError):
    """rembg or onnxruntime cannot be used here; the message says how to fix it."""


class CutoutModelError(RuntimeError):
    """A cutout model file is missing, cannot be downloaded or cannot be loaded."""


_INSTALL_HINT = ("install it with `pip install \"rembg<=2.0.69\" onnxruntime pymatting` on Python 3.10, "
                 "`pip install rembg onnxruntime pymatting` on 3.11+ (or `pip install -e .[cutout]`), "
                 "or choose the weight-free model")


def _import_onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except Exception as exc:
        raise CutoutUnavailable(f"onnxruntime is not available ({exc}); {_INSTALL_HINT}") from None


def import_rembg():
    """rembg, or CutoutUnavailable with install instructions (never SystemExit)."""
    _import_onnxruntime()  # first: rembg exits the process without it
    try:
        import rembg
    except SystemExit:
        raise CutoutUnavailable(f"rembg refused to start (it exited during import); {_INSTALL_HINT}") from None
    except Exception as exc:
        raise CutoutUnavailable(f"rembg could not be imported ({type(exc).__name__}: {exc}); {_INSTALL_HINT}") from None
    return rembg


def models_home(explicit: Union[str, os.PathLike, None] = None) -> Path:
    """rembg's models folder: explicit; else the user's `U2NET_HOME`; else Forge's
    `models/u2net` (shared with the A1111 rembg extension); else this project's `models/u2net`."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    root = forge_models_root()
    return ((root if root is not None else PROJECT_MODELS_DIR) / "u2net").resolve()


def choose_providers(requested: Optional[Sequence[str]] = None) -> list[str]:
    """The providers to ask for: `requested` (checked against what onnxruntime offers) or the
    first accelerated one available, always with the CPU last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise ValueError(f"execution provider {', '.join(unknown)} is not available in this onnxruntime "
                             f"(available: {', '.join(available)})")
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = [next((p for p in ACCELERATED if p in available), CPU)]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


@dataclass
class RembgSession:
    """A loaded rembg session and what it really runs on."""

    session: object
    model: str
    path: Path
    requested: list[str]
    active: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        """An accelerator was asked for but the session runs on the CPU only."""
        return any(p != CPU for p in self.requested) and all(p == CPU for p in self.active)

    def describe(self) -> str:
        return f"{self.model} on {', '.join(self.active)}"

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> HxW float32 alpha in [0, 1] (several masks are merged by maximum)."""
        from PIL import Image

        masks = self.session.predict(Image.fromarray(rgb, "RGB"))
        alpha = np.zeros(rgb.shape[:2], np.float32)
        for mask in masks:
            np.maximum(alpha, np.asarray(mask.convert("L"), np.float32) / 255.0, out=alpha)
        return alpha


_SESSIONS: dict[tuple, RembgSession] = {}
_LOCK = threading.Lock()


def release_sessions() -> None:
    """Drop every cached session (frees its memory, GPU memory included)."""
    with _LOCK:
        _SESSIONS.clear()


def get_session(model: str, model_path: str = "", providers: Optional[Sequence[str]] = None,
                home: Union[str, os.PathLike, None] = None, allow_download: bool = True) -> RembgSession:
    """The cached session for (model, file, providers), loading it on first use. Local ONNX
    files (`local:<name>` in the models folder, or "local file" with `model_path`) only need
    onnxruntime; rembg's own models need rembg."""
    folder = models_home(home)
    if model == LOCAL_FILE or local_name(model):
        source = _local_file(model_path) if model == LOCAL_FILE else _in_folder(local_name(model), folder)
        _import_onnxruntime()
        wanted = choose_providers(providers)
        key = (LOCAL_FILE, str(source), os.stat(source).st_mtime_ns, tuple(wanted))
        load = lambda: _load_local(source, wanted)  # noqa: E731
    elif model in REMBG_MODELS:
        rembg = import_rembg()
        os.environ[HOME_ENV] = str(folder)
        wanted = choose_providers(providers)
        key = (model, str(folder), tuple(wanted))
        load = lambda: _load_builtin(rembg, model, folder, wanted, allow_download)  # noqa: E731
    else:
        raise ValueError(f"{model!r} is not a rembg model; choose one of {', '.join(REMBG_MODELS)} or "
                         f"{LOCAL_FILE!r}")
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = load()
        return _SESSIONS[key]


def _local_file(model_path: str) -> Path:
    if not model_path or not str(model_path).strip():
        raise ValueError("the cutout model 'local file' needs the path of an ONNX file (model_path=...)")
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise CutoutModelError(f"the cutout model file {path} does not exist")
    return path


def _in_folder(name: str, folder: Path) -> Path:
    path = folder / name
    if not path.is_file():
        raise CutoutModelError(f"the cutout model {LOCAL_PREFIX}{name} is not in the cutout models folder {folder}: "
                               f"put the file there, or choose 'local file' with its path")
    return path


def downloaded_model_file(model: str, folder: Path) -> Optional[Path]:
    """The file of built-in model `model` in rembg's models `folder`, or None when it is not there."""
    name = REMBG_MODELS[model].local_name
    for path in (folder / "models" / model / name, folder / name):  # rembg >= 2.0.70, every rembg
        if path.is_file():
            return path
    return None


NESTED_LAYOUT = (2, 0, 70)  # rembg from this version downloads into <home>/models/<model>/


def _rembg_version() -> Optional[tuple[int, ...]]:
    from importlib import metadata

    try:
        return tuple(int(p) for p in metadata.version("rembg").split(".")[:3] if p.isdigit())
    except metadata.PackageNotFoundError:
        return None


def model_target(model: str, folder: Path) -> Path:
    """Where the installed rembg downloads built-in model `model` to, and reads it from: the
    path to put the file at by hand."""
    name = REMBG_MODELS[model].local_name
    version = _rembg_version()
    if version is not None and version >= NESTED_LAYOUT:
        return folder / "models" / model / name
    return folder / name


def not_downloadable(model: str, target: Path, why: str) -> str:
    """The message for a built-in model that is missing and cannot be downloaded here."""
    info = REMBG_MODELS[model]
    return (f"the cutout model {model} is not downloaded and is not downloadable here ({why}): use "
            f"weight-free, or put the file at {target} (download it from {info.url}, {info.approx_mb} MB)")


def _load_builtin(rembg, model: str, folder: Path, providers: list[str], allow_download: bool) -> RembgSession:
    info = REMBG_MODELS[model]
    present = downloaded_model_file(model, folder)
    target = model_target(model, folder)
    if present is None:
        if not allow_download:
            raise CutoutModelError(not_downloadable(model, target, "downloads are off"))
        from ..reachability import probe

        reach = probe(info.url)  # pooch retries for a long time on a closed network
        if not reach.ok:
            raise CutoutModelError(not_downloadable(model, target, f"{reach.host} cannot be reached: {reach.reason}"))
        folder.mkdir(parents=True, exist_ok=True)
    try:
        session = _new_session(rembg, model, providers)
    except Exception as exc:
        if present is None:
            raise CutoutModelError(not_downloadable(model, target, f"the download failed: {type(exc).__name__}: "
                                                                   f"{str(exc)[:200]}")) from None
        raise CutoutModelError(f"onnxruntime cannot load the cutout model file {present} "
                               f"({type(exc).__name__}: {exc}); the file is damaged or not an ONNX model: "
                               f"delete it (it is downloaded again) or replace it with {info.url}") from None
    return _described(session, model, present or downloaded_model_file(model, folder) or target, providers)


def _load_local(source: Path, providers: list[str]) -> RembgSession:
    from .local_onnx import LocalModelError, LocalSegmenter

    _preload_cuda(providers)
    try:
        segmenter = LocalSegmenter(source, providers)
    except LocalModelError as exc:
        raise CutoutModelError(str(exc)) from None
    return _described(segmenter, f"{source.name} ({segmenter.recipe.family} recipe)", source, providers)


def _preload_cuda(providers: list[str]) -> None:
    if any(p == "CUDAExecutionProvider" for p in providers):
        try:  # onnxruntime >= 1.21 can reuse the CUDA libraries that ship with torch
            import onnxruntime

            onnxruntime.preload_dlls()
        except Exception:
            pass


def _new_session(rembg, name: str, providers: list[str], **kwargs):
    _preload_cuda(providers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # we report provider fall-backs ourselves
        return rembg.new_session(name, providers=list(providers), **kwargs)


def _described(session, model: str, path: Path, requested: list[str]) -> RembgSession:
    try:
        active = list(session.inner_session.get_providers())
    except Exception:
        active = list(requested)
    out = RembgSession(session=session, model=model, path=Path(path), requested=requested, active=active)
    if out.fell_back:
        out.notes.append(f"{', '.join(p for p in requested if p != CPU)} was requested for {model} but "
                         "onnxruntime runs it on the CPU (its CUDA/cuDNN libraries did not load); "
                         "cutouts will be slow")
    return out
