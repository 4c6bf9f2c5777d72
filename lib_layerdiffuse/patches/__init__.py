"""Patching a diffusers UNet with the SDXL LayerDiffuse files (frozen LoRA / diff patches), and
a Flux transformer with LayerDiffuse-Flux's LoRA (merged, or beside quantised layers)."""

from .apply import AppliedPatches, PatchMismatchError, apply_frozen_patches, resolve_patches
from .frozen import PATCH_TYPES, Patches, merge_patch, parse_frozen_patches, patched_shape
from .names import MODEL_PREFIX, ldm_to_diffusers
from .runtime_lora import AttachedLoRA, attach_lora_branches, mergeable
from .transformer_lora import parse_transformer_lora

__all__ = [
    "AppliedPatches", "PatchMismatchError", "apply_frozen_patches", "resolve_patches", "PATCH_TYPES",
    "Patches", "merge_patch", "parse_frozen_patches", "patched_shape", "MODEL_PREFIX",
    "ldm_to_diffusers", "AttachedLoRA", "attach_lora_branches", "mergeable", "parse_transformer_lora",
]
