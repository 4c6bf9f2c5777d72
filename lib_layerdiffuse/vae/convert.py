"""Turning LayerDiffuse-Flux's pickled `TransparentVAE.pth` into the two safetensors files the
Flux method loads, once.

The release saves the whole `TransparentVAE` module's state dict: `decoder.*` (a UNet1024 with
16 latent channels), `encoder.*` (the 16-channel offset encoder) and usually `sd_vae.*` (a copy
of the Flux VAE, which the pipeline already has; dropped). Its demo loads it with
`strict=False`, which would hide a wrong or damaged file; here the file is read with
`torch.load(weights_only=True)` (plain tensors only, no code runs), every decoder and encoder
key must fit our networks exactly, and anything else in the file is an error.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Union

import torch

from ..weights.catalog import CATALOG, FLUX_VAE_PICKLE, file_for
from ..weights.errors import WeightFormatError
from ..weights.integrity import sha256_file
from ..weights.store import WeightStore
from .frontends import check_strict, decoder_network, encoder_network

SOURCE = FLUX_VAE_PICKLE
IGNORED_PREFIX = "sd_vae."  # the Flux VAE itself, saved along


def read_pickled_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of a pickled state dict, read without running code from the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightFormatError(f"{path} does not exist or is not a file.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightFormatError(
            f"{path} cannot be read as a plain PyTorch state dict ({first}). It may be truncated (download "
            "it again) or hold more than tensors, which is not loaded for safety.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise WeightFormatError(f"{path} is not a state dict (a mapping of names to tensors).")
    return state


def split_flux_vae(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor],
                                                                        dict[str, torch.Tensor]]:
    """(decoder, encoder) tensors of a TransparentVAE state dict, checked key by key against
    our networks (their level widths are read from the file; the catalog's layout hash then
    decides whether they are the released ones)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"decoder": {}, "encoder": {}}
    unknown = []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in parts and rest:
            parts[head][rest] = value
        elif not key.startswith(IGNORED_PREFIX):
            unknown.append(key)
    if unknown:
        raise WeightFormatError(
            f"{source}: {len(unknown)} keys belong to neither the decoder nor the encoder of the Flux transparent "
            f"VAE (first: {unknown[0]}). Is it LayerDiffuse-Flux's {SOURCE}?")
    decoder, encoder = parts["decoder"], parts["encoder"]
    with torch.device("meta"):
        decoder_net = decoder_network(decoder) if decoder else None
        encoder_net = encoder_network(encoder) if encoder else None
    if decoder_net is None or encoder_net is None:
        raise WeightFormatError(f"{source} has no {'decoder' if decoder_net is None else 'encoder'}.* keys; "
                                f"LayerDiffuse-Flux's {SOURCE} holds both.")
    if decoder_net.latent_conv_in.in_channels != 16 or encoder_net.blocks[-1].out_channels != 16:
        raise WeightFormatError(f"{source} has a {decoder_net.latent_conv_in.in_channels}-channel decoder and a "
                                f"{encoder_net.blocks[-1].out_channels}-channel encoder; the Flux VAE latent has 16 "
                                "channels (the SD1.5 and SDXL files are safetensors already).")
    check_strict(decoder_net, decoder, f"{source} (decoder.*)")
    check_strict(encoder_net, encoder, f"{source} (encoder.*)")
    return decoder, encoder


def convert_flux_vae(source: Union[str, Path], store: WeightStore) -> list[Path]:
    """Write the Flux decoder and encoder safetensors files into the store's folder from the
    release's `TransparentVAE.pth`, atomically, and record their SHA-256. Returns their paths."""
    from safetensors.torch import save_file

    source = Path(source)
    decoder, encoder = split_flux_vae(read_pickled_state_dict(source), str(source))
    source_sha = sha256_file(source, progress=store.progress)
    store.folder.mkdir(parents=True, exist_ok=True)
    written = []
    for role, tensors in (("decoder", decoder), ("encoder", encoder)):
        name = file_for(CATALOG[SOURCE].family, role)
        target = store.folder / name
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"converted_from": source.name, "source_sha256": source_sha})
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        digest = sha256_file(target, progress=False)
        store.hashes.put(target, digest)
        store.recorded.put(name, digest)
        written.append(target)
    return written
