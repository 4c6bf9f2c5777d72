"""LayerDiffuse-Flux's LoRA (`layerlora.safetensors`, diffusers names) as frozen patches.

The file patches linear layers of a diffusers `FluxTransformer2DModel`. Accepted key grammar,
one LoRA per layer path `P` (a module path inside the transformer, e.g.
`transformer_blocks.0.attn.to_q`), with or without the `transformer.` prefix diffusers writes:
- `P.lora_A.weight` (down, `[rank, in]`) and `P.lora_B.weight` (up, `[out, rank]`): PEFT, what
  diffusers' `save_lora_weights` writes;
- `P.lora.down.weight` and `P.lora.up.weight`: the older diffusers attention-processor names;
- optionally `P.alpha` (a scalar): the LoRA is scaled by alpha / rank (without it, by 1, as
  diffusers does when a file carries no alphas).
Anything else (another component's keys, a half pair, an unknown suffix) is an error naming the
key. The result is the `lora` patch of `patches.frozen` keyed by the transformer's parameter
name (`P.weight`), with the scale folded into the up matrix, so `patches.apply` merges it
strictly and reversibly like the SD files.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .frozen import Patches

PREFIX = "transformer."
_SUFFIXES = {"lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down",
             "lora.up.weight": "up", "alpha": "alpha"}


def _split(key: str) -> tuple[str, str]:
    for suffix, part in _SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    raise ValueError(f"{key!r} is not a LoRA key (expected <layer>.lora_A.weight / lora_B.weight, "
                     "lora.down.weight / lora.up.weight or <layer>.alpha)")


def parse_transformer_lora(state_dict: dict[str, torch.Tensor], source: str = "LoRA file") -> Patches:
    """`{parameter name: ("lora", [up * alpha / rank, down])}` for a Flux transformer."""
    if not state_dict:
        raise ValueError(f"{source} holds no tensors")
    prefixed = [k for k in state_dict if k.startswith(PREFIX)]
    if prefixed and len(prefixed) != len(state_dict):
        other = next(k for k in state_dict if not k.startswith(PREFIX))
        raise ValueError(f"{source}: {other!r} is not a transformer key; this LoRA also patches another part "
                         "of the pipeline (text encoders?), which LayerDiffuse-Flux's LoRA does not")
    layers: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in state_dict.items():
        try:
            layer, part = _split(key[len(PREFIX):] if prefixed else key)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        layers[layer][part] = tensor
    patches: Patches = {}
    for layer, parts in layers.items():
        if "down" not in parts or "up" not in parts:
            missing = "down (lora_A)" if "down" not in parts else "up (lora_B)"
            raise ValueError(f"{source}: {layer!r} has no {missing} matrix")
        down, up = parts["down"], parts["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"{source}: {layer!r}: up {tuple(up.shape)} and down {tuple(down.shape)} do not "
                             "chain as a linear LoRA")
        scale = 1.0
        if "alpha" in parts:
            alpha = parts["alpha"]
            if alpha.numel() != 1:
                raise ValueError(f"{source}: {layer}.alpha must be a single number, got shape {tuple(alpha.shape)}")
            scale = float(alpha) / down.shape[0]
        up = up if scale == 1.0 else up.float() * scale
        patches[f"{layer}.weight"] = ("lora", [up, down])
    return patches
