"""Flux for tests: a tiny but complete diffusers `FluxPipeline` (random weights, letter-by-letter
CLIP and T5 tokenizers, no downloads), the real-size transformer on the `meta` device, and
LayerDiffuse-Flux weight files in their official layouts (a diffusers LoRA, the pickled
`TransparentVAE.pth` with its `sd_vae.*` copy)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch

from .pipelines import _LETTERS, _text_encoder, tiny_tokenizer

FLUX_VAE = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's VAE config
# the layers a Flux LoRA usually trains: every attention projection of both block kinds
ATTENTION_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out")
SINGLE_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
TINY_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        guidance_embeds=True, axes_dims_rope=(2, 2, 4))


def tiny_t5_tokenizer():
    """A T5 tokenizer that spells words letter by letter (no sentencepiece file needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in _LETTERS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))  # T5's model kind, so it saves and loads as T5's
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", model_max_length=64)


def _t5(vocab_size: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0)
    return T5EncoderModel(config).eval()


def tiny_flux_vae(seed: int = 0):
    """A small AutoencoderKL with the real /8 downsampling, 16 latent channels and FLUX.1's
    scaling and shift, without the quant convs (as FLUX.1's)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False, **FLUX_VAE).eval()


def tiny_flux_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY_TRANSFORMER).eval()


def meta_flux_transformer():
    """The real-size FLUX.1 transformer (19 double, 38 single blocks, width 3072) on the meta device."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(guidance_embeds=True)


def tiny_flux_pipeline(seed: int = 0):
    """A FluxPipeline that samples 64x64 images in well under a second on a CPU."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    clip_tokenizer = tiny_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=tiny_flux_vae(seed),
                        text_encoder=_text_encoder(32, None, len(clip_tokenizer), seed + 1), tokenizer=clip_tokenizer,
                        text_encoder_2=_t5(len(t5_tokenizer), seed + 2), tokenizer_2=t5_tokenizer,
                        transformer=tiny_flux_transformer(seed + 3))


def lora_layout(transformer: torch.nn.Module, rank: int, layers: Optional[Iterable[str]] = None,
                prefix: str = "transformer.") -> dict[str, tuple[int, ...]]:
    """PEFT key layout (`lora_A` / `lora_B`) of a LoRA on `layers` (default: the attention
    projections of every block and the single blocks' MLP) of a diffusers Flux transformer."""
    if layers is None:
        layers = [f"transformer_blocks.{i}.{n}" for i in range(len(transformer.transformer_blocks))
                  for n in ATTENTION_LAYERS]
        layers += [f"single_transformer_blocks.{i}.{n}" for i in range(len(transformer.single_transformer_blocks))
                   for n in SINGLE_LAYERS]
    out: dict[str, tuple[int, ...]] = {}
    for name in layers:
        linear = transformer.get_submodule(name)
        out[f"{prefix}{name}.lora_A.weight"] = (rank, linear.in_features)
        out[f"{prefix}{name}.lora_B.weight"] = (linear.out_features, rank)
    return out


def write_flux_lora(path: Path, transformer: torch.nn.Module, rank: int = 4, seed: int = 0,
                    std: float = 0.05) -> Path:
    """A LoRA file in diffusers' layout with seeded values for `transformer`."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(s, generator=gen) * std for k, s in lora_layout(transformer, rank).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return Path(path)


def flux_vae_state_dict(decoder_config: Optional[dict] = None, seed: int = 0, std: float = 0.05,
                        dtype: torch.dtype = torch.float32, with_sd_vae: bool = True) -> dict[str, torch.Tensor]:
    """What LayerDiffuse-Flux's `TransparentVAE.pth` holds: `decoder.*` (UNet1024 with 16 latent
    channels), `encoder.*` (the 16-channel offset encoder) and a copy of the VAE as `sd_vae.*`,
    with seeded values (the zero-initialised convs get values too, so they matter in tests)."""
    from ..vae.networks import LatentTransparencyOffsetEncoder, UNet1024

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        parts = {"decoder": UNet1024(latent_channels=16, **(decoder_config or {})),
                 "encoder": LatentTransparencyOffsetEncoder(16)}
    for part, net in parts.items():
        for key, value in net.state_dict().items():
            fill = torch.randn(value.shape, generator=gen) * std
            if key.endswith(".weight") and "norm" in key.split(".")[-2]:
                fill = fill + 1.0
            state[f"{part}.{key}"] = fill.to(dtype)
    if with_sd_vae:
        state.update({f"sd_vae.{k}": v for k, v in tiny_flux_vae(seed).state_dict().items()})
    return state


def write_flux_vae_pickle(path: Path, **kwargs) -> Path:
    """`flux_vae_state_dict` saved as the release saves it: `torch.save` of the state dict."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(flux_vae_state_dict(**kwargs), str(path))
    return Path(path)


def to_bfl_state_dict(state: dict[str, torch.Tensor], hidden: int, mlp_hidden: int) -> dict[str, torch.Tensor]:
    """A diffusers Flux transformer state dict in Black Forest Labs' layout (fused qkv and
    linear1, swapped final modulation), as Forge and single-file checkpoints hold it."""
    from ..patches.flux_names import diffusers_to_bfl

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = diffusers_to_bfl(key, hidden, mlp_hidden)
        if target.swap_halves:
            value = torch.cat(value.chunk(2, 0)[::-1])
        if target.rows is None:
            out[target.name] = value
            continue
        start, rows = target.rows
        fused = out.get(target.name)
        if fused is None or fused.shape[0] < start + rows:
            grown = torch.zeros((start + rows,) + tuple(value.shape[1:]), dtype=value.dtype)
            if fused is not None:
                grown[:fused.shape[0]] = fused
            fused = grown
        fused[start:start + rows] = value
        out[target.name] = fused
    return out


def bfl_layout(shapes: dict[str, tuple[int, ...]], hidden: int, mlp_hidden: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes `to_bfl_state_dict` gives, from diffusers names and shapes alone
    (for real-size transformers on the meta device)."""
    from ..patches.flux_names import diffusers_to_bfl

    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        target = diffusers_to_bfl(key, hidden, mlp_hidden)
        if target.rows is None:
            out[target.name] = tuple(shape)
        else:
            rows = max(target.rows[0] + target.rows[1], out.get(target.name, (0,))[0])
            out[target.name] = (rows,) + tuple(shape[1:])
    return out
