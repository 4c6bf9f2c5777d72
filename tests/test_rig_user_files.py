"""The real-Forge rig's random user files, at a small size: LoRAs (e2e/forge/lora_files.py) with
kohya-ss key names for the diffusers modules of SD1.5 (what Forge's LoRA loader maps), every
module that SD1.5 attention sharing replaces among them, and down/up shapes that multiply to
the weights; the ControlNet (e2e/forge/controlnet_files.py) in the official v1.1 layout that
Forge's loader recognises."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lib_layerdiffuse.methods import Family
from lib_layerdiffuse.patches.names import ldm_to_diffusers
from lib_layerdiffuse.testing.unet_specs import FULL, TINY, ldm_unet_layout
from lib_layerdiffuse.unet_blocks import attention_modules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "forge"))

import controlnet_files  # noqa: E402
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


def test_sdxl_lora_has_kohya_names_of_sdxl_modules_and_its_base_version(tmp_path):
    spec = TINY["sdxl"]
    path = lora_files.write_kohya_lora(tmp_path / "xl.safetensors", 2, spec, text=False,
                                       modules=lora_files.ATTENTION_TARGETS)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert metadata["ss_base_model_version"].startswith("sdxl")
    assert set(lora_files.unet_targets(spec, lora_files.ATTENTION_TARGETS)) == {
        k.rsplit(".", 2)[0] for k in keys if k.endswith(".weight")}
    assert not any(k.startswith("lora_te") for k in keys)
    # at full size: every projection SDXL attention injection patches too, in SDXL's diffusers naming
    full = lora_files.unet_targets(FULL["sdxl"])
    for module in attention_modules(Family.SDXL):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            assert "lora_unet_" + ldm_to_diffusers(f"{module}.{proj}", "sdxl").replace(".", "_") in full


def test_text_encoder_keys_and_a_written_file_is_kept(tmp_path):
    path = lora_files.write_kohya_lora(tmp_path / "b.safetensors", 1, TINY["sd15"])
    keys = load_file(str(path)).keys()
    assert "lora_te_text_model_encoder_layers_11_self_attn_out_proj.lora_up.weight" in keys
    stamp = path.stat().st_mtime_ns
    assert lora_files.write_kohya_lora(path, 2, TINY["sd15"]).stat().st_mtime_ns == stamp


def test_controlnet_has_the_official_layout_of_the_unet_it_belongs_to(tmp_path):
    spec = TINY["sd15"]
    path = controlnet_files.write_controlnet(tmp_path / "cn.safetensors", 0, spec)
    tensors = load_file(str(path))
    assert all(k.startswith("control_model.") for k in tensors)
    assert "control_model.zero_convs.0.0.weight" in tensors  # what Forge looks for first
    unet = ldm_unet_layout(spec)
    for key, shape in unet.items():
        if key.startswith(("input_blocks.", "middle_block.", "time_embed.")):
            assert tuple(tensors["control_model." + key].shape) == tuple(shape), key
    hint_in = tensors["control_model.input_hint_block.0.weight"]
    hint_out = tensors["control_model.input_hint_block.14.weight"]
    assert hint_in.shape[1] == 3 and hint_out.shape[0] == spec.model_channels
    blocks = sorted({int(k.split(".")[2]) for k in tensors if ".input_blocks." in k})
    zero = [tensors[f"control_model.zero_convs.{i}.0.weight"].shape[0] for i in blocks]
    assert zero[0] == spec.model_channels and zero[-1] == spec.model_channels * spec.channel_mult[-1]
    assert len(zero) == len(blocks) == 3 * len(spec.channel_mult)
    name = controlnet_files.listed_name(path)
    assert name.startswith("cn [") and len(name) == len("cn [12345678]")
    # the name each host lists: hashed (current and early Forge), bare (Neo)
    assert controlnet_files.host_name(path, ["None", "other [00000000]", name]) == name
    assert controlnet_files.host_name(path, ["None", "cn"]) == "cn"
    assert controlnet_files.host_name(path, ["None"]) == name
