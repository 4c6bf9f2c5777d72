"""A stand-in generation engine for batch tests, importable by Ray workers: it draws a disc whose
radius follows the seed (seed % 3 == 0 gives an empty alpha), and can end its own process when it
meets a given prompt (once, with a marker file, or every time), as a worker machine that dies
mid-job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..engine.outputs import LayerImage, LayerResult
from ..methods import Method


class DiscEngine:
    def __init__(self, die_on: Optional[str] = None, marker: Optional[str] = None):
        self.calls: list[tuple[str, int]] = []
        self.die_on, self.marker = die_on, marker

    def generate(self, prompt, method=None, *, seed, width=64, height=64, **kwargs) -> LayerResult:
        if prompt == self.die_on and not (self.marker and Path(self.marker).exists()):
            if self.marker:  # die once: the marker remembers it happened
                Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # no cleanup, no exception: the process is gone
        self.calls.append((prompt, seed))
        y, x = np.mgrid[:height, :width]
        rgba = np.zeros((height, width, 4), np.uint8)
        rgba[..., 0] = 200
        inside = (x - 32) ** 2 + (y - 32) ** 2 < (5 + seed % 7) ** 2
        rgba[..., 3] = 0 if seed % 3 == 0 else 255 * inside
        image = Image.fromarray(rgba, "RGBA")
        return LayerResult([LayerImage(image, "fg", True, image.convert("RGB"))], Method.FG_ONLY_ATTN, seed,
                           f"{prompt}\nSeed: {seed}, pid {os.getpid()}", {"Seed": seed})


def disc_engine(model: str, die_on: Optional[str] = None, marker: Optional[str] = None) -> DiscEngine:
    """`engine_for(model)` for `run_job` / `run_job_on_ray` (use functools.partial for the rest)."""
    return DiscEngine(die_on, marker)


def tiny_engine(family: str, weights: str, catalog: dict, model: str):
    """`engine_for(model)` giving LayerDiffuse on the tiny test pipeline of `family` with the tiny
    weight files in `weights` (`catalog` from `write_unet_files`); picklable through
    functools.partial, so Ray workers can build it."""
    from ..engine import LayerDiffuse
    from ..weights import WeightStore
    from .pipelines import tiny_pipeline

    store = WeightStore(weights, allow_download=False, progress=False, catalog=catalog)
    return LayerDiffuse(tiny_pipeline(family), store=store, progress=False, decoder_passes=1)
