"""The test builders describe the real models: layouts checked against diffusers' real-size
UNets on the meta device and against the published file sizes."""

import math
import socket

import pytest
import torch

from lib_layerdiffuse.testing.layer_files import (
    OFFSET_ENCODER_CHANNELS,
    offset_encoder_layout,
    unet_file_layout,
    write_unet_files,
)
from lib_layerdiffuse.testing.models import meta_unet, tiny_unet, tiny_vae
from lib_layerdiffuse.testing.network import NetworkAccessError, loopback_only
from lib_layerdiffuse.testing.unet_specs import FULL, TINY, attention_modules, ldm_unet_layout
from lib_layerdiffuse.weights import CATALOG, WeightStore

# Published file sizes (fp16, 2 bytes a value), spec section 2, in MB.
PUBLISHED_MB = {
    "layer_xl_transparent_attn.safetensors": 743, "layer_xl_transparent_conv.safetensors": 3620,
    "layer_xl_fg2ble.safetensors": 702, "layer_xl_bg2ble.safetensors": 702,
    "layer_xl_fgble2bg.safetensors": 702, "layer_xl_bgble2fg.safetensors": 3620,
    "layer_sd15_transparent_attn.safetensors": 350, "layer_sd15_joint.safetensors": 554,
    "layer_sd15_fg2bg.safetensors": 563, "layer_sd15_bg2fg.safetensors": 563,
}


@pytest.mark.parametrize("family, params", [("sd15", 859_520_964), ("sdxl", 2_567_463_684)])
def test_ldm_layout_matches_the_real_unet_built_on_meta(family, params):
    model = meta_unet(family)
    assert all(p.is_meta for p in model.parameters())
    layout = ldm_unet_layout(FULL[family])
    assert sum(math.prod(s) for s in layout.values()) == params
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(layout) == len(model.state_dict())
    assert sorted(math.prod(s) for s in layout.values()) == sorted(p.numel() for p in model.state_dict().values())


@pytest.mark.parametrize("name", sorted(PUBLISHED_MB))
def test_official_file_layouts_have_the_published_size(name):
    layout = unet_file_layout(name, FULL[CATALOG[name].family.value])
    megabytes = 2 * sum(math.prod(s) for s in layout.values()) / 1e6
    assert abs(megabytes - PUBLISHED_MB[name]) < 1.0


def test_layout_details_from_the_spec():
    xl = unet_file_layout("layer_xl_transparent_attn.safetensors", FULL["sdxl"])
    assert len(xl) == 2 * 560
    key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert xl[key + "::lora::0"] == (640, 256) and xl[key + "::lora::1"] == (256, 640)
    assert xl["diffusion_model.output_blocks.0.1.transformer_blocks.0.attn2.to_k.weight::lora::1"] == (256, 2048)
    for name, ch in [("layer_xl_fg2ble.safetensors", 8), ("layer_xl_fgble2bg.safetensors", 12),
                     ("layer_xl_bgble2fg.safetensors", 12)]:
        lay = unet_file_layout(name, FULL["sdxl"])
        assert lay["diffusion_model.input_blocks.0.0.weight::diff::0"] == (320, ch, 3, 3)
        assert "diffusion_model.out.2.weight::diff::0" in lay
        assert "diffusion_model.output_blocks.2.2.conv.weight::diff::0" in lay
    conv = unet_file_layout("layer_xl_transparent_conv.safetensors", FULL["sdxl"])
    assert not any(".to_q." in k or "time_embed" in k or "label_emb" in k for k in conv)
    assert any(".to_out.0." in k for k in conv)
    mods = attention_modules(ldm_unet_layout(FULL["sd15"]))
    assert mods[0] == "input_blocks.1.1.transformer_blocks.0.attn1"
    assert mods[12] == "output_blocks.3.1.transformer_blocks.0.attn1"
    assert mods[31] == "middle_block.1.transformer_blocks.0.attn2"
    sd15 = unet_file_layout("layer_sd15_fg2bg.safetensors", FULL["sd15"])
    assert sd15["hookers.layers.1.to_k_lora.1.down.weight"] == (256, 768)
    assert sd15["hookers.layers.31.control_convs.1.2.weight"] == (1280, 256, 1, 1)
    assert sd15["kwargs_encoder.blocks_0.14.weight"] == (256, 256, 3, 3)
    assert sum(math.prod(s) for s in offset_encoder_layout().values()) == 1_181_764
    assert OFFSET_ENCODER_CHANNELS[0] == 4 and OFFSET_ENCODER_CHANNELS[-1] == 4


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_models_keep_the_family_block_structure_and_run(family):
    unet = tiny_unet(family)
    ldm_full, ldm_tiny = ldm_unet_layout(FULL[family]), ldm_unet_layout(TINY[family])
    assert [k for k in attention_modules(ldm_tiny) if "attn" in k][:2] == attention_modules(ldm_full)[:2]
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in ldm_tiny if "blocks." in k} == \
        {k.split(".")[0] + "." + k.split(".")[1] for k in ldm_full if "blocks." in k}
    assert sum(p.numel() for p in unet.parameters()) < 2_000_000
    spec = TINY[family]
    x = torch.randn(2, 4, 16, 16)
    ctx = torch.randn(2, 7, spec.context_dim)
    extra = {}
    if family == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, spec.pooled_dim),
                                       "time_ids": torch.randn(2, 6)}}
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 10]), encoder_hidden_states=ctx, **extra).sample
    assert out.shape == x.shape

    vae = tiny_vae(family)
    with torch.no_grad():
        latent = vae.encode(torch.rand(1, 3, 64, 48) * 2 - 1).latent_dist.mean
        assert latent.shape == (1, 4, 8, 6)
        assert vae.decode(latent).sample.shape == (1, 3, 64, 48)
    assert vae.config.scaling_factor == {"sd15": 0.18215, "sdxl": 0.13025}[family]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_official_files_load_through_the_weight_store(tmp_path, family):
    catalog = write_unet_files(tmp_path, TINY[family])
    assert set(catalog) == {n for n, e in CATALOG.items() if e.family.value == family}
    store = WeightStore(tmp_path, allow_download=False, progress=False, catalog=catalog)
    for name in catalog:
        tensors = store.load(name)
        assert all(t.dtype == torch.float16 for t in tensors.values())
        if CATALOG[name].role not in ("encoder", "decoder"):
            assert set(tensors) == set(unet_file_layout(name, TINY[family], rank=4, control_channels=8))


def test_network_guard_allows_loopback_only():
    with loopback_only():
        with pytest.raises(NetworkAccessError, match="example.org"):
            socket.getaddrinfo("example.org", 443)
        with pytest.raises(NetworkAccessError, match="93.184.216.34"):
            socket.create_connection(("93.184.216.34", 80), timeout=1)
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        socket.create_connection(srv.getsockname(), timeout=1).close()
        srv.close()
