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


MERGE_CHUNK = 1 << 18  # values merged at a time: the fp32 temporaries stay in the CPU cache


def merge_patch(weight: torch.Tensor, patch_type: str, tensors: list[torch.Tensor],
                strength: float) -> torch.Tensor:
    """`weight` with the patch added at `strength` (see `add_patch_`), as a new tensor in the
    weight's dtype and device. A 4-D diff that is larger than the weight (conv_in of the
    layer models: 4 -> 8 or 12 input channels) zero-pads the weight first, so the new
    channels hold exactly `strength * delta[:, 4:]`."""
    shape = patched_shape(weight.shape, patch_type, tensors)
    if tuple(weight.shape) == shape:
        out = weight.detach().clone()
    else:
        out = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        out[tuple(slice(0, n) for n in weight.shape)] = weight.detach()
    add_patch_(out, patch_type, tensors, strength)
    return out


@torch.no_grad()
def add_patch_(weight: torch.Tensor, patch_type: str, tensors: list[torch.Tensor], strength: float) -> None:
    """Add the patch to `weight` in place: `weight + strength * delta` computed in fp32 and
    rounded once to the weight's dtype, `MERGE_CHUNK` values at a time. The bits are those of
    the whole-tensor expression; the chunks only keep the fp32 temporaries small and in cache
    (a whole-tensor merge of SDXL's conv file makes three fp32 passes over 2.6 G values)."""
    if tuple(weight.shape) != patched_shape(weight.shape, patch_type, tensors):
        raise ValueError(f"a {patch_type} patch that widens a weight of shape {tuple(weight.shape)} "
                         "cannot be added in place; use merge_patch")
    if patch_type == "lora":
        up, down = (t.to(weight.device, torch.float32) for t in tensors)
        delta = up @ down.flatten(1)
    else:
        delta = tensors[0]
    if weight.is_contiguous():
        pairs = zip(weight.view(-1).split(MERGE_CHUNK), delta.reshape(-1).split(MERGE_CHUNK))
    else:
        pairs = [(weight, delta.reshape(weight.shape))]
    for w, d in pairs:
        change = d.to(weight.device, torch.float32)
        if strength != 1.0:
            change = change * strength
        w.copy_(w.float() + change)
