"""The "frozen patch" format of the SDXL LayerDiffuse files and its merge math.

Keys are `<model_key>::<patch_type>::<index>`; `lora` patches have two tensors (index 0 = up
`[out, rank]`, index 1 = down `[rank, in]`, no alpha), `diff` patches one full delta.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

PATCH_TYPES = {"lora": 2, "diff": 1}

Patches = dict[str, tuple[str, list[torch.Tensor]]]


def parse_frozen_patches(state_dict: dict[str, torch.Tensor]) -> Patches:
    """Group a frozen-patch state dict by model key: `{model_key: (patch_type, [tensors])}`.

    Raises ValueError naming the offending key for anything outside the grammar: a key
    without `::type::index`, an unknown type, mixed types or missing indices for one key.
    """
    grouped: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    types: dict[str, str] = {}
    for key, tensor in state_dict.items():
        parts = key.split("::")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"{key!r} is not a frozen-patch key (expected '<model key>::lora|diff::<index>')")
        model_key, patch_type, index = parts[0], parts[1], int(parts[2])
        if patch_type not in PATCH_TYPES:
            raise ValueError(f"{key!r}: unknown patch type {patch_type!r} (known: {', '.join(PATCH_TYPES)})")
        if types.setdefault(model_key, patch_type) != patch_type:
            raise ValueError(f"{model_key!r} has both {types[model_key]!r} and {patch_type!r} patches")
        grouped[model_key][index] = tensor
    patches: Patches = {}
    for model_key, parts_by_index in grouped.items():
        patch_type = types[model_key]
        expected = list(range(PATCH_TYPES[patch_type]))
        if sorted(parts_by_index) != expected:
            raise ValueError(f"{model_key!r}: a {patch_type} patch needs indices {expected}, "
                             f"the file has {sorted(parts_by_index)}")
        patches[model_key] = (patch_type, [parts_by_index[i] for i in expected])
    return patches


def patched_shape(shape: torch.Size, patch_type: str, tensors: list[torch.Tensor]) -> tuple[int, ...]:
    """The weight shape after merging, or ValueError if the patch does not fit `shape`."""
    shape = tuple(shape)
    if patch_type == "lora":
        up, down = tensors
        if up.ndim != 2 or down.ndim < 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"LoRA up {tuple(up.shape)} and down {tuple(down.shape)} do not chain")
        if up.shape[0] * down[0].numel() != math.prod(shape) or up.shape[0] != shape[0]:
            raise ValueError(f"LoRA up {tuple(up.shape)} @ down {tuple(down.shape)} does not fit a "
                             f"weight of shape {shape}")
        return shape
    if patch_type == "diff":
        delta = tuple(tensors[0].shape)
        if delta == shape:
            return shape
        widened = (len(delta) == len(shape) == 4 and delta[1] > shape[1]
                   and delta[0] == shape[0] and delta[2:] == shape[2:])
        if widened:  # more input channels: conv_in of the layer models
            return delta
        raise ValueError(f"diff of shape {delta} does not fit a weight of shape {shape}")
    raise ValueError(f"unknown patch type {patch_type!r}")


def merge_patch(weight: torch.Tensor, patch_type: str, tensors: list[torch.Tensor],
                strength: float) -> torch.Tensor:
    """`weight` with the patch added at `strength`, computed in fp32 and returned in the
    weight's dtype and device. A 4-D diff that is larger than the weight (conv_in of the
    layer models: 4 -> 8 or 12 input channels) zero-pads the weight first, so the new
    channels hold exactly `strength * delta[:, 4:]`."""
    shape = patched_shape(weight.shape, patch_type, tensors)
    w = weight.detach().float()
    dev = w.device
    if patch_type == "lora":
        up, down = (t.to(dev, torch.float32) for t in tensors)
        return (w + strength * (up @ down.flatten(1)).reshape(shape)).to(weight.dtype)
    delta = tensors[0].to(dev, torch.float32)
    if tuple(w.shape) != shape:
        padded = torch.zeros(shape, dtype=torch.float32, device=dev)
        padded[tuple(slice(0, n) for n in w.shape)] = w
        w = padded
    return (w + strength * delta).to(weight.dtype)

