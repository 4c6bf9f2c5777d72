"""Apply frozen patches to a diffusers UNet strictly and reversibly.

Every key is resolved and every shape checked before the first weight changes, so a file that
does not fit leaves the UNet untouched. The original values are kept (on the CPU by default)
and `AppliedPatches.restore()` puts them back bit for bit, so "Stop At", switching methods and
turning the extension off need no model reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from tqdm.auto import tqdm

from ..methods import Family
from .frozen import Patches, add_patch_, merge_patch, patched_shape
from .names import ldm_to_diffusers


class PatchMismatchError(ValueError):
    """A weight file does not fit the UNet it is applied to."""


@dataclass
class AppliedPatches:
    """What `apply_frozen_patches` changed, and how to undo it."""

    unet: torch.nn.Module
    backups: dict[str, torch.Tensor] = field(default_factory=dict)
    replaced: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    in_channels: dict[str, int] = field(default_factory=dict)
    active: bool = True

    @torch.no_grad()
    def restore(self) -> None:
        """Put every original weight back (a second call does nothing)."""
        if not self.active:
            return
        params = dict(self.unet.named_parameters())
        for name, original in self.backups.items():
            params[name].data.copy_(original)
        for name, original in self.replaced.items():
            module_name, attr = name.rsplit(".", 1)
            module = self.unet.get_submodule(module_name)
            setattr(module, attr, original)
            if module_name in self.in_channels:
                module.in_channels = self.in_channels[module_name]
        self.backups.clear()
        self.replaced.clear()
        self.in_channels.clear()
        self.active = False


def resolve_patches(unet: torch.nn.Module, patches: Patches, family: Union[Family, str],
                    source: str = "patch file") -> dict[str, tuple[str, str, list[torch.Tensor]]]:
    """Map every patch key to a diffusers parameter and check its shape: returns
    `{diffusers name: (model key, patch type, tensors)}` or raises PatchMismatchError. SD keys
    are LDM names; Flux keys are already the transformer's parameter names."""
    params = dict(unet.named_parameters())
    resolved: dict[str, tuple[str, str, list[torch.Tensor]]] = {}
    for model_key, (patch_type, tensors) in patches.items():
        try:
            name = model_key if Family(family) is Family.FLUX else ldm_to_diffusers(model_key, family)
        except KeyError as exc:
            raise PatchMismatchError(f"{source}: {exc.args[0]}. Is this a {Family(family).label} "
                                     "LayerDiffuse file?") from None
        if name not in params:
            raise PatchMismatchError(f"{source}: {model_key!r} maps to {name!r}, which this "
                                     f"{Family(family).label} model does not have. Is this a "
                                     f"{Family(family).label} LayerDiffuse file?")
        if name in resolved:
            raise PatchMismatchError(f"{source}: {model_key!r} and {resolved[name][0]!r} both map to {name!r}")
        try:
            patched_shape(params[name].shape, patch_type, tensors)
        except ValueError as exc:
            raise PatchMismatchError(f"{source}: {model_key!r} -> {name!r}: {exc}") from None
        resolved[name] = (model_key, patch_type, tensors)
    return resolved


@torch.no_grad()
def apply_frozen_patches(unet: torch.nn.Module, patches: Patches, family: Union[Family, str],
                         strength: float = 1.0, backup_device: Union[str, torch.device] = "cpu",
                         source: str = "patch file", progress: bool = False) -> AppliedPatches:
    """Merge `patches` into `unet` at `strength`; returns the handle that restores it.

    Weights whose shape grows (conv_in of the layer models) get a new, wider parameter and
    the module's `in_channels` follows; the original parameter object comes back on restore.
    """
    strength = float(strength)
    if not torch.isfinite(torch.tensor(strength)):
        raise ValueError(f"patch strength must be a finite number, got {strength}")
    resolved = resolve_patches(unet, patches, family, source)
    params = dict(unet.named_parameters())
    applied = AppliedPatches(unet)
    try:
        for name, (_, patch_type, tensors) in tqdm(resolved.items(), desc="Applying LayerDiffuse patch",
                                                   disable=not progress, unit="tensor"):
            param = params[name]
            if patched_shape(param.shape, patch_type, tensors) == tuple(param.shape):
                applied.backups[name] = param.data.to(backup_device, copy=True)
                add_patch_(param.data, patch_type, tensors, strength)
                continue
            merged = merge_patch(param.data, patch_type, tensors, strength)
            module_name, attr = name.rsplit(".", 1)
            module = unet.get_submodule(module_name)
            applied.replaced[name] = param
            setattr(module, attr, torch.nn.Parameter(merged, requires_grad=param.requires_grad))
            if hasattr(module, "in_channels") and attr == "weight":
                applied.in_channels[module_name] = module.in_channels
                module.in_channels = merged.shape[1]
    except BaseException:
        applied.restore()
        raise
    return applied
