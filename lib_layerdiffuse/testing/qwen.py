"""Qwen-Image for tests: tiny but complete diffusers `QwenImage21Pipeline` (native RGBA) and
`QwenImageLayeredPipeline` (image to RGBA layers) with random weights, built offline, and the
real-size transformers on the `meta` device.

The tokenizer is Qwen's byte-level BPE without merges (one token per byte) plus Qwen's special
tokens and a chat template with Qwen's message layout (the 2.1 pipeline reads how many template
tokens to drop from it). The processors use the PIL image processor and no video processor
(transformers' video processors need torchvision, which the library does not require).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.qwen_processor import save_processor, without_video

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
TEXT_HIDDEN = 16
LATENT = 8  # not 4: the pipelines take a 4-channel tensor for latents already encoded

# the published configs (Qwen/Qwen-Image-2.1 transformer/config.json; Qwen/Qwen-Image-Layered's)
QWEN21_TRANSFORMER = dict(patch_size=1, in_channels=64, out_channels=64, num_layers=32, attention_head_dim=128,
                          num_attention_heads=32, context_in_dim=4096, mlp_ratio=3, axes_dims_rope=(16, 56, 56))
LAYERED_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                           num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                           axes_dims_rope=(16, 56, 56), use_additional_t_cond=True, use_layer3d_rope=True)
TINY_QWEN21_TRANSFORMER = dict(patch_size=1, in_channels=LATENT, out_channels=LATENT, num_layers=2,
                               attention_head_dim=16, num_attention_heads=2, context_in_dim=TEXT_HIDDEN, mlp_ratio=2,
                               axes_dims_rope=(4, 6, 6))
TINY_LAYERED_TRANSFORMER = dict(patch_size=2, in_channels=4 * LATENT, out_channels=LATENT, num_layers=2,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN,
                                guidance_embeds=False, axes_dims_rope=(8, 4, 4), use_additional_t_cond=True,
                                use_layer3d_rope=True)


def tiny_qwen_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _vl_config(tokenizer, vision: dict, head_dim: Optional[int]) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], hidden_size=TEXT_HIDDEN, intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]})
    if head_dim:
        text["head_dim"] = head_dim
    return dict(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                vision_end_token_id=ids["<|vision_end|>"])


def tiny_qwen21_pipeline(seed: int = 0, turbo: bool = False):
    """A random `QwenImage21Pipeline`: the RGBA VAE with 4 image channels and 16x downsampling,
    a 2-block transformer, a tiny Qwen3-VL; `turbo`: the Turbo variant's fixed sigma grid."""
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImage21Transformer2DModel(**TINY_QWEN21_TRANSFORMER).eval()
    vae = AutoencoderKLQwenImage21(base_dim=4, decoder_base_dim=4, z_dim=LATENT, dim_mult=[1, 1, 1, 1, 1],
                                   num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True, True],
                                   latents_mean=[0.0] * LATENT, latents_std=[1.0] * LATENT).eval()
    vision = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TEXT_HIDDEN,
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    text_encoder = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**_vl_config(tokenizer, vision, 8))).eval()
    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                      max_pixels=256 * 256)
    processor = without_video(Qwen3VLProcessor)(image_processor=images, tokenizer=tokenizer, video_processor=None,
                                                 chat_template=CHAT_TEMPLATE)
    scheduler = (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False, shift=1.0) if turbo
                 else FlowMatchEulerDiscreteScheduler())
    pipe = QwenImage21Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, processor=processor,
                               transformer=transformer,
                               sample_sigmas=[1.0, 0.7, 0.41] if turbo else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_layered_pipeline(seed: int = 0):
    """A random `QwenImageLayeredPipeline`: the RGBA VAE (4 image channels, 8x), a 2-block
    transformer with the layer RoPE and the extra time condition, a tiny Qwen2.5-VL."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageLayeredPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**TINY_LAYERED_TRANSFORMER).eval()
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=LATENT, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], input_channels=4,
                                 latents_mean=[0.0] * LATENT, latents_std=[1.0] * LATENT).eval()
    vision = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TEXT_HIDDEN)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**_vl_config(tokenizer, vision, None))).eval()
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = without_video(Qwen2VLProcessor)(image_processor=images, tokenizer=tokenizer, video_processor=None,
                                                 chat_template=CHAT_TEMPLATE)
    pipe = QwenImageLayeredPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, processor=processor, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def meta_transformer(layered: bool = False) -> torch.nn.Module:
    """The real-size Qwen-Image-2.1 (or Qwen-Image-Layered) transformer on the meta device."""
    from diffusers import QwenImage21Transformer2DModel, QwenImageTransformer2DModel

    with torch.device("meta"):
        if layered:
            return QwenImageTransformer2DModel(**LAYERED_TRANSFORMER)
        return QwenImage21Transformer2DModel(**QWEN21_TRANSFORMER)


def save_pipeline(pipe, folder) -> None:
    """Write a tiny Qwen pipeline as a diffusers folder (`from_pretrained` reads it back); its
    processor is written as the published models keep it (tokenizer and image processor)."""
    from pathlib import Path

    folder = Path(folder)
    for name, component in pipe.components.items():
        if name == "processor":
            save_processor(component, str(folder / name))
        elif component is not None:
            component.save_pretrained(str(folder / name))
    pipe.save_config(str(folder))
