"""The real-Forge rig's random user LoRAs (e2e/forge/lora_files.py), at a small size: kohya-ss
key names for the diffusers modules of SD1.5 (what Forge's LoRA loader maps), every module that
SD1.5 attention sharing replaces among them, and down/up shapes that multiply to the weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lib_layerdiffuse.methods import Family
from lib_layerdiffuse.patches.names import ldm_to_diffusers
from lib_layerdiffuse.testing.unet_specs import TINY, ldm_unet_layout
from lib_layerdiffuse.unet_blocks import attention_modules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "forge"))

import lora_files  # noqa: E402


def test_kohya_lora_covers_the_shared_attention_and_merges_to_the_weight_shapes(tmp_path):
    spec = TINY["sd15"]
    path = lora_files.write_kohya_lora(tmp_path / "a.safetensors", 0, spec, text=False)
    tensors = load_file(str(path))
    layout = ldm_unet_layout(spec)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    for module in attention_modules(Family.SD15):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            kohya = "lora_unet_" + ldm_to_diffusers(f"{module}.{proj}", "sd15").replace(".", "_")
            assert kohya in names, kohya
    by_kohya = {"lora_unet_" + ldm_to_diffusers(k[:-len(".weight")], "sd15").replace(".", "_"): shape
                for k, shape in layout.items() if k.endswith(".weight")}
    for name in names:
        down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
        assert float(tensors[f"{name}.alpha"]) == lora_files.RANK == down.shape[0]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(by_kohya[name])
        assert torch.isfinite(delta).all() and 0 < delta.abs().max() < 0.1


def test_text_encoder_keys_and_a_written_file_is_kept(tmp_path):
    path = lora_files.write_kohya_lora(tmp_path / "b.safetensors", 1, TINY["sd15"])
    keys = load_file(str(path)).keys()
    assert "lora_te_text_model_encoder_layers_11_self_attn_out_proj.lora_up.weight" in keys
    stamp = path.stat().st_mtime_ns
    assert lora_files.write_kohya_lora(path, 2, TINY["sd15"]).stat().st_mtime_ns == stamp
