"""The cutout models we offer: the weight-free backend, rembg's sessions, ONNX files found in the
models folder (`local:<file name>`), and any ONNX file by path ("local file").

Facts per rembg session (file, size, licence, where it downloads from) are listed so the panel
can show them and the offline message can say exactly what to fetch. Non-commercial models are
offered but labelled, and never the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHT_FREE = "weight-free"
LOCAL_FILE = "local file"
LOCAL_PREFIX = "local:"  # followed by the name of an ONNX file in the models folder
RELEASE_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"


@dataclass(frozen=True)
class RembgModel:
    name: str
    file: str
    approx_mb: int
    licence: str
    about: str
    commercial: bool = True

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file

    @property
    def local_name(self) -> str:
        """The name rembg looks for in its models folder (every rembg version)."""
        return f"{self.name}.onnx"

    def label(self) -> str:
        use = "" if self.commercial else ", non-commercial"
        return f"{self.name} ({self.about}; {self.approx_mb} MB, {self.licence}{use})"


REMBG_MODELS = {m.name: m for m in (
    RembgModel("isnet-general-use", "isnet-general-use.onnx", 171, "Apache-2.0", "IS-Net, general use"),
    RembgModel("birefnet-general-lite", "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx", 214, "MIT",
               "BiRefNet lite, fine detail"),
    RembgModel("birefnet-general", "BiRefNet-general-epoch_244.onnx", 928, "MIT", "BiRefNet, best detail, slow"),
    RembgModel("birefnet-portrait", "BiRefNet-portrait-epoch_150.onnx", 928, "MIT", "BiRefNet, people"),
    RembgModel("isnet-anime", "isnet-anime.onnx", 168, "Apache-2.0", "anime characters"),
    RembgModel("u2net", "u2net.onnx", 168, "Apache-2.0", "U2-Net, general"),
    RembgModel("u2netp", "u2netp.onnx", 4, "Apache-2.0", "U2-Net small, fast"),
    RembgModel("u2net_human_seg", "u2net_human_seg.onnx", 168, "Apache-2.0", "people"),
    RembgModel("silueta", "silueta.onnx", 43, "Apache-2.0", "reduced U2-Net"),
    RembgModel("bria-rmbg", "bria-rmbg-2.0.onnx", 1024, "CC BY-NC 4.0", "BRIA RMBG-2.0", commercial=False),
)}

DEFAULT_MODEL = "isnet-general-use"
MODEL_CHOICES = (WEIGHT_FREE, *REMBG_MODELS, LOCAL_FILE)


def local_models(folder: Path) -> list[str]:
    """`local:<name>` for every ONNX file directly in the models `folder` that is not one of
    rembg's own models (those are listed by their names)."""
    builtin = {m.local_name.casefold() for m in REMBG_MODELS.values()}
    if not folder.is_dir():
        return []
    return [LOCAL_PREFIX + p.name for p in sorted(folder.glob("*.onnx"), key=lambda p: p.name.casefold())
            if p.is_file() and p.name.casefold() not in builtin]


def model_choices(folder: Path) -> list[str]:
    """Every model to offer, the ONNX files found in `folder` just before "local file"."""
    return [*MODEL_CHOICES[:-1], *local_models(folder), LOCAL_FILE]


def local_name(choice: str) -> str:
    """The file name in a `local:<name>` choice ("" for other choices)."""
    return choice[len(LOCAL_PREFIX):] if choice.startswith(LOCAL_PREFIX) else ""


def parse_model(value: Any) -> str:
    """A model choice: one of MODEL_CHOICES (any case; "none"/"border" mean weight-free), or
    `local:<name>` for an ONNX file in the models folder."""
    if not isinstance(value, str):
        raise TypeError(f"cutout model must be a name, got {type(value).__name__} {value!r}")
    if value.strip().casefold().startswith(LOCAL_PREFIX):
        name = value.strip()[len(LOCAL_PREFIX):].strip()
        if not name or Path(name).name != name or not name.casefold().endswith(".onnx"):
            raise ValueError(f"cutout model {value!r}: after {LOCAL_PREFIX!r} comes the name of an .onnx file in "
                             "the cutout models folder, without a folder; for a file elsewhere use "
                             f"{LOCAL_FILE!r} with its path")
        return LOCAL_PREFIX + name
    key = value.strip().casefold().replace("_", "-")
    aliases = {"none": WEIGHT_FREE, "border": WEIGHT_FREE, "weightfree": WEIGHT_FREE,
               "local": LOCAL_FILE, "local-file": LOCAL_FILE, "custom": LOCAL_FILE}
    for choice in MODEL_CHOICES:
        if key == choice.casefold().replace("_", "-"):
            return choice
    if key in aliases:
        return aliases[key]
    raise ValueError(f"unknown cutout model {value!r}; valid models are {', '.join(MODEL_CHOICES)}, or "
                     f"{LOCAL_PREFIX}<file name> for an ONNX file in the cutout models folder")


def model_label(choice: str) -> str:
    if choice == WEIGHT_FREE:
        return f"{WEIGHT_FREE} (flat or smooth backgrounds; no download)"
    if choice == LOCAL_FILE:
        return f"{LOCAL_FILE} (an ONNX model on this machine)"
    if local_name(choice):
        return f"{local_name(choice)} (an ONNX model in the models folder)"
    return REMBG_MODELS[choice].label()
