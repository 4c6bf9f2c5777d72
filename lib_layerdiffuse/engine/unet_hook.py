"""Per-step control of a diffusers UNet during one generation: the concat condition of the
SDXL layer methods and "Stop At".

It is a forward pre-hook (a documented torch mechanism, removed when the generation ends), so
the user's UNet object keeps its own `forward`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch


def stop_timestep(stop_at: float, num_train_timesteps: int = 1000) -> float:
    """The timestep below which LayerDiffuse is switched off.

    Forge stops once sigma drops below `percent_to_sigma(stop_at)`, the sigma of timestep
    `(1 - stop_at) * (T - 1)`; sigma grows with the timestep, so comparing timesteps is the same
    test for every scheduler. 1 (or more) never stops, 0 (or less) stops before the first step.
    """
    if stop_at >= 1.0:
        return -math.inf
    if stop_at <= 0.0:
        return math.inf
    return (1.0 - stop_at) * (num_train_timesteps - 1)


def broadcast_condition(condition: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a `[n, C, h, w]` condition to a UNet batch of `batch` (n = 1, or the number of
    images when the pipeline stacks [uncond, cond] copies of them)."""
    n = condition.shape[0]
    if n == batch:
        return condition
    if batch % n:
        raise ValueError(f"cannot spread {n} condition latents over a UNet batch of {batch}; give one "
                         "condition image, or one per generated image")
    return condition.repeat(batch // n, 1, 1, 1)


class UNetStepHook:
    """Concatenate `condition` to the UNet input at every step and call `on_stop` once, at the
    first step whose timestep is below `stop_timestep`; after that the condition is dropped.

    Use as a context manager around the pipeline call.
    """

    def __init__(self, unet: torch.nn.Module, condition: Optional[torch.Tensor] = None,
                 stop_below: float = -math.inf, on_stop: Optional[Callable[[], None]] = None):
        self.unet = unet
        self.condition = condition
        self.stop_below = stop_below
        self.on_stop = on_stop
        self.stopped = False
        self.calls_active = 0
        self.calls_stopped = 0
        self._handle = None

    def __enter__(self) -> "UNetStepHook":
        self._handle = self.unet.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _before_forward(self, module, args: tuple, kwargs: dict):
        args = list(args)
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if not self.stopped and timestep is not None and _first(timestep) < self.stop_below:
            self.stopped = True
            if self.on_stop is not None:
                self.on_stop()
        if self.stopped:
            self.calls_stopped += 1
            return None
        self.calls_active += 1
        if self.condition is None:
            return None
        in_args = bool(args)
        sample = args[0] if in_args else kwargs["sample"]
        cond = broadcast_condition(self.condition, sample.shape[0]).to(sample.device, sample.dtype)
        sample = torch.cat([sample, cond], dim=1)
        if in_args:
            args[0] = sample
        else:
            kwargs["sample"] = sample
        return tuple(args), kwargs


def _first(timestep) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0])
    return float(timestep)
