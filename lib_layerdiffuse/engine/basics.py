"""What every engine does the same way: checking counts, fitting an RGBA init image, reporting
sampling steps, writing WebUI-style parameters."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image

from ..progress import ProgressCallback


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def step_reporter(on_progress: ProgressCallback, steps: int):
    """A diffusers `callback_on_step_end` that reports the step (img2img runs fewer steps than
    asked for; the pipeline knows how many)."""
    def report(pipe, step: int, timestep, tensors: dict) -> dict:
        on_progress("Sampling", step + 1, int(getattr(pipe, "num_timesteps", None) or steps))
        return {}
    return report


def format_infotext(prompt: str, negative_prompt: str, settings: dict[str, Any]) -> str:
    """WebUI-style generation parameters (what "PNG Info" and paste-to-prompt read)."""
    def value(v: Any) -> str:
        text = str(v)
        return json.dumps(text) if any(c in text for c in ',:"\n') else text

    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {value(v)}" for k, v in settings.items()))
    return "\n".join(lines)


def fit_rgba(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an RGBA init image to the generation size in premultiplied form (no dark or
    coloured fringes from the invisible pixels)."""
    if rgba.shape[:2] == (height, width):
        return rgba
    image = Image.fromarray(rgba, "RGBA").convert("RGBa").resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGBA"))
