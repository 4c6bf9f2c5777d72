"""Random full-size FLUX.1-dev files for the real-Forge rig, in the formats users put in Forge.

Forge recognises FLUX.1 by its key names and then builds the full-size transformer whatever the
file holds (huggingface_guess hard-codes the configuration), so no tiny Flux can stand in. What
fits in the rig's memory on a CPU is what users with small cards run:
- the transformer as a GGUF file in Black Forest Labs' names, 2-D weights in Q4_0 (about 6.7 GB;
  written with the `gguf` package Forge ships in packages_3rdparty/), the rest in F32;
- T5-XXL in float8 (e4m3fn) safetensors (about 4.9 GB), CLIP-L and the VAE in float16, all in the
  key layouts of the public files (`t5xxl_fp8_e4m3fn`, `clip_l`, `ae` in diffusers' names);
- our LayerDiffuse-Flux files: the LoRA in diffusers' PEFT layout and the two converted VAE halves.
Values are random with small scales chosen so that activations stay finite through 57 blocks.
Every file is written to a `.part` name and renamed when complete; complete files are kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

FLUX_REPO = Path("backend") / "huggingface" / "black-forest-labs" / "FLUX.1-dev"
TRANSFORMER = "rig-random-flux1-dev-Q4_0.gguf"
MODULES = {"t5": "rig-random-t5xxl_fp8_e4m3fn.safetensors", "clip_l": "rig-random-clip_l.safetensors",
           "vae": "rig-random-flux-ae.safetensors"}
LORA_RANK = 64
Q4_BLOCK, Q4_BYTES = 32, 18  # Q4_0: 32 weights in 18 bytes (a float16 scale, 16 bytes of 4-bit codes)
Q4_CODE_STD = 4.61  # standard deviation of (code - 8) for codes uniform in 0..15


def _written(path: Path, write: Callable[[Path], None]) -> Path:
    if path.is_file():
        return path
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    write(part)
    part.replace(path)
    return path


def _q4_0(rows: int, cols: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Random Q4_0 bytes of a rows x cols weight whose values have standard deviation `scale`."""
    blocks = rows * cols // Q4_BLOCK
    out = np.empty((blocks, Q4_BYTES), np.uint8)
    out[:, :2] = np.frombuffer(np.float16(scale / Q4_CODE_STD).tobytes(), np.uint8)
    out[:, 2:] = rng.integers(0, 256, (blocks, Q4_BYTES - 2), dtype=np.uint8)
    return out.reshape(rows, cols // Q4_BLOCK * Q4_BYTES)


def _small_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """F32 values for a 1-D parameter (norm scales near 1, biases near 0) or a small 2-D weight."""
    if len(shape) == 1:
        base = 1.0 if name.endswith(".scale") or "norm" in name else 0.0
        return (base + rng.standard_normal(shape) * 0.02).astype(np.float32)
    return (rng.standard_normal(shape) * 0.5 / math.sqrt(shape[-1])).astype(np.float32)


def write_gguf(path: Path, layout: dict[str, tuple[int, ...]], seed: int = 0) -> Path:
    """A GGUF file of random tensors named and shaped as in `layout`, streamed tensor by tensor:
    2-D weights of at least 64k values whose rows hold whole Q4_0 blocks in Q4_0 (standard
    deviation 0.5 / sqrt(columns)), everything else in F32."""
    import gguf

    def write(part: Path) -> None:
        writer = gguf.GGUFWriter(str(part), arch="flux")
        plan = []
        for name, shape in layout.items():
            quantised = len(shape) == 2 and shape[1] % Q4_BLOCK == 0 and shape[0] * shape[1] >= 1 << 16
            if quantised:
                row_bytes = shape[1] // Q4_BLOCK * Q4_BYTES
                writer.add_tensor_info(name, (shape[0], row_bytes), np.dtype(np.uint8), shape[0] * row_bytes,
                                       raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            else:
                writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * math.prod(shape))
            plan.append((name, shape, quantised))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        rng = np.random.default_rng(seed)
        for name, shape, quantised in plan:
            if quantised:
                writer.write_tensor_data(_q4_0(shape[0], shape[1], 0.5 / math.sqrt(shape[1]), rng))
            else:
                writer.write_tensor_data(_small_value(name, shape, rng))
        writer.close()

    return _written(path, write)


def write_transformer(path: Path) -> Path:
    """FLUX.1-dev's transformer in Black Forest Labs' names as a Q4_0 GGUF."""
    from lib_layerdiffuse.testing.flux import bfl_layout, meta_flux_transformer

    model = meta_flux_transformer()
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    mlp = model.single_transformer_blocks[0].proj_mlp.out_features
    return write_gguf(path, bfl_layout({k: tuple(v.shape) for k, v in model.state_dict().items()}, hidden, mlp))


def _random_state(model: torch.nn.Module, dtype: torch.dtype, big_dtype: torch.dtype, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in model.state_dict().items():
        if value.dim() == 1:
            base = 1.0 if "norm" in name or name.endswith("weight") else 0.0
            out[name] = (base + torch.randn(value.shape, generator=gen) * 0.02).to(dtype)
        else:
            fan_in = math.prod(value.shape[1:])
            out[name] = (torch.randn(value.shape, generator=gen) * 0.5 / math.sqrt(fan_in)).to(big_dtype)
    return out


def write_t5(path: Path, forge_root: Path) -> Path:
    """T5-XXL's encoder (FLUX.1's text_encoder_2) with float8 weights and float16 norms."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    config = T5Config.from_pretrained(str(forge_root / FLUX_REPO / "text_encoder_2"))
    with torch.device("meta"):
        model = T5EncoderModel(config)

    def write(part: Path) -> None:
        state = _random_state(model, torch.float16, torch.float8_e4m3fn, 1)
        state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; the public file has only that
        save_file(state, str(part))

    return _written(path, write)


def write_clip_l(path: Path, forge_root: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(forge_root / FLUX_REPO / "text_encoder"))
    with torch.device("meta"):
        model = CLIPTextModel(config)

    def write(part: Path) -> None:
        state = _random_state(model, torch.float16, torch.float16, 2)
        # the public clip_l file's names; recent transformers leave out the `text_model.` level
        save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, str(part))

    return _written(path, write)


def write_vae(path: Path, forge_root: Path) -> Path:
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    config = json.loads((forge_root / FLUX_REPO / "vae" / "config.json").read_text())
    with torch.device("meta"):
        model = AutoencoderKL.from_config(config)
    return _written(path, lambda part: save_file(_random_state(model, torch.float16, torch.float16, 3), str(part)))


def write_layer_files(folder: Path) -> list[Path]:
    """layerlora.safetensors (rank `LORA_RANK`) and the converted decoder and encoder, checked
    against the catalog's layouts."""
    from safetensors.torch import save_file

    from lib_layerdiffuse.testing.flux import flux_vae_state_dict, lora_layout, meta_flux_transformer
    from lib_layerdiffuse.testing.layer_files import write_weight_file
    from lib_layerdiffuse.vae.convert import split_flux_vae
    from lib_layerdiffuse.weights.catalog import CATALOG

    def lora(part: Path) -> None:
        gen = torch.Generator().manual_seed(4)
        layout = lora_layout(meta_flux_transformer(), LORA_RANK)
        save_file({k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in layout.items()}, str(part))

    paths = [_written(folder / "layerlora.safetensors", lora)]
    halves = None
    for role in ("decoder", "encoder"):
        name = f"layer_flux_vae_transparent_{role}.safetensors"
        if not (folder / name).is_file():
            halves = halves or dict(zip(("decoder", "encoder"),
                                        split_flux_vae(flux_vae_state_dict(seed=5, with_sd_vae=False), "rig")))
            written = write_weight_file(folder / name, halves[role], CATALOG[name].family, role)
            assert written.layout_sha256 == CATALOG[name].layout_sha256, name
        paths.append(folder / name)
    return paths


def write_all(cache: Path, forge_root: Path) -> tuple[Path, dict[str, Path], list[Path]]:
    """(transformer, {module: path}, layer files), each written once into `cache`."""
    transformer = write_transformer(cache / TRANSFORMER)
    modules = {"t5": write_t5(cache / MODULES["t5"], forge_root),
               "clip_l": write_clip_l(cache / MODULES["clip_l"], forge_root),
               "vae": write_vae(cache / MODULES["vae"], forge_root)}
    return transformer, modules, write_layer_files(cache / "flux-layer")
