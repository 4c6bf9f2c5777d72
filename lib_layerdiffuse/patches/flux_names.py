"""Where a diffusers Flux transformer weight lives in Black Forest Labs' layout (what Forge runs).

diffusers splits some of BFL's fused linear layers: the double blocks' `qkv` into `to_q`,
`to_k`, `to_v` (and `add_*_proj` for the text stream), the single blocks' `linear1` into
`to_q`, `to_k`, `to_v` and `proj_mlp`. A diffusers weight then maps to rows of a BFL weight:
`(bfl name, (dim 0, first row, rows))`. One more difference: the final modulation
(`norm_out.linear`, BFL `final_layer.adaLN_modulation.1`) emits (scale, shift) in diffusers and
(shift, scale) in BFL, so its output rows swap halves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_QKV = {"attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
               "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
               "attn.add_v_proj": ("txt_attn.qkv", 2)}
_DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                 "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_SINGLE_FUSED = {"attn.to_q": 0, "attn.to_k": 1, "attn.to_v": 2}
_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class BflTarget:
    """A diffusers linear weight's place in BFL's layout."""

    name: str  # BFL parameter name, e.g. "double_blocks.0.img_attn.qkv.weight"
    rows: Optional[tuple[int, int]] = None  # (first row, row count) inside a fused weight
    swap_halves: bool = False  # output rows come in the other order (final modulation)


def diffusers_to_bfl(name: str, hidden: int = 3072, mlp_hidden: int = 12288) -> BflTarget:
    """The BFL place of diffusers Flux parameter `name` (`<layer>.weight` or `.bias`), for a
    transformer of width `hidden` and single-block MLP width `mlp_hidden`. KeyError when the
    parameter has no BFL counterpart."""
    layer, _, kind = name.rpartition(".")
    if kind not in ("weight", "bias") or not layer:
        raise KeyError(f"{name!r} is not a weight or bias name")
    if layer == "norm_out.linear":
        return BflTarget(f"final_layer.adaLN_modulation.1.{kind}", swap_halves=True)
    if layer in _TOP:
        return BflTarget(f"{_TOP[layer]}.{kind}")
    match = _BLOCK.match(layer)
    if match:
        blocks, index, inner = match.groups()
        norms = _DOUBLE_NORMS if blocks == "transformer_blocks" else _SINGLE_NORMS
        if inner in norms and kind == "weight":  # RMSNorm: BFL calls its weight `scale`
            prefix = "double_blocks" if blocks == "transformer_blocks" else "single_blocks"
            return BflTarget(f"{prefix}.{index}.{norms[inner]}.scale")
        if blocks == "transformer_blocks":
            if inner in _DOUBLE:
                return BflTarget(f"double_blocks.{index}.{_DOUBLE[inner]}.{kind}")
            if inner in _DOUBLE_QKV:
                fused, part = _DOUBLE_QKV[inner]
                return BflTarget(f"double_blocks.{index}.{fused}.{kind}", (part * hidden, hidden))
        else:
            if inner in _SINGLE:
                return BflTarget(f"single_blocks.{index}.{_SINGLE[inner]}.{kind}")
            if inner in _SINGLE_FUSED:
                return BflTarget(f"single_blocks.{index}.linear1.{kind}", (_SINGLE_FUSED[inner] * hidden, hidden))
            if inner == "proj_mlp":
                return BflTarget(f"single_blocks.{index}.linear1.{kind}", (3 * hidden, mlp_hidden))
    raise KeyError(f"{name!r} has no place in the BFL Flux layout (a LoRA on it cannot be applied in Forge)")
