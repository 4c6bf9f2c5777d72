"""UNet shapes for tests: the real SD1.5 / SDXL UNets and tiny look-alikes.

`UNetSpec` describes a Stable Diffusion UNet the way the original (LDM / sgm) code builds it.
From one spec we derive both the diffusers config (to build a model) and, independently, the
LDM parameter names and shapes (`ldm_unet_layout`), which is what the official LayerDiffuse
files are keyed by. Tests build tiny models whose block structure matches the real family
(same block indices, same number of attention modules) with small channel counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Shape = tuple[int, ...]


@dataclass(frozen=True)
class UNetSpec:
    """Block structure of an SD UNet.

    `depths[level]` is the number of transformer blocks per attention module at that level
    (0: no attention). `adm_in_channels` is the size of SDXL's extra embedding input (pooled
    text + 6 time ids); 0 for SD1.5.
    """

    family: str
    model_channels: int
    channel_mult: tuple[int, ...]
    depths: tuple[int, ...]
    middle_depth: int
    context_dim: int
    linear_projection: bool
    adm_in_channels: int = 0
    addition_time_embed_dim: int = 0
    num_res_blocks: int = 2
    heads: tuple[int, ...] = (8, 8, 8, 8)
    norm_num_groups: int = 32
    in_channels: int = 4
    out_channels: int = 4

    @property
    def pooled_dim(self) -> int:
        """Size of the pooled text embedding (SDXL's second text encoder)."""
        return self.adm_in_channels - 6 * self.addition_time_embed_dim

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


SD15_FULL = UNetSpec("sd15", 320, (1, 2, 4, 4), (1, 1, 1, 0), 1, 768, False)
SDXL_FULL = UNetSpec("sdxl", 320, (1, 2, 4), (0, 2, 10), 10, 2048, True,
                     adm_in_channels=2816, addition_time_embed_dim=256, heads=(5, 10, 20))
SD15_TINY = UNetSpec("sd15", 16, (1, 2, 2, 2), (1, 1, 1, 0), 1, 24, False,
                     heads=(2, 2, 2, 2), norm_num_groups=4)
SDXL_TINY = UNetSpec("sdxl", 16, (1, 2, 2), (0, 1, 2), 2, 24, True,
                     adm_in_channels=16 + 6 * 4, addition_time_embed_dim=4,
                     heads=(2, 2, 2), norm_num_groups=4)

FULL = {"sd15": SD15_FULL, "sdxl": SDXL_FULL}
TINY = {"sd15": SD15_TINY, "sdxl": SDXL_TINY}


def diffusers_unet_config(spec: UNetSpec) -> dict[str, Any]:
    """Keyword arguments for `diffusers.UNet2DConditionModel` with this block structure."""
    attn = [d > 0 for d in spec.depths]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    # diffusers gives the mid block the last entry; levels without attention ignore theirs
    layers = [d if d else spec.middle_depth for d in spec.depths]
    if spec.depths[-1] and spec.depths[-1] != spec.middle_depth:
        raise ValueError("diffusers ties the mid-block depth to the last level's depth")
    config: dict[str, Any] = dict(
        sample_size=64, in_channels=spec.in_channels, out_channels=spec.out_channels,
        down_block_types=down, up_block_types=up, block_out_channels=spec.block_out_channels,
        layers_per_block=spec.num_res_blocks, transformer_layers_per_block=layers,
        attention_head_dim=spec.heads[:len(spec.channel_mult)],
        cross_attention_dim=spec.context_dim, use_linear_projection=spec.linear_projection,
        norm_num_groups=spec.norm_num_groups,
    )
    if spec.adm_in_channels:
        config.update(addition_embed_type="text_time",
                      addition_time_embed_dim=spec.addition_time_embed_dim,
                      projection_class_embeddings_input_dim=spec.adm_in_channels)
    return config


def ldm_unet_layout(spec: UNetSpec) -> dict[str, Shape]:
    """Every parameter of the original LDM UNet (`input_blocks...` names, no prefix) and its shape.

    Written from the structure of the LDM `UNetModel`: input blocks of ResBlock (+ spatial
    transformer) per layer plus a downsampler per level, a middle block, and output blocks
    with one extra layer per level and an upsampler at the end of each level but the last.
    """
    layout: dict[str, Shape] = {}
    mc = spec.model_channels
    emb = 4 * mc

    def linear(name: str, out: int, inp: int, bias: bool = True) -> None:
        layout[f"{name}.weight"] = (out, inp)
        if bias:
            layout[f"{name}.bias"] = (out,)

    def conv(name: str, out: int, inp: int, k: int) -> None:
        layout[f"{name}.weight"] = (out, inp, k, k)
        layout[f"{name}.bias"] = (out,)

    def norm(name: str, c: int) -> None:
        layout[f"{name}.weight"] = (c,)
        layout[f"{name}.bias"] = (c,)

    def resblock(p: str, cin: int, cout: int) -> None:
        norm(f"{p}.in_layers.0", cin)
        conv(f"{p}.in_layers.2", cout, cin, 3)
        linear(f"{p}.emb_layers.1", cout, emb)
        norm(f"{p}.out_layers.0", cout)
        conv(f"{p}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.skip_connection", cout, cin, 1)

    def projection(name: str, c: int) -> None:
        if spec.linear_projection:
            linear(name, c, c)
        else:
            conv(name, c, c, 1)

    def transformer(p: str, c: int, depth: int) -> None:
        norm(f"{p}.norm", c)
        projection(f"{p}.proj_in", c)
        for d in range(depth):
            b = f"{p}.transformer_blocks.{d}"
            for attn, kv in (("attn1", c), ("attn2", spec.context_dim)):
                linear(f"{b}.{attn}.to_q", c, c, bias=False)
                linear(f"{b}.{attn}.to_k", c, kv, bias=False)
                linear(f"{b}.{attn}.to_v", c, kv, bias=False)
                linear(f"{b}.{attn}.to_out.0", c, c)
            linear(f"{b}.ff.net.0.proj", 8 * c, c)  # GEGLU: value and gate
            linear(f"{b}.ff.net.2", c, 4 * c)
            for n in ("norm1", "norm2", "norm3"):
                norm(f"{b}.{n}", c)
        projection(f"{p}.proj_out", c)

    linear("time_embed.0", emb, mc)
    linear("time_embed.2", emb, emb)
    if spec.adm_in_channels:
        linear("label_emb.0.0", emb, spec.adm_in_channels)
        linear("label_emb.0.2", emb, emb)

    conv("input_blocks.0.0", mc, spec.in_channels, 3)
    skip_channels = [mc]
    ch, idx = mc, 1
    last = len(spec.channel_mult) - 1
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks):
            resblock(f"input_blocks.{idx}.0", ch, mult * mc)
            ch = mult * mc
            if spec.depths[level]:
                transformer(f"input_blocks.{idx}.1", ch, spec.depths[level])
            skip_channels.append(ch)
            idx += 1
        if level != last:
            conv(f"input_blocks.{idx}.0.op", ch, ch, 3)
            skip_channels.append(ch)
            idx += 1

    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch, spec.middle_depth)
    resblock("middle_block.2", ch, ch)

    idx = 0
    for level in reversed(range(len(spec.channel_mult))):
        out_ch = spec.channel_mult[level] * mc
        for i in range(spec.num_res_blocks + 1):
            resblock(f"output_blocks.{idx}.0", ch + skip_channels.pop(), out_ch)
            ch = out_ch
            sub = 1
            if spec.depths[level]:
                transformer(f"output_blocks.{idx}.1", ch, spec.depths[level])
                sub = 2
            if level and i == spec.num_res_blocks:
                conv(f"output_blocks.{idx}.{sub}.conv", ch, ch, 3)
            idx += 1

    norm("out.0", mc)
    conv("out.2", spec.out_channels, mc, 3)
    return layout


def attention_modules(layout: dict[str, Shape]) -> list[str]:
    """LDM names of the attention modules (`...transformer_blocks.N.attnK`), in the order of
    the SD1.5 attention-sharing file: input blocks, then output blocks, then the middle block,
    each by block index, attn1 before attn2."""
    names = {k.rsplit(".to_q.weight", 1)[0] for k in layout if k.endswith(".to_q.weight")}
    section = {"input_blocks": 0, "output_blocks": 1, "middle_block": 2}

    def order(name: str) -> tuple:
        parts = name.split(".")
        return (section[parts[0]],) + tuple(int(p) if p.isdigit() else p for p in parts[1:])

    return sorted(names, key=order)
