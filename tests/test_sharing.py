"""SD1.5 attention sharing: the processor against a step-by-step rendition of the published
algorithm, the positive-branch-only prompt override, strict loading and the fallback."""

from __future__ import annotations

import pytest
import torch

from lib_layerdiffuse.engine.sharing import (
    AttentionSharingWeights,
    SharingState,
    install_attention_sharing,
    sharing_module_names,
)
from lib_layerdiffuse.testing.layer_files import keep_control_signal, random_state_dict, unet_file_layout
from lib_layerdiffuse.testing.models import tiny_unet
from lib_layerdiffuse.testing.unet_specs import TINY
from lib_layerdiffuse.weights import WeightFormatError

from sharing_reference import published_unit

LAYER = 1  # attn2 of the first transformer: cross-attention with a text context


def sharing_weights(unet, name="layer_sd15_fg2bg.safetensors", seed=0):
    layout = unet_file_layout(name, TINY["sd15"], rank=4, control_channels=8)
    state = keep_control_signal(random_state_dict(layout, seed, std=0.1, dtype=torch.float32))
    return AttentionSharingWeights.from_state_dict(state, unet), state


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    unet = tiny_unet("sd15")
    weights, _ = sharing_weights(unet)
    name = sharing_module_names()[LAYER]
    attn = unet.get_submodule(name)
    images = 2  # one set of 2 frames... twice: [negative x2, positive x2] under CFG
    h = torch.randn(2 * images, 64, attn.to_q.in_features)
    context = torch.randn(2 * images, 5, attn.to_k.in_features)
    overwrite = torch.randn(1, 5, attn.to_k.in_features)
    control_image = torch.rand(1, 3, 64, 64) * 2 - 1
    return unet, weights, attn, h, context, overwrite, control_image, images


def run(unet, weights, attn, h, context, overwrites, control_image, images):
    state = SharingState(frames=2, images=images, frame_contexts=overwrites)
    installed = install_attention_sharing(unet, weights, state, control_image)
    try:
        with torch.no_grad():
            return attn.processor(attn, h, context), state
    finally:
        installed.remove()


def test_processor_matches_the_published_algorithm(setup):
    unet, weights, attn, h, context, overwrite, control_image, images = setup
    out, state = run(unet, weights, attn, h, context, [overwrite, None], control_image, images)
    layer = weights.hookers.layers[LAYER]
    with torch.no_grad():
        control = weights.kwargs_encoder(control_image)[64]
        cond_mark = torch.tensor([1.0, 1.0, 0.0, 0.0])  # Forge: 1 = negative branch
        expected = published_unit(attn, layer, 2, h, context, cond_mark, [overwrite, None], control)
    assert torch.allclose(out, expected, atol=1e-5)
    assert state.calls == 1


@pytest.mark.parametrize("layer_index", [0, 1], ids=["self-attention", "cross-attention"])
@pytest.mark.parametrize("name,frames", [("layer_sd15_transparent_attn.safetensors", 1),
                                         ("layer_sd15_fg2bg.safetensors", 2),
                                         ("layer_sd15_joint.safetensors", 3)])
def test_every_frame_count_matches_the_published_algorithm(name, frames, layer_index):
    """The fast paths (one frame: cross-frame attention folded into one linear map; 2-3 frames:
    all frames in one batched product and one attention call, the cross-frame softmax taken on
    the frame axis) give the published result to 1e-5, with and without per-frame prompts."""
    torch.manual_seed(frames)
    unet = tiny_unet("sd15")
    weights, _ = sharing_weights(unet, name, seed=frames)
    attn = unet.get_submodule(sharing_module_names()[layer_index])
    layer = weights.hookers.layers[layer_index]
    images = 2
    h = torch.randn(2 * images * frames, 64, attn.to_q.in_features) * 3
    context = None if layer_index == 0 else torch.randn(2 * images * frames, 5, attn.to_k.in_features)
    overwrites = [torch.randn(1, 5, attn.to_k.in_features) if f % 2 == 0 else None for f in range(frames)]
    control_image = torch.rand(1, 3, 64, 64) * 2 - 1 if weights.uses_control else None
    cond_mark = (torch.arange(2 * images * frames) < images * frames).float()  # 1 = negative
    for frame_prompts in (overwrites, [None] * frames):
        state = SharingState(frames=frames, images=images * frames, frame_contexts=frame_prompts)
        installed = install_attention_sharing(unet, weights, state, control_image)
        try:
            with torch.no_grad():
                out = attn.processor(attn, h, context)
        finally:
            installed.remove()
        with torch.no_grad():
            control = weights.kwargs_encoder(control_image)[64] if control_image is not None else None
            expected = published_unit(attn, layer, frames, h, context, cond_mark, frame_prompts, control)
        assert out.shape == h.shape
        assert (out - expected).abs().max() <= 1e-5


def test_frame_prompts_reach_the_positive_branch_only(setup):
    unet, weights, attn, h, context, overwrite, control_image, images = setup
    with_prompt, _ = run(unet, weights, attn, h, context, [overwrite, None], control_image, images)
    without, _ = run(unet, weights, attn, h, context, [None, None], control_image, images)
    assert torch.equal(with_prompt[:images], without[:images])  # negative half untouched
    assert not torch.allclose(with_prompt[images:], without[images:])


def test_stopped_sharing_falls_back_to_the_modules_own_processor(setup):
    unet, weights, attn, h, context, _, control_image, images = setup
    with torch.no_grad():
        plain = attn(h, context)
    state = SharingState(frames=2, images=images)
    installed = install_attention_sharing(unet, weights, state, control_image)
    state.active = False
    with torch.no_grad():
        assert torch.equal(attn(h, context), plain)
    installed.remove()
    assert type(attn.processor).__name__ != "SharingProcessor"


def test_batches_that_do_not_split_into_frames_are_refused(setup):
    unet, weights, attn, h, context, _, control_image, _ = setup
    with pytest.raises(ValueError, match="not a multiple of 2 frames"):
        run(unet, weights, attn, h[:3], context[:3], [None, None], control_image, 3)


def test_control_methods_need_their_image():
    unet = tiny_unet("sd15")
    weights, _ = sharing_weights(unet)
    with pytest.raises(ValueError, match="needs a condition image"):
        install_attention_sharing(unet, weights, SharingState(frames=2, images=2))
    assert all(type(p).__name__ != "SharingProcessor" for p in unet.attn_processors.values())


def test_loading_is_strict():
    unet = tiny_unet("sd15")
    _, state = sharing_weights(unet, "layer_sd15_joint.safetensors")
    weights = AttentionSharingWeights.from_state_dict(state, unet)
    assert weights.frames == 3 and not weights.uses_control
    broken = dict(state)
    broken.pop("hookers.layers.31.temporal_o.bias")
    with pytest.raises(WeightFormatError, match="1 missing keys"):
        AttentionSharingWeights.from_state_dict(broken, unet, "layer_sd15_joint.safetensors")
    with pytest.raises(WeightFormatError, match="not an SD1.5 attention-sharing file"):
        AttentionSharingWeights.from_state_dict({"blocks.0.weight": torch.ones(1)}, unet)
    # an SD1.5 file on a UNet with other widths does not load
    other = tiny_unet("sd15")
    other_weights = {k: v for k, v in state.items()}
    other_weights["hookers.layers.0.temporal_i.weight"] = torch.ones(3, 3)
    with pytest.raises(WeightFormatError, match="temporal_i.weight has shape"):
        AttentionSharingWeights.from_state_dict(other_weights, other)
