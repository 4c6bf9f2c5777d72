"""The real-Forge rig's random Flux files (e2e/forge/flux_files.py), at small sizes: the GGUF
reads back with the names, shapes, types and value scales intended, and the text encoder and VAE
files carry the key names of the public files Forge recognises."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "forge"))

import flux_files  # noqa: E402

gguf = pytest.importorskip("gguf")


def test_gguf_holds_q4_0_weights_with_the_intended_scale_and_f32_for_the_rest(tmp_path):
    layout = {"double_blocks.0.img_attn.qkv.weight": (384, 256), "double_blocks.0.img_attn.qkv.bias": (384,),
              "double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (300, 64),
              "small.weight": (8, 32)}
    path = flux_files.write_gguf(tmp_path / "t.gguf", layout)
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert list(tensors) == list(layout)
    for name, shape in layout.items():
        # GGUF lists dimensions fastest first; Forge reverses them back
        assert tuple(reversed([int(n) for n in tensors[name].shape])) == shape, name
    qkv = tensors["double_blocks.0.img_attn.qkv.weight"]
    assert qkv.tensor_type == gguf.GGMLQuantizationType.Q4_0
    values = gguf.quants.dequantize(qkv.data, qkv.tensor_type)
    assert values.shape == (384, 256)
    assert np.std(values) == pytest.approx(0.5 / np.sqrt(256), rel=0.05)
    assert tensors["small.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # too small to quantise
    assert tensors["img_in.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # 300 x 64 < 64k values
    scale = np.asarray(tensors["double_blocks.0.img_attn.norm.key_norm.scale"].data)
    assert abs(float(scale.mean()) - 1.0) < 0.01 and np.isfinite(scale).all()


def test_a_complete_file_is_kept_and_a_broken_write_leaves_no_file(tmp_path, monkeypatch):
    path = flux_files.write_gguf(tmp_path / "t.gguf", {"w": (64, 1024)})
    stamp = path.stat().st_mtime_ns
    assert flux_files.write_gguf(path, {"other": (1,)}).stat().st_mtime_ns == stamp

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(flux_files, "_small_value", fail)
    with pytest.raises(RuntimeError):
        flux_files.write_gguf(tmp_path / "bad.gguf", {"w": (64, 1024), "b": (64,)})
    assert not (tmp_path / "bad.gguf").exists()


def test_text_encoder_files_carry_the_public_key_names(tmp_path, monkeypatch):
    from safetensors import safe_open
    from transformers import CLIPTextConfig, T5Config

    tiny_clip = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, max_position_embeddings=16)
    tiny_t5 = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    monkeypatch.setattr(CLIPTextConfig, "from_pretrained", classmethod(lambda cls, *a, **k: tiny_clip))
    monkeypatch.setattr(T5Config, "from_pretrained", classmethod(lambda cls, *a, **k: tiny_t5))
    clip = flux_files.write_clip_l(tmp_path / "clip.safetensors", tmp_path)
    t5 = flux_files.write_t5(tmp_path / "t5.safetensors", tmp_path)
    with safe_open(str(clip), "pt") as f:
        keys = set(f.keys())
    # Forge finds CLIP-L in an extra module by this key
    assert "text_model.encoder.layers.0.layer_norm1.bias" in keys and all(k.startswith("text_model.") for k in keys)
    with safe_open(str(t5), "pt") as f:
        keys = set(f.keys())
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    assert "encoder.block.0.layer.0.SelfAttention.k.weight" in keys and "shared.weight" in keys
    assert "encoder.embed_tokens.weight" not in keys
    assert dtypes["encoder.block.0.layer.0.SelfAttention.k.weight"] == "F8_E4M3"
    assert dtypes["encoder.final_layer_norm.weight"] == "F16"
