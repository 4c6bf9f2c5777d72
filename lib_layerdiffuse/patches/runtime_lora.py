"""A LoRA added at run time to layers whose weights cannot take a merged delta.

Quantised transformers (bitsandbytes 4/8-bit, fp8 storage with diffusers' layerwise casting,
torchao) keep weights a LoRA delta cannot be added to without losing it: a rank-r update is far
below fp8's or NF4's step. For those layers the LoRA runs beside the layer instead: a forward
hook adds `strength * (x @ down.T) @ up.T` to its output, in the input's dtype. Removing the
hooks restores the model exactly; nothing in its weights changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .frozen import Patches

MERGEABLE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def mergeable(param: torch.Tensor) -> bool:
    """A plain floating-point parameter of at least 16 bits: a delta can be merged into it."""
    return type(param) is torch.nn.Parameter and param.dtype in MERGEABLE


@dataclass
class AttachedLoRA:
    """The hooks `attach_lora_branches` installed; `restore()` removes them."""

    handles: list = field(default_factory=list)
    active: bool = True

    def restore(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.active = False


class _Branch:
    def __init__(self, up: torch.Tensor, down: torch.Tensor, strength: float):
        self.up, self.down, self.strength = up, down, strength
        self._cast: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, module, args, output):
        x = args[0]
        key = (x.device, x.dtype)
        if key not in self._cast:
            self._cast[key] = (self.up.to(x.device, x.dtype), self.down.to(x.device, x.dtype))
        up, down = self._cast[key]
        return output + self.strength * torch.nn.functional.linear(torch.nn.functional.linear(x, down), up)


def attach_lora_branches(model: torch.nn.Module, patches: Patches, strength: float = 1.0,
                         source: str = "LoRA file") -> AttachedLoRA:
    """Hook every `lora` patch (keyed `<linear layer>.weight`) onto its layer. Every layer is
    checked (a linear layer with matching features) before the first hook goes in."""
    from .apply import PatchMismatchError

    branches = []
    for key, (patch_type, tensors) in patches.items():
        layer_name = key[: -len(".weight")] if key.endswith(".weight") else key
        try:
            layer = model.get_submodule(layer_name)
        except AttributeError:
            raise PatchMismatchError(f"{source}: the model has no layer {layer_name!r}") from None
        up, down = tensors
        features = (getattr(layer, "out_features", None), getattr(layer, "in_features", None))
        if patch_type != "lora" or features != (up.shape[0], down.shape[1]):
            raise PatchMismatchError(f"{source}: {layer_name!r} is a {type(layer).__name__} with (out, in) features "
                                     f"{features}; the LoRA is {up.shape[0]} x {down.shape[1]}")
        branches.append((layer, _Branch(up.float(), down.float(), float(strength))))
    attached = AttachedLoRA()
    for layer, branch in branches:
        attached.handles.append(layer.register_forward_hook(branch))
    return attached
