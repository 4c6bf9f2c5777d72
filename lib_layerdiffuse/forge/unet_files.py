"""The UNet-side weight files as Forge consumes them, one file kept in memory at a time."""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import torch
from torch import nn

from ..engine.sharing import AttentionSharingWeights
from ..patches import parse_frozen_patches
from ..weights import WeightStore
from ..weights.location import resolve_models_dir

# Forge's patch lists have 16 slots (load_frozen_patcher's layout): lora reads up, down,
# alpha, mid and (current Forge) a DoRA scale by position.
PATCH_SLOTS = 16

_store: Optional[WeightStore] = None
_chosen = False  # the store was set by `use_store`, not found from the settings
_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def weight_store() -> WeightStore:
    """The weight folder (Forge's models/layer_model unless configured otherwise), created on
    first use so that importing the extension touches no files, and again when the folder
    setting (Settings -> LayerDiffuse, read at every call) names another folder."""
    global _store
    with _lock:
        if _store is None or (not _chosen and _store.location != resolve_models_dir()):
            _store = WeightStore()
            _cache.clear()
        return _store


def use_store(store: Optional[WeightStore]) -> None:
    """Point the extension at another weight folder (tests, or a user-chosen folder)."""
    global _store, _chosen
    with _lock:
        _store, _chosen = store, store is not None
        _cache.clear()


def _one_cached(key: tuple, build):
    with _lock:
        if key not in _cache:
            _cache.clear()  # the files are large: keep one
            _cache[key] = build()
        return _cache[key]


def _slots(tensors) -> list:
    """A patch's tensors in Forge's PATCH_SLOTS positional slots (the rest None)."""
    return list(tensors) + [None] * (PATCH_SLOTS - len(tensors))


def forge_patches(name: str) -> tuple[dict[str, tuple], str]:
    """`({model_key: (patch_type, [16 slots])}, content-unique name)` for an SDXL file."""
    store = weight_store()

    def build():
        parsed = parse_frozen_patches(store.load(name))
        patches = {k: (t, _slots(tensors)) for k, (t, tensors) in parsed.items()}
        return patches, f"{store.path(name)}#sha256={store.entry(name).sha256}"

    return _one_cached(("patches", name, str(store.folder)), build)


def forge_flux_patches(name: str, hidden: int, mlp_hidden: int) -> tuple[dict[tuple, tuple], str]:
    """`({(model key, (0, first row, rows) or None): ("lora", [16 slots])}, content-unique name)`
    for the Flux LoRA on Forge's Flux, whose weights have Black Forest Labs' names and fuse
    q, k, v (and the single blocks' MLP input): each diffusers layer patches its rows of the fused
    weight through Forge's patch offsets."""
    from ..patches import parse_transformer_lora
    from ..patches.flux_names import diffusers_to_bfl

    store = weight_store()

    def build():
        source = str(store.path(name))
        patches: dict[tuple, tuple] = {}
        for key, (kind, (up, down)) in parse_transformer_lora(store.load(name), source).items():
            try:
                target = diffusers_to_bfl(key, hidden, mlp_hidden)
            except KeyError as exc:
                raise ValueError(f"{source}: {exc.args[0]}") from None
            if target.swap_halves:
                up = torch.cat(up.chunk(2, 0)[::-1])
            offset = None if target.rows is None else (0, *target.rows)
            patches[(f"diffusion_model.{target.name}", offset)] = (kind, _slots([up, down]))
        digest = store.hashes.get(store.path(name)) or store.recorded.get(name) or ""
        return patches, f"{source}#sha256={digest}"

    return _one_cached(("flux", name, str(store.folder), hidden, mlp_hidden), build)


def sharing_weights(name: str, modules: Sequence[nn.Module]) -> AttentionSharingWeights:
    """The attention-sharing modules of an SD1.5 file, shaped after the 32 attention modules of
    Forge's LDM UNet (in `unet_blocks.attention_modules` order)."""
    store = weight_store()
    shapes = tuple(tuple(m.to_q.weight.shape) for m in modules)

    def build():
        return AttentionSharingWeights.from_state_dict(store.load(name), None, str(store.path(name)),
                                                       modules=modules)

    return _one_cached(("sharing", name, str(store.folder), shapes), build)
