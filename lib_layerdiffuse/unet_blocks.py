"""The block structure of the SD1.5 and SDXL UNets, and the names of their blocks in the
original (LDM / sgm) code and in diffusers.

Both names are derived here from one description per family (how many levels, which levels
have attention, how many transformer blocks each), following how the LDM `UNetModel` numbers
its `input_blocks` / `output_blocks` and how diffusers groups the same layers into
`down_blocks` / `up_blocks`. Nothing is typed in by hand, so SD1.5's 12-block layout and
SDXL's 9-block layout come from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from .methods import Family


@dataclass(frozen=True)
class BlockStructure:
    """`depths[level]`: transformer blocks per attention module at that level (0: none)."""

    depths: tuple[int, ...]
    middle_depth: int
    num_res_blocks: int = 2

    @property
    def levels(self) -> int:
        return len(self.depths)


STRUCTURES: dict[Family, BlockStructure] = {
    Family.SD15: BlockStructure(depths=(1, 1, 1, 0), middle_depth=1),
    Family.SDXL: BlockStructure(depths=(0, 2, 10), middle_depth=10),
}

RESNET = "resnet"
OTHER = "other"

# ResBlock parameter groups: LDM name -> diffusers name.
RESNET_PARTS = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}


@lru_cache(maxsize=None)
def block_table(family: Union[Family, str]) -> dict[str, tuple[str, str]]:
    """LDM block prefix -> (diffusers prefix, kind); kind RESNET means the parameter names
    inside differ (`RESNET_PARTS`), any other block keeps its inner names."""
    s = STRUCTURES[Family(family)]
    table: dict[str, tuple[str, str]] = {
        "time_embed.0": ("time_embedding.linear_1", OTHER),
        "time_embed.2": ("time_embedding.linear_2", OTHER),
        "label_emb.0.0": ("add_embedding.linear_1", OTHER),
        "label_emb.0.2": ("add_embedding.linear_2", OTHER),
        "input_blocks.0.0": ("conv_in", OTHER),
        "middle_block.0": ("mid_block.resnets.0", RESNET),
        "middle_block.1": ("mid_block.attentions.0", OTHER),
        "middle_block.2": ("mid_block.resnets.1", RESNET),
        "out.0": ("conv_norm_out", OTHER),
        "out.2": ("conv_out", OTHER),
    }
    idx = 1
    for level in range(s.levels):
        for j in range(s.num_res_blocks):
            table[f"input_blocks.{idx}.0"] = (f"down_blocks.{level}.resnets.{j}", RESNET)
            if s.depths[level]:
                table[f"input_blocks.{idx}.1"] = (f"down_blocks.{level}.attentions.{j}", OTHER)
            idx += 1
        if level != s.levels - 1:
            table[f"input_blocks.{idx}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", OTHER)
            idx += 1
    idx = 0
    for up, level in enumerate(reversed(range(s.levels))):
        for j in range(s.num_res_blocks + 1):
            table[f"output_blocks.{idx}.0"] = (f"up_blocks.{up}.resnets.{j}", RESNET)
            sub = 1
            if s.depths[level]:
                table[f"output_blocks.{idx}.1"] = (f"up_blocks.{up}.attentions.{j}", OTHER)
                sub = 2
            if level and j == s.num_res_blocks:
                table[f"output_blocks.{idx}.{sub}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", OTHER)
            idx += 1
    return table


@lru_cache(maxsize=None)
def attention_modules(family: Union[Family, str]) -> tuple[str, ...]:
    """LDM names of every attention module (`...transformer_blocks.N.attn1/2`) in the order
    the SD1.5 attention-sharing files number them: input blocks, output blocks, then the
    middle block, each by block index, attn1 before attn2."""
    s = STRUCTURES[Family(family)]
    table = block_table(family)
    names = []
    for section in ("input_blocks", "output_blocks"):
        blocks = sorted((int(ldm.split(".")[1]), ldm, target) for ldm, (target, _) in table.items()
                        if ldm.startswith(section + ".") and ".attentions." in target)
        for _, prefix, target in blocks:
            level = int(target.split(".")[1])  # down_blocks.{level} / up_blocks.{levels - 1 - level}
            if section == "output_blocks":
                level = s.levels - 1 - level
            names.extend(f"{prefix}.transformer_blocks.{d}.{a}"
                         for d in range(s.depths[level]) for a in ("attn1", "attn2"))
    names.extend(f"middle_block.1.transformer_blocks.{d}.{a}"
                 for d in range(s.middle_depth) for a in ("attn1", "attn2"))
    return tuple(names)
