"""The two small networks of LayerDiffuse's transparent VAE, with the official state-dict keys.

UNet1024 (the transparent decoder) is a diffusers-style UNet with no time embedding: seven
levels (32, 32, 64, 128, 256, 512, 512 channels), plain ResNet blocks in the first four and
ResNet + self-attention blocks in the last three, conv down/up-sampling, an attention mid
block, and one extra input: the VAE latent through a zero-initialised 1x1 conv, added to the
features entering level 3 (the /8 grid the latent lives on). H and W must be multiples of 64
(six stride-2 stages). The SD decoders output alpha then straight RGB; the Flux decoder (16
latent channels) outputs straight RGB then alpha (`conventions.py`).

`UNet1024.forward` walks the diffusers blocks itself and runs their layers through
`_resnet` and `_self_attention`, which compute what the blocks' own forwards compute (within
1e-5; tests compare them) without their copies: q, k and v in one product, SiLU and the
residuals in place, no division by output scales of 1. On the 2-core CPU that is 1.16x per
pass at 1024x1024, channels-last (benchmarks/decoder_speed.py).

The offset encoder maps 4 channels at full resolution (SD: [alpha, padded RGB]; Flux: [padded
RGB, alpha]) to a latent offset of 4 (SD) or 16 (Flux) channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

try:  # diffusers >= 0.26
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
except ImportError:  # diffusers 0.25 (early Forge)
    from diffusers.models.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block

LATENT_LEVEL = 3  # the latent joins the features entering this level (H/8)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class UNet1024(nn.Module):
    """The transparent decoder. `forward(pixel [B,3,H,W] in [0,1], latent [B,C,H/8,W/8])`
    returns `[B,4,H,W]` (unclipped), in the channel order of its family."""

    def __init__(self, in_channels: int = 3, out_channels: int = 4,
                 block_out_channels: Sequence[int] = (32, 32, 64, 128, 256, 512, 512),
                 attention_levels: int = 3, layers_per_block: int = 2,
                 norm_num_groups: int = 4, attention_head_dim: int = 8, norm_eps: float = 1e-5,
                 latent_channels: int = 4):
        super().__init__()
        chans = list(block_out_channels)
        levels = len(chans)
        if levels <= LATENT_LEVEL:
            raise ValueError(f"UNet1024 needs more than {LATENT_LEVEL} levels, got {levels}")
        plain = levels - attention_levels
        common = dict(resnet_eps=norm_eps, resnet_act_fn="silu", resnet_groups=norm_num_groups,
                      attention_head_dim=attention_head_dim, temb_channels=None, dropout=0.0)

        self.conv_in = nn.Conv2d(in_channels, chans[0], kernel_size=3, padding=1)
        self.latent_conv_in = _zeroed(nn.Conv2d(latent_channels, chans[LATENT_LEVEL - 1], kernel_size=1))

        self.down_blocks = nn.ModuleList()
        for i, out_ch in enumerate(chans):
            self.down_blocks.append(get_down_block(
                "DownBlock2D" if i < plain else "AttnDownBlock2D",
                num_layers=layers_per_block, in_channels=chans[max(i - 1, 0)], out_channels=out_ch,
                add_downsample=i < levels - 1, downsample_padding=1, downsample_type="conv", **common))

        self.mid_block = UNetMidBlock2D(
            in_channels=chans[-1], temb_channels=None, resnet_eps=norm_eps, resnet_act_fn="silu",
            resnet_groups=norm_num_groups, attention_head_dim=attention_head_dim, add_attention=True)

        rev = chans[::-1]
        self.up_blocks = nn.ModuleList()
        for i, out_ch in enumerate(rev):
            self.up_blocks.append(get_up_block(
                "AttnUpBlock2D" if i < attention_levels else "UpBlock2D",
                num_layers=layers_per_block + 1, in_channels=rev[min(i + 1, levels - 1)],
                out_channels=out_ch, prev_output_channel=rev[max(i - 1, 0)],
                add_upsample=i < levels - 1, upsample_type="conv", **common))

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, chans[0], eps=norm_eps)
        self.conv_act = nn.SiLU(inplace=True)
        self.conv_out = nn.Conv2d(chans[0], out_channels, kernel_size=3, padding=1)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.down_blocks) - 1)

    def forward(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(pixel)
        skips = [h]
        for i, block in enumerate(self.down_blocks):
            if i == LATENT_LEVEL:
                h = h + self.latent_conv_in(latent)
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attention in zip(block.resnets, attentions):
                h = _resnet(resnet, h)
                if attention is not None:
                    h = _self_attention(attention, h)
                skips.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
                skips.append(h)
        h = _resnet(self.mid_block.resnets[0], h)
        h = _self_attention(self.mid_block.attentions[0], h)
        h = _resnet(self.mid_block.resnets[1], h)
        for block in self.up_blocks:
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attention in zip(block.resnets, attentions):
                h = _resnet(resnet, torch.cat([h, skips.pop()], dim=1))
                if attention is not None:
                    h = _self_attention(attention, h)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


def _resnet(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers' ResnetBlock2D as this network configures it (SiLU, no time embedding, no
    resampling, dropout 0, output scale 1), without its copies: SiLU in place, the residual
    added in place and no division by the scale of 1."""
    h = block.conv1(F.silu(block.norm1(x), inplace=True))
    h = block.conv2(F.silu(block.norm2(h), inplace=True))
    return h.add_(x if block.conv_shortcut is None else block.conv_shortcut(x))


def _self_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers' Attention as this network configures it (GroupNorm in, one head per 8
    channels, residual, output scale 1) with q, k and v as one product."""
    b, c, height, width = x.shape
    tokens = attn.group_norm(x).flatten(2).transpose(1, 2)
    weight = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])
    bias = torch.cat([attn.to_q.bias, attn.to_k.bias, attn.to_v.bias])
    q, k, v = F.linear(tokens, weight, bias).view(b, -1, 3, attn.heads, c // attn.heads).permute(2, 0, 3, 1, 4)
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
    h = attn.to_out[0](h).transpose(1, 2).reshape(b, c, height, width)
    return h.add_(x)


class LatentTransparencyOffsetEncoder(nn.Module):
    """`forward([B,4,H,W] in [0,1])` -> latent offset `[B,latent_channels,H/8,W/8]`."""

    CHANNELS = (4, 32, 32, 64, 64, 128, 128, 256, 256)
    STRIDES = (1, 1, 2, 1, 2, 1, 2, 1, 1)

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = self.CHANNELS + (latent_channels,)
        pairs = list(zip(channels[:-1], channels[1:]))
        for j, ((cin, cout), stride) in enumerate(zip(pairs, self.STRIDES)):
            conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=stride)
            if j == len(pairs) - 1:
                layers.append(_zeroed(conv))
            else:
                layers += [conv, nn.SiLU()]
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
