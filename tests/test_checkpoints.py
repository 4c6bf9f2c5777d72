"""The random full-size checkpoints the real-Forge rig loads (lib_layerdiffuse.testing.checkpoints):
real names and shapes, and values that keep Forge's own text path finite."""

from __future__ import annotations

import collections

import pytest
import torch

from lib_layerdiffuse.testing.checkpoints import (
    clip_l_layout,
    random_tensors,
    sd15_checkpoint_layout,
    sdxl_checkpoint_layout,
)


def test_text_encoder_keys_are_the_checkpoint_names_whatever_transformers_is_installed():
    layout = sd15_checkpoint_layout()
    assert "cond_stage_model.transformer.text_model.final_layer_norm.bias" in layout
    assert layout["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in layout if k.startswith("cond_"))


def test_sd15_layout_is_what_diffusers_converts_into_its_sd15_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    layout = sd15_checkpoint_layout()
    # what Forge's loader counted in the rig ("StateDict Keys: unet 686, vae 248, text_encoder 196")
    assert collections.Counter(k.split(".")[0] for k in layout) == {
        "model": 686, "first_stage_model": 248, "cond_stage_model": 196}
    checkpoint = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2)
    for model, converted in ((unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))),
                             (vae, convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)))):
        assert {k: tuple(v.shape) for k, v in converted.items()} == \
            {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_sdxl_layout_is_what_diffusers_converts_into_its_sdxl_models():
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    layout = sdxl_checkpoint_layout()
    # what Forge's loader counts for SDXL base: unet 1680, vae 248, CLIP-L 196, OpenCLIP bigG 390
    assert collections.Counter(".".join(k.split(".")[:3]) if k.startswith("cond") else k.split(".")[0]
                               for k in layout) == {"model": 1680, "first_stage_model": 248,
                                                    "conditioner.embedders.0": 196, "conditioner.embedders.1": 390}
    checkpoint = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        text = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77))
    pairs = ((unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))),
             (text, convert_open_clip_checkpoint(text, checkpoint, prefix="conditioner.embedders.1.model.")))
    for model, converted in pairs:
        assert {k: tuple(v.shape) for k, v in converted.items()} == \
            {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}


@pytest.mark.slow
def test_random_text_encoder_never_gives_forge_a_zero_mean():
    """Forge's prompt emphasis rescales the text embedding by old_mean / new_mean. With zero
    LayerNorm shifts the mean was exactly 0.0 for some prompts ("a cat, a glass cup"), so Forge
    encoded them as NaN and the joint method's first frame came out empty."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
    model = CLIPTextModel(config)
    own = model.state_dict().keys()  # transformers 5 has no `text_model.` level
    state = {k.removeprefix("cond_stage_model.transformer."): v
             for k, v in random_tensors({f"cond_stage_model.transformer.{k}": s for k, s in clip_l_layout().items()})}
    assert float(state["text_model.final_layer_norm.bias"].abs().max()) > 0
    missing, unexpected = model.load_state_dict(
        {k if k in own else k.removeprefix("text_model."): v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    prompts = [[320, 2368, 267, 320, 3313, 1937], [320, 3313, 1937], [320, 2368], [1929, 267, 320, 3313, 1937]]
    ids = torch.tensor([[49406, *t] + [49407] * (76 - len(t)) for t in prompts])
    with torch.no_grad():
        z = model(ids).last_hidden_state
    means = z.mean(dim=(1, 2))
    assert torch.isfinite(z).all() and bool((means.abs() > 1e-4).all()), means
