"""Segmentation models from local ONNX files, run with onnxruntime alone (no rembg, no download).

A file is run by the conventions of its family, read from its name and its input shape:
- BiRefNet (MIT; also BRIA RMBG-2.0, which is built on it): ImageNet mean and deviation, and a
  sigmoid on the output, which these exports leave as logits;
- IS-Net / DIS (square input of 1024 or more): mean 0.5, deviation 1, as rembg feeds them;
- U2-Net and its small variants (smaller inputs): ImageNet mean and deviation.
Any output that is not already in [0, 1] goes through a sigmoid. The model's probabilities are
used as they are (rembg stretches every mask from its minimum to its maximum, which turns an
image without a subject into a full mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
DYNAMIC_SIZE = 1024  # input side for graphs whose input size is not fixed
BIREFNET_NAMES = ("birefnet", "rmbg")


@dataclass(frozen=True)
class Recipe:
    """How a family of models wants its input."""

    family: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class LocalModelError(RuntimeError):
    """A local ONNX file cannot be used as a segmentation model; the message says why."""


def recipe_for(path: Path, shape: Sequence) -> Recipe:
    """The recipe for the file at `path` whose first input has `shape` ([1, 3, S, S], or with
    named dimensions where the size is free)."""
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise LocalModelError(f"the cutout model file {path} takes input of shape {list(shape)}; a segmentation "
                              "model takes one RGB image, [1, 3, size, size]")
    sides = [s if isinstance(s, int) and s > 0 else None for s in shape[2:]]
    if sides[0] is not None and sides[1] is not None and sides[0] != sides[1]:
        raise LocalModelError(f"the cutout model file {path} takes input of shape {list(shape)}; only square "
                              "inputs are supported")
    size = sides[0] or sides[1] or DYNAMIC_SIZE
    name = path.name.casefold()
    if any(key in name for key in BIREFNET_NAMES):
        return Recipe("BiRefNet", size, *IMAGENET)
    if size >= 1024:
        return Recipe("IS-Net", size, *HALF)
    return Recipe("U2-Net", size, *IMAGENET)


class LocalSegmenter:
    """One local ONNX file in an onnxruntime session; `predict` has rembg's session interface
    (a PIL image in, a list of PIL masks out) so the rest of the cutout treats both alike."""

    def __init__(self, path: Path, providers: Sequence[str]):
        import onnxruntime as ort

        try:
            self.inner_session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as exc:
            raise LocalModelError(f"onnxruntime cannot load the cutout model file {path} "
                                  f"({type(exc).__name__}: {str(exc)[:200]}); it is damaged or not an ONNX "
                                  "model") from None
        first = self.inner_session.get_inputs()[0]
        self.input_name = first.name
        self.input_type = np.float16 if first.type == "tensor(float16)" else np.float32
        self.recipe = recipe_for(path, first.shape)

    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> the model's foreground probability at its own input size, float32."""
        from PIL import Image

        r = self.recipe
        resized = np.asarray(Image.fromarray(rgb, "RGB").resize((r.size, r.size), Image.Resampling.LANCZOS),
                             np.float32) / 255.0
        x = ((resized - np.asarray(r.mean, np.float32)) / np.asarray(r.std, np.float32)).transpose(2, 0, 1)[None]
        feed = {self.input_name: np.ascontiguousarray(x, self.input_type)}
        out = np.asarray(self.inner_session.run(None, feed)[0], np.float32)
        pred = out.reshape(-1, *out.shape[-2:])[0]  # [1, 1, S, S], [1, S, S] or [S, S]: the first mask
        if float(pred.min()) < 0.0 or float(pred.max()) > 1.0:
            pred = 1.0 / (1.0 + np.exp(-pred))
        return pred

    def predict(self, img) -> list:
        from PIL import Image

        pred = self.probabilities(np.asarray(img.convert("RGB")))
        mask = Image.fromarray(pred, "F").resize(img.size, Image.Resampling.BILINEAR)
        return [Image.fromarray(np.clip(np.asarray(mask) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")]
