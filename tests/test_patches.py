"""Frozen-patch parsing, merge math, LDM -> diffusers names and strict reversible patching."""

from __future__ import annotations

import pytest
import torch

from lib_layerdiffuse.engine.sharing import sharing_module_names
from lib_layerdiffuse.patches import (
    PatchMismatchError,
    apply_frozen_patches,
    ldm_to_diffusers,
    merge_patch,
    parse_frozen_patches,
    resolve_patches,
)
from lib_layerdiffuse.testing.layer_files import random_state_dict, unet_file_layout
from lib_layerdiffuse.testing.models import meta_unet, tiny_unet
from lib_layerdiffuse.testing.unet_specs import FULL, TINY, ldm_unet_layout
from lib_layerdiffuse.weights import CATALOG

SDXL_FILES = [n for n, e in CATALOG.items() if e.family.value == "sdxl" and e.role.startswith("unet")]


@pytest.fixture(scope="module")
def meta_unets():
    return {f: meta_unet(f) for f in ("sd15", "sdxl")}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_ldm_parameter_maps_one_to_one_onto_the_real_unet(family, meta_unets):
    params = {k: tuple(v.shape) for k, v in meta_unets[family].named_parameters()}
    layout = ldm_unet_layout(FULL[family])
    mapped = {}
    for key, shape in layout.items():
        name = ldm_to_diffusers("diffusion_model." + key, family)
        assert params.get(name) == shape, (key, name)
        mapped[name] = key
    assert len(mapped) == len(layout) == len(params)


def test_names_from_the_spec_table():
    xl = lambda k: ldm_to_diffusers(k, "sdxl")  # noqa: E731
    assert xl("input_blocks.0.0.weight") == "conv_in.weight"
    assert xl("input_blocks.2.0.in_layers.2.weight") == "down_blocks.0.resnets.1.conv1.weight"
    assert xl("input_blocks.3.0.op.bias") == "down_blocks.0.downsamplers.0.conv.bias"
    # the swap one public port gets wrong: 7 -> attentions.0, 8 -> attentions.1
    assert xl("input_blocks.7.1.proj_in.weight") == "down_blocks.2.attentions.0.proj_in.weight"
    assert xl("input_blocks.8.1.proj_in.weight") == "down_blocks.2.attentions.1.proj_in.weight"
    assert xl("middle_block.1.transformer_blocks.9.attn2.to_k.weight") == \
        "mid_block.attentions.0.transformer_blocks.9.attn2.to_k.weight"
    assert xl("middle_block.2.skip_connection.weight") == "mid_block.resnets.1.conv_shortcut.weight"
    assert xl("output_blocks.2.2.conv.weight") == "up_blocks.0.upsamplers.0.conv.weight"
    assert xl("output_blocks.5.2.conv.weight") == "up_blocks.1.upsamplers.0.conv.weight"
    assert xl("output_blocks.8.0.emb_layers.1.weight") == "up_blocks.2.resnets.2.time_emb_proj.weight"
    assert xl("out.2.weight") == "conv_out.weight"
    assert xl("label_emb.0.2.bias") == "add_embedding.linear_2.bias"
    sd = lambda k: ldm_to_diffusers(k, "sd15")  # noqa: E731
    assert sd("input_blocks.11.0.out_layers.3.weight") == "down_blocks.3.resnets.1.conv2.weight"
    assert sd("input_blocks.9.0.op.weight") == "down_blocks.2.downsamplers.0.conv.weight"
    assert sd("output_blocks.2.1.conv.weight") == "up_blocks.0.upsamplers.0.conv.weight"
    assert sd("output_blocks.5.2.conv.weight") == "up_blocks.1.upsamplers.0.conv.weight"
    assert sd("output_blocks.11.1.transformer_blocks.0.attn1") == \
        "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    with pytest.raises(KeyError, match="input_blocks.10"):
        xl("input_blocks.10.0.in_layers.0.weight")  # SD1.5-only block
    with pytest.raises(KeyError, match="not a ResBlock parameter"):
        xl("input_blocks.1.0.bogus.weight")


def test_sd15_attention_sharing_order_is_the_files_order():
    names = sharing_module_names()
    assert len(names) == 32
    assert names[:2] == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                         "down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert names[10] == "down_blocks.2.attentions.1.transformer_blocks.0.attn1"   # input_blocks.8
    assert names[12] == "up_blocks.1.attentions.0.transformer_blocks.0.attn1"     # output_blocks.3
    assert names[29] == "up_blocks.3.attentions.2.transformer_blocks.0.attn2"     # output_blocks.11
    assert names[30:] == ["mid_block.attentions.0.transformer_blocks.0.attn1",
                          "mid_block.attentions.0.transformer_blocks.0.attn2"]


@pytest.mark.parametrize("name", SDXL_FILES)
def test_every_key_of_the_real_sdxl_files_resolves_on_the_real_unet(name, meta_unets):
    layout = unet_file_layout(name, FULL["sdxl"])
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in layout.items()}
    patches = parse_frozen_patches(state)
    resolved = resolve_patches(meta_unets["sdxl"], patches, "sdxl", name)
    assert len(resolved) == len(patches)
    if "transparent_attn" in name:
        assert len(resolved) == 560 * 2 // 2 and all(t == "lora" for _, t, _ in resolved.values())


def test_parse_groups_by_model_key_and_orders_indices():
    up, down, delta = torch.ones(3, 2), torch.ones(2, 5), torch.ones(4)
    patches = parse_frozen_patches({"diffusion_model.a.weight::lora::1": down,
                                    "diffusion_model.a.weight::lora::0": up,
                                    "diffusion_model.b.bias::diff::0": delta})
    assert patches["diffusion_model.a.weight"][0] == "lora"
    assert patches["diffusion_model.a.weight"][1][0] is up and patches["diffusion_model.a.weight"][1][1] is down
    assert patches["diffusion_model.b.bias"] == ("diff", [delta])


@pytest.mark.parametrize("state, message", [
    ({"diffusion_model.a.weight": torch.ones(1)}, "not a frozen-patch key"),
    ({"a.weight::loha::0": torch.ones(1)}, "unknown patch type 'loha'"),
    ({"a.weight::lora::0": torch.ones(1, 1)}, r"needs indices \[0, 1\]"),
    ({"a.weight::lora::0": torch.ones(1, 1), "a.weight::diff::0": torch.ones(1)}, "both"),
])
def test_parse_rejects_anything_outside_the_grammar(state, message):
    with pytest.raises(ValueError, match=message):
        parse_frozen_patches(state)


def test_lora_merge_is_fp32_math_cast_back():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen).half()
    up, down = torch.randn(6, 3, generator=gen).half(), torch.randn(3, 5, generator=gen).half()
    merged = merge_patch(w, "lora", [up, down], 0.7)
    expected = (w.float() + 0.7 * (up.float() @ down.float())).half()
    assert merged.dtype == torch.float16 and torch.equal(merged, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("kind", ["diff", "lora"])
def test_in_place_merge_in_chunks_has_the_bits_of_the_whole_tensor_merge(monkeypatch, dtype, strength, kind):
    """Chunk boundaries fall inside the tensor (and inside rows); the result is bit for bit
    the one-expression fp32 merge, and the patch tensors are left as they were."""
    from lib_layerdiffuse.patches import frozen

    monkeypatch.setattr(frozen, "MERGE_CHUNK", 7)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(5, 4, 3, 3, generator=gen).to(dtype)
    if kind == "diff":
        tensors = [torch.randn(5, 4, 3, 3, generator=gen).to(dtype)]
        change = tensors[0].float()
    else:
        tensors = [torch.randn(5, 3, generator=gen).to(dtype), torch.randn(3, 4, 3, 3, generator=gen).to(dtype)]
        change = (tensors[0].float() @ tensors[1].float().flatten(1)).reshape(w.shape)
    kept = [t.clone() for t in tensors]
    expected = (w.float() + strength * change).to(dtype)
    weight = w.clone()
    frozen.add_patch_(weight, kind, tensors, strength)
    assert torch.equal(weight, expected)
    assert all(torch.equal(a, b) for a, b in zip(tensors, kept))
    with pytest.raises(ValueError, match="in place"):
        frozen.add_patch_(w.clone()[:, :2], "diff", [torch.ones(5, 4, 3, 3)], 1.0)


def test_in_place_merge_of_a_strided_weight():
    from lib_layerdiffuse.patches.frozen import add_patch_

    w = torch.randn(4, 5, 3, 3)
    delta = torch.randn(5, 4, 3, 3)
    weight = w.clone().permute(1, 0, 2, 3)  # not contiguous: merged as one piece
    add_patch_(weight, "diff", [delta], 0.3)
    assert torch.equal(weight, w.permute(1, 0, 2, 3) + 0.3 * delta)


def test_diff_widens_conv_in_with_zero_padding():
    w = torch.randn(3, 4, 3, 3)
    delta = torch.randn(3, 12, 3, 3)
    merged = merge_patch(w, "diff", [delta], 0.5)
    assert merged.shape == (3, 12, 3, 3)
    assert torch.allclose(merged[:, :4], w + 0.5 * delta[:, :4])
    assert torch.equal(merged[:, 4:], 0.5 * delta[:, 4:])


@pytest.mark.parametrize("weight, tensors, kind", [
    (torch.ones(4, 4), [torch.ones(4, 5)], "diff"),
    (torch.ones(4, 4, 3, 3), [torch.ones(2, 8, 3, 3)], "diff"),
    (torch.ones(4, 4), [torch.ones(4, 2), torch.ones(2, 3)], "lora"),
])
def test_merge_refuses_shapes_that_do_not_fit(weight, tensors, kind):
    with pytest.raises(ValueError, match="does not fit"):
        merge_patch(weight, kind, tensors, 1.0)


def _tiny_patches(name: str, seed: int = 0):
    return parse_frozen_patches(random_state_dict(unet_file_layout(name, TINY["sdxl"], rank=4), seed))


def _snapshot(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("name", ["layer_xl_transparent_attn.safetensors", "layer_xl_fgble2bg.safetensors"])
def test_apply_uses_strength_and_restore_is_bit_exact(name):
    unet = tiny_unet("sdxl").half()
    before = _snapshot(unet)
    conv_in = unet.conv_in.weight
    patches = _tiny_patches(name)
    applied = apply_frozen_patches(unet, patches, "sdxl", strength=0.5)
    key, (kind, tensors) = next(iter(patches.items()))
    target = ldm_to_diffusers(key, "sdxl")
    assert torch.equal(unet.get_parameter(target), merge_patch(before[target], kind, tensors, 0.5))
    if "fgble2bg" in name:
        assert unet.conv_in.weight.shape[1] == 12 and unet.conv_in.in_channels == 12
        assert torch.equal(unet.conv_in.weight[:, 4:].float(), (0.5 * patches[
            "diffusion_model.input_blocks.0.0.weight"][1][0][:, 4:].float()).half().float())
    applied.restore()
    after = _snapshot(unet)
    assert unet.conv_in.weight is conv_in and unet.conv_in.in_channels == 4
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    applied.restore()  # a second restore changes nothing


def test_a_file_that_does_not_fit_leaves_the_unet_untouched():
    unet = tiny_unet("sdxl")
    before = _snapshot(unet)
    patches = _tiny_patches("layer_xl_transparent_conv.safetensors")
    patches["diffusion_model.input_blocks.10.0.in_layers.0.weight"] = ("diff", [torch.ones(4)])
    with pytest.raises(PatchMismatchError, match="input_blocks.10"):
        apply_frozen_patches(unet, patches, "sdxl")
    patches = _tiny_patches("layer_xl_transparent_conv.safetensors")
    patches["diffusion_model.out.2.weight"] = ("diff", [torch.ones(4, 16, 5, 5)[:, :, :3]])
    with pytest.raises(PatchMismatchError, match="out.2.weight"):
        apply_frozen_patches(unet, patches, "sdxl")
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_an_sdxl_file_on_an_sd15_unet_is_refused_by_name():
    unet = tiny_unet("sd15")
    with pytest.raises(PatchMismatchError, match="SD1.5 LayerDiffuse file"):
        apply_frozen_patches(unet, _tiny_patches("layer_xl_transparent_attn.safetensors"), "sd15")


def test_strength_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        apply_frozen_patches(tiny_unet("sdxl"), {}, "sdxl", strength=float("nan"))


@pytest.mark.parametrize("name, frames, control", [("layer_sd15_transparent_attn.safetensors", 1, False),
                                                    ("layer_sd15_joint.safetensors", 3, False),
                                                    ("layer_sd15_bg2fg.safetensors", 2, True)])
def test_real_sd15_sharing_files_fit_the_real_unet(name, frames, control, meta_unets):
    from lib_layerdiffuse.engine.sharing import AttentionSharingWeights

    with torch.device("meta"):
        weights = AttentionSharingWeights(meta_unets["sd15"], frames, 256, 256 if control else None)
    ours = {k: tuple(v.shape) for k, v in weights.state_dict().items()}
    assert ours == unet_file_layout(name, FULL["sd15"])
