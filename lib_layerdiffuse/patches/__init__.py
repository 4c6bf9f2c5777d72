"""Patching a diffusers UNet with the SDXL LayerDiffuse files (frozen LoRA / diff patches)."""

from .apply import AppliedPatches, PatchMismatchError, apply_frozen_patches, resolve_patches
from .frozen import PATCH_TYPES, Patches, merge_patch, parse_frozen_patches, patched_shape
from .names import MODEL_PREFIX, ldm_to_diffusers

__all__ = [
    "AppliedPatches", "PatchMismatchError", "apply_frozen_patches", "resolve_patches", "PATCH_TYPES",
    "Patches", "merge_patch", "parse_frozen_patches", "patched_shape", "MODEL_PREFIX",
    "ldm_to_diffusers",
]
