"""Sampler names (the WebUI ones users know) -> diffusers schedulers, and per-method defaults."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from ..methods import Method

# name -> (diffusers scheduler class, extra config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler",
                            {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
}

# The blend -> layer models give artifacts with DPM samplers (reference README); Euler a and
# UniPC work.
_BLEND_TO_LAYER = (Method.FG_BLEND_TO_BG, Method.BG_BLEND_TO_FG)


def default_sampler(method: Method) -> Optional[str]:
    """The sampler a method runs with when none is given (None: the pipeline's own)."""
    return "Euler a" if method in _BLEND_TO_LAYER else None


def parse_sampler(name: str) -> str:
    key = " ".join(name.split()).casefold()
    for known in SAMPLERS:
        if known.casefold() == key:
            return known
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def make_scheduler(name: str, config: dict, method: Optional[Method] = None):
    """A new scheduler of sampler `name` with the pipeline's noise schedule (`config`)."""
    import diffusers

    name = parse_sampler(name)
    if method in _BLEND_TO_LAYER and name.startswith("DPM"):
        warnings.warn(f"{method.value} gives artifacts with DPM samplers; Euler a or UniPC are "
                      "recommended", stacklevel=2)
    cls_name, extra = SAMPLERS[name]
    base = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    for key in ("use_karras_sigmas", "algorithm_type"):
        base.pop(key, None)
    return getattr(diffusers, cls_name).from_config(base, **extra)
