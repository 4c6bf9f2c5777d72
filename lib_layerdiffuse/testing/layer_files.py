"""LayerDiffuse weight files in the official formats, for any UNet layout (tiny or real).

The key grammar follows the published files (spec sections 3 and 7):
- SDXL "frozen patch" files: `diffusion_model.<ldm key>::<lora|diff>::<index>`; LoRA index 0 is
  the up matrix `[out, rank]`, index 1 the down matrix `[rank, in]`; a diff holds a full delta,
  conv_in's delta being wider (8 or 12 input channels) for the layer models.
- SD1.5 attention-sharing files: the state dict of the attention-sharing patcher, one entry
  per attention module in `attention_modules` order.
- The offset encoder: `blocks.{0,2,...,16}` convolutions.

Layouts map key -> shape; `random_state_dict` + `write_weight_file` fill them with seeded random fp16 values.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import save_file

from ..methods import Family
from ..weights.catalog import WeightFile, file_for
from ..weights.integrity import layout_sha256
from .unet_specs import Shape, UNetSpec, attention_modules, ldm_unet_layout

PREFIX = "diffusion_model."
_ATTN_PROJ = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_QKV = re.compile(r"\.attn[12]\.to_[qkv]\.weight$")
_RESBLOCK = re.compile(r"\.(in_layers|emb_layers|out_layers|skip_connection)\.")
_DOWNSAMPLER = re.compile(r"^input_blocks\.\d+\.0\.op\.")
_UPSAMPLER = re.compile(r"^output_blocks\.\d+\.\d\.conv\.")
_EMBEDDING = re.compile(r"^(time_embed|label_emb)\.")
CONV_IN = "input_blocks.0.0.weight"


def _widen(key: str, shape: Shape, conv_in_channels: int) -> Shape:
    if key == CONV_IN and conv_in_channels != shape[1]:
        return (shape[0], conv_in_channels) + shape[2:]
    return shape


def lora_patch_layout(ldm: dict[str, Shape], rank: int = 256) -> dict[str, Shape]:
    """Attention injection (layer_xl_transparent_attn): LoRA on q/k/v/out of attn1 and attn2."""
    out: dict[str, Shape] = {}
    for key, (rows, cols) in ((k, s) for k, s in ldm.items() if _ATTN_PROJ.search(k)):
        out[f"{PREFIX}{key}::lora::0"] = (rows, rank)
        out[f"{PREFIX}{key}::lora::1"] = (rank, cols)
    return out


def full_diff_layout(ldm: dict[str, Shape], conv_in_channels: int = 4) -> dict[str, Shape]:
    """Conv injection / bgble2fg coverage: every tensor but attention q/k/v and the embeddings."""
    return {f"{PREFIX}{k}::diff::0": _widen(k, s, conv_in_channels)
            for k, s in ldm.items() if not _QKV.search(k) and not _EMBEDDING.search(k)}


def blend_diff_layout(ldm: dict[str, Shape], conv_in_channels: int) -> dict[str, Shape]:
    """The lighter layer models (fg2ble, bg2ble, fgble2bg): ResBlocks, sampler convs,
    conv_in (widened) and the output norm/conv; no transformer weights, no embeddings."""
    def covered(k: str) -> bool:
        return bool(_RESBLOCK.search(k) or _DOWNSAMPLER.search(k) or _UPSAMPLER.search(k)
                    or k.startswith("input_blocks.0.0.") or k.startswith("out."))
    return {f"{PREFIX}{k}::diff::0": _widen(k, s, conv_in_channels) for k, s in ldm.items() if covered(k)}


def attention_sharing_layout(ldm: dict[str, Shape], frames: int, use_control: bool,
                             rank: int = 256, control_channels: int = 256) -> dict[str, Shape]:
    """SD1.5 attention-sharing patcher state dict (layer_sd15_*)."""
    out: dict[str, Shape] = {}
    for i, module in enumerate(attention_modules(ldm)):
        p = f"hookers.layers.{i}"
        for proj, key in (("to_q_lora", "to_q"), ("to_k_lora", "to_k"),
                          ("to_v_lora", "to_v"), ("to_out_lora", "to_out.0")):
            rows, cols = ldm[f"{module}.{key}.weight"]
            for f in range(frames):
                out[f"{p}.{proj}.{f}.down.weight"] = (rank, cols)
                out[f"{p}.{proj}.{f}.up.weight"] = (rows, rank)
        hidden = ldm[f"{module}.to_k.weight"][0]
        for name in ("temporal_i", "temporal_q", "temporal_k", "temporal_v", "temporal_o"):
            out[f"{p}.{name}.weight"] = (hidden, hidden)
            out[f"{p}.{name}.bias"] = (hidden,)
        out[f"{p}.temporal_n.weight"] = (hidden,)
        out[f"{p}.temporal_n.bias"] = (hidden,)
        if use_control:
            for f in range(frames):
                c = f"{p}.control_convs.{f}"
                out[f"{c}.0.weight"] = (control_channels, control_channels, 3, 3)
                out[f"{c}.0.bias"] = (control_channels,)
                out[f"{c}.2.weight"] = (hidden, control_channels, 1, 1)
                out[f"{c}.2.bias"] = (hidden,)
    if use_control:
        out.update(control_encoder_layout(control_channels))
    return out


def control_encoder_layout(width: int = 256) -> dict[str, Shape]:
    """`kwargs_encoder`: image -> feature maps at /8 (8 convs), /16, /32, /64 (2 convs each)."""
    stem = [3, 32, 32, 64, 64, 128, 128, width, width]
    out: dict[str, Shape] = {}
    for j, (cin, cout) in enumerate(zip(stem[:-1], stem[1:])):
        out[f"kwargs_encoder.blocks_0.{2 * j}.weight"] = (cout, cin, 3, 3)
        out[f"kwargs_encoder.blocks_0.{2 * j}.bias"] = (cout,)
    for b in (1, 2, 3):
        for j in (0, 2):
            out[f"kwargs_encoder.blocks_{b}.{j}.weight"] = (width, width, 3, 3)
            out[f"kwargs_encoder.blocks_{b}.{j}.bias"] = (width,)
    return out


OFFSET_ENCODER_CHANNELS = (4, 32, 32, 64, 64, 128, 128, 256, 256, 4)


def offset_encoder_layout(channels: Iterable[int] = OFFSET_ENCODER_CHANNELS) -> dict[str, Shape]:
    """LatentTransparencyOffsetEncoder: 9 convs 3x3 at `blocks.0, 2, ..., 16`."""
    ch = list(channels)
    out: dict[str, Shape] = {}
    for j, (cin, cout) in enumerate(zip(ch[:-1], ch[1:])):
        out[f"blocks.{2 * j}.weight"] = (cout, cin, 3, 3)
        out[f"blocks.{2 * j}.bias"] = (cout,)
    return out


TINY_DECODER_CONFIG = {"block_out_channels": (8, 8, 8, 8, 8, 8, 8)}


def decoder_layout(**config) -> dict[str, Shape]:
    """UNet1024 state-dict layout (real size by default; `TINY_DECODER_CONFIG` for tests)."""
    from ..vae.networks import UNet1024

    with torch.device("meta"):
        model = UNet1024(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def unet_file_layout(file_name: str, spec: UNetSpec, rank: int = 256,
                     control_channels: int = 256) -> dict[str, Shape]:
    """Layout of an official UNet-side file for a UNet of `spec`'s structure."""
    ldm = ldm_unet_layout(spec)
    layouts = {
        "layer_xl_transparent_attn.safetensors": lambda: lora_patch_layout(ldm, rank),
        "layer_xl_transparent_conv.safetensors": lambda: full_diff_layout(ldm),
        "layer_xl_fg2ble.safetensors": lambda: blend_diff_layout(ldm, 8),
        "layer_xl_bg2ble.safetensors": lambda: blend_diff_layout(ldm, 8),
        "layer_xl_fgble2bg.safetensors": lambda: blend_diff_layout(ldm, 12),
        "layer_xl_bgble2fg.safetensors": lambda: full_diff_layout(ldm, 12),
        "layer_sd15_transparent_attn.safetensors":
            lambda: attention_sharing_layout(ldm, 1, False, rank, control_channels),
        "layer_sd15_joint.safetensors":
            lambda: attention_sharing_layout(ldm, 3, False, rank, control_channels),
        "layer_sd15_fg2bg.safetensors":
            lambda: attention_sharing_layout(ldm, 2, True, rank, control_channels),
        "layer_sd15_bg2fg.safetensors":
            lambda: attention_sharing_layout(ldm, 2, True, rank, control_channels),
    }
    if file_name not in layouts:
        raise ValueError(f"{file_name} is not a UNet-side LayerDiffuse file")
    return layouts[file_name]()


def random_state_dict(layout: dict[str, Shape], seed: int = 0, std: float = 0.02,
                      dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Seeded normal values for every key (deterministic across runs and machines)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=gen) * std).to(dtype) for k, s in layout.items()}


def keep_control_signal(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rescale the control encoder's conv weights to He initialisation: with a small uniform
    std the image would fade out over its eight layers and tests could not see it."""
    out = dict(tensors)
    for key, t in tensors.items():
        if key.startswith("kwargs_encoder.") and key.endswith(".weight"):
            fan_in = t[0].numel()
            out[key] = (t.float() / t.float().std() * (2.0 / fan_in) ** 0.5).to(t.dtype)
    return out


def write_weight_file(path: Path, tensors: dict[str, torch.Tensor], family: Family, role: str) -> WeightFile:
    """Write tensors as safetensors and return a catalog entry pinning the written bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    data = path.read_bytes()
    layout = layout_sha256({k: tuple(v.shape) for k, v in tensors.items()})
    return WeightFile(path.name, hashlib.sha256(data).hexdigest(), len(data), family, role, layout)


def write_unet_files(folder: Path, spec: UNetSpec, names: Optional[Iterable[str]] = None,
                     rank: int = 4, control_channels: int = 8, seed: int = 0) -> dict[str, WeightFile]:
    """Write tiny versions of the official UNet-side files of `spec.family` (or `names`) plus
    that family's offset encoder (real size, it is small) and a tiny decoder
    (`TINY_DECODER_CONFIG`), under their official names; returns a catalog for them."""
    from ..weights.catalog import CATALOG

    fam = Family(spec.family)
    if names is None:
        names = [n for n, e in CATALOG.items() if e.family is fam and e.role not in ("decoder", "encoder")]
    catalog: dict[str, WeightFile] = {}
    for i, name in enumerate(names):
        layout = unet_file_layout(name, spec, rank, control_channels)
        tensors = keep_control_signal(random_state_dict(layout, seed + i))
        catalog[name] = write_weight_file(Path(folder) / name, tensors, fam, CATALOG[name].role)
    for role, layout in (("encoder", offset_encoder_layout()), ("decoder", decoder_layout(**TINY_DECODER_CONFIG))):
        name = file_for(fam, role)
        catalog[name] = write_weight_file(Path(folder) / name,
                                          random_state_dict(layout, seed + len(catalog), std=0.1), fam, role)
    return catalog
