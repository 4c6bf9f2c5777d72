"""Tiny but complete SD1.5 / SDXL diffusers pipelines for tests (random weights, a tokenizer
with a 56-token vocabulary, no downloads)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .models import tiny_unet, tiny_vae
from .unet_specs import TINY

_LETTERS = "abcdefghijklmnopqrstuvwxyz,"


def tiny_tokenizer(folder: Optional[Path] = None):
    """A CLIP tokenizer that spells words letter by letter (no merges)."""
    from transformers import CLIPTokenizer

    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-tokenizer-"))
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text_encoder(hidden: int, projection: Optional[int], vocab_size: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    torch.manual_seed(seed)
    model_cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_cls(config).eval()


def tiny_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")


def tiny_pipeline(family: str, seed: int = 0):
    """A StableDiffusionXLPipeline ("sdxl") or StableDiffusionPipeline ("sd15") built from the
    tiny UNet and VAE; it samples 64x64 images in a fraction of a second on a CPU."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    spec = TINY[family]
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    if family == "sdxl":
        first = spec.context_dim // 3
        return StableDiffusionXLPipeline(
            vae=tiny_vae(family, seed), unet=tiny_unet(family, seed), scheduler=tiny_scheduler(),
            text_encoder=_text_encoder(first, None, vocab, seed + 1),
            text_encoder_2=_text_encoder(spec.context_dim - first, spec.pooled_dim, vocab, seed + 2),
            tokenizer=tokenizer, tokenizer_2=tokenizer)
    return StableDiffusionPipeline(
        vae=tiny_vae(family, seed), unet=tiny_unet(family, seed), scheduler=tiny_scheduler(),
        text_encoder=_text_encoder(spec.context_dim, None, vocab, seed + 1), tokenizer=tokenizer,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
