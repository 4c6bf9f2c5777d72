"""Random single-file SD1.5 and SDXL checkpoints with the real names and shapes (what a
`.safetensors` from a model site holds: `model.diffusion_model.*`, `first_stage_model.*`, and
`cond_stage_model.transformer.text_model.*` for SD1.5 or `conditioner.embedders.{0,1}.*` for
SDXL's two text encoders), for running real hosts (Forge) without the real weights. Images from
them are noise; loading, patching, sampling and decoding are real.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch

from .unet_specs import FULL, Shape, ldm_unet_layout

VAE_CHANNELS = (128, 256, 512, 512)  # the SD VAE's ch * ch_mult
VAE_LATENT = 4


def _norm(prefix: str, channels: int) -> dict[str, Shape]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _conv(prefix: str, cout: int, cin: int, k: int = 3) -> dict[str, Shape]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _resnet(prefix: str, cin: int, cout: int) -> dict[str, Shape]:
    out = {**_norm(f"{prefix}.norm1", cin), **_conv(f"{prefix}.conv1", cout, cin),
           **_norm(f"{prefix}.norm2", cout), **_conv(f"{prefix}.conv2", cout, cout)}
    if cin != cout:
        out.update(_conv(f"{prefix}.nin_shortcut", cout, cin, 1))
    return out


def _middle(prefix: str, ch: int) -> dict[str, Shape]:
    out = {**_resnet(f"{prefix}.block_1", ch, ch), **_resnet(f"{prefix}.block_2", ch, ch),
           **_norm(f"{prefix}.attn_1.norm", ch)}
    for name in ("q", "k", "v", "proj_out"):
        out.update(_conv(f"{prefix}.attn_1.{name}", ch, ch, 1))
    return out


def ldm_vae_layout(channels: tuple[int, ...] = VAE_CHANNELS, latent: int = VAE_LATENT) -> dict[str, Shape]:
    """The LDM AutoencoderKL (`first_stage_model.` keys without the prefix)."""
    out: dict[str, Shape] = _conv("encoder.conv_in", channels[0], 3)
    cin = channels[0]
    for i, ch in enumerate(channels):
        for j in range(2):
            out.update(_resnet(f"encoder.down.{i}.block.{j}", cin, ch))
            cin = ch
        if i < len(channels) - 1:
            out.update(_conv(f"encoder.down.{i}.downsample.conv", ch, ch))
    top = channels[-1]
    out.update(_middle("encoder.mid", top))
    out.update(_norm("encoder.norm_out", top))
    out.update(_conv("encoder.conv_out", 2 * latent, top))
    out.update(_conv("decoder.conv_in", top, latent))
    out.update(_middle("decoder.mid", top))
    cin = top
    for i in reversed(range(len(channels))):
        ch = channels[i]
        for j in range(3):
            out.update(_resnet(f"decoder.up.{i}.block.{j}", cin, ch))
            cin = ch
        if i > 0:
            out.update(_conv(f"decoder.up.{i}.upsample.conv", ch, ch))
    out.update(_norm("decoder.norm_out", channels[0]))
    out.update(_conv("decoder.conv_out", 3, channels[0]))
    out.update(_conv("quant_conv", 2 * latent, 2 * latent, 1))
    out.update(_conv("post_quant_conv", latent, latent, 1))
    return out


def clip_l_layout() -> dict[str, Shape]:
    """OpenAI CLIP ViT-L/14's text model as SD1.5 checkpoints name it (`text_model.*`)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, vocab_size=49408)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    # transformers 5 dropped the `text_model` level that checkpoints (and transformers 4) have
    return {k if k.startswith("text_model.") else f"text_model.{k}": tuple(v.shape)
            for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def open_clip_bigg_layout(layers: int = 32, width: int = 1280, vocab: int = 49408,
                          context: int = 77) -> dict[str, Shape]:
    """OpenCLIP ViT-bigG/14's text tower as SDXL checkpoints name it (under
    `conditioner.embedders.1.model.`): fused in-projections, `ln_final`, `text_projection`."""
    out: dict[str, Shape] = {"positional_embedding": (context, width), "token_embedding.weight": (vocab, width)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}"
        out.update(_norm(f"{p}.ln_1", width))
        out.update({f"{p}.attn.in_proj_weight": (3 * width, width), f"{p}.attn.in_proj_bias": (3 * width,),
                    f"{p}.attn.out_proj.weight": (width, width), f"{p}.attn.out_proj.bias": (width,)})
        out.update(_norm(f"{p}.ln_2", width))
        out.update({f"{p}.mlp.c_fc.weight": (4 * width, width), f"{p}.mlp.c_fc.bias": (4 * width,),
                    f"{p}.mlp.c_proj.weight": (width, 4 * width), f"{p}.mlp.c_proj.bias": (width,)})
    out.update(_norm("ln_final", width))
    out.update({"text_projection": (width, width), "logit_scale": ()})
    return out


def sdxl_checkpoint_layout() -> dict[str, Shape]:
    """Every tensor of a single-file SDXL base checkpoint, with its shape."""
    out = {f"model.diffusion_model.{k}": s for k, s in ldm_unet_layout(FULL["sdxl"]).items()}
    out.update({f"first_stage_model.{k}": s for k, s in ldm_vae_layout().items()})
    out.update({f"conditioner.embedders.0.transformer.{k}": s for k, s in clip_l_layout().items()})
    out.update({f"conditioner.embedders.1.model.{k}": s for k, s in open_clip_bigg_layout().items()})
    return out


def sd15_checkpoint_layout() -> dict[str, Shape]:
    """Every tensor of a single-file SD1.5 checkpoint, with its shape."""
    out = {f"model.diffusion_model.{k}": s for k, s in ldm_unet_layout(FULL["sd15"]).items()}
    out.update({f"first_stage_model.{k}": s for k, s in ldm_vae_layout().items()})
    out.update({f"cond_stage_model.transformer.{k}": s for k, s in clip_l_layout().items()})
    return out


def _random(key: str, shape: Shape, gen: torch.Generator) -> torch.Tensor:
    """Values that keep activations finite through a deep network: He-scaled weights, zero
    biases, unit norm scales, and small random norm shifts (the images are noise, but not NaN).

    Norm shifts must not be zero: after a zero-shift LayerNorm every token has mean 0, so the
    whole text embedding can have a mean of exactly 0.0, and Forge's prompt emphasis divides
    by that mean (0/0 made some prompts NaN in Forge; real checkpoints have non-zero shifts)."""
    name = key.rsplit(".", 1)[-1]
    is_norm = len(shape) == 1 and ("norm" in key or "ln_" in key or "layer_norm" in key)
    if is_norm:
        return torch.randn(shape, generator=gen) * 0.05 if name == "bias" else torch.ones(shape)
    if name == "bias" or name.endswith("_bias"):
        return torch.zeros(shape)
    if not shape:  # OpenCLIP's logit_scale
        return torch.full(shape, 4.6052)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5


def random_tensors(layout: dict[str, Shape], seed: int = 0,
                   dtype: torch.dtype = torch.float16) -> Iterator[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    for key, shape in layout.items():
        yield key, _random(key, shape, gen).to(dtype)


def write_random_checkpoint(path: Path, seed: int = 0, family: str = "sd15") -> Path:
    """A random checkpoint at `path` (fp16: about 2.1 GB for SD1.5, 6.9 GB for SDXL); kept when
    already there."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_file():
        return path
    layouts = {"sd15": sd15_checkpoint_layout, "sdxl": sdxl_checkpoint_layout}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(dict(random_tensors(layouts[family](), seed)), str(tmp))
    tmp.replace(path)
    return path
