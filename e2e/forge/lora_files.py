"""Random user LoRAs for the rig, in the format SD1.5 and SDXL LoRAs are downloaded in
(kohya-ss: `lora_unet_` + the diffusers module name with `_` for `.`, `lora_down`/`lora_up`/
`alpha`; `lora_te_` for SD1.5's text encoder). Rank 8 on every attention projection, the
feed-forward and proj_in/proj_out of every transformer block, and on the text encoder's
attention: the modules a style LoRA trains, including the 32 that SD1.5 attention sharing
replaces in Forge and the attention projections the SDXL attention-injection LoRA patches too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_layerdiffuse.patches.names import ldm_to_diffusers
from lib_layerdiffuse.testing.unet_specs import FULL, UNetSpec, ldm_unet_layout

RANK = 8
BASE_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
TEXT_LAYERS, TEXT_WIDTH = 12, 768  # CLIP ViT-L/14's text encoder, SD1.5's
ATTENTION_TARGETS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0", ".attn2.to_q", ".attn2.to_k",
                     ".attn2.to_v", ".attn2.to_out.0")
UNET_TARGETS = ATTENTION_TARGETS + (".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")


def unet_targets(spec: UNetSpec, modules: tuple[str, ...] = UNET_TARGETS) -> dict[str, tuple[int, ...]]:
    """{kohya module name: LDM weight shape} of the UNet modules the LoRA trains."""
    out = {}
    for key, shape in ldm_unet_layout(spec).items():
        module = key[:-len(".weight")]
        if key.endswith(".weight") and module.endswith(modules):
            out["lora_unet_" + ldm_to_diffusers(module, spec.family).replace(".", "_")] = tuple(shape)
    return out


def text_targets(layers: int = TEXT_LAYERS, width: int = TEXT_WIDTH) -> dict[str, tuple[int, ...]]:
    return {f"lora_te_text_model_encoder_layers_{i}_self_attn_{p}_proj": (width, width)
            for i in range(layers) for p in ("q", "k", "v", "out")}


def write_kohya_lora(path: Path, seed: int, spec: UNetSpec = FULL["sd15"], text: bool = True,
                     modules: tuple[str, ...] = UNET_TARGETS) -> Path:
    """A random LoRA for the `modules` of the UNet of `spec` (and SD1.5's text encoder with
    `text`) whose weight changes are about 1% of the weights (enough to change every image, not
    enough to overflow)."""
    if path.is_file():
        return path
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    targets = {**unet_targets(spec, modules), **(text_targets() if text else {})}
    for name, shape in targets.items():
        out, inp, *kernel = shape
        ones = [1] * len(kernel)  # 1x1 convolutions (SD1.5's proj_in/proj_out) keep their shape
        tensors[f"{name}.lora_down.weight"] = (torch.randn(RANK, inp, *ones, generator=gen) / inp ** 0.5).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(out, RANK, *ones, generator=gen) * 0.01).half()
        tensors[f"{name}.alpha"] = torch.tensor(float(RANK)).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(RANK),
                                            "ss_network_alpha": str(RANK), "ss_base_model_version": BASE_VERSION[spec.family]})
    return path
