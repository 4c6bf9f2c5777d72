"""Cutouts for images that were not generated transparent, and background replacement.

`cut_out(image, model=..., refine=...)` returns a `CutoutResult` (straight-alpha RGBA, mask,
composites). Models: the weight-free border matte (flat or smooth backgrounds, no download) or
a rembg model (imported lazily; see `rembg_backend`). `replace_background` puts the subject on a
new background, generated with the SDXL "From Foreground to Blending" method or given.
Needs the `cutout` extra (pymatting; rembg and onnxruntime for the models).
"""

from .border import CutoutError
from .models import DEFAULT_MODEL, LOCAL_FILE, MODEL_CHOICES, REMBG_MODELS, WEIGHT_FREE
from .options import CutoutSettings, Output, Refine, parse_color
from .result import CutoutResult
from .run import cut_out, from_own_alpha

__all__ = ["CutoutError", "CutoutResult", "CutoutSettings", "DEFAULT_MODEL", "LOCAL_FILE", "MODEL_CHOICES",
           "Output", "REMBG_MODELS", "Refine", "WEIGHT_FREE", "cut_out", "from_own_alpha", "parse_color"]
