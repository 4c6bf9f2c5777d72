"""LDM -> diffusers parameter names for the SD1.5 and SDXL UNets."""

from __future__ import annotations

from typing import Union

from ..methods import Family
from ..unet_blocks import RESNET, RESNET_PARTS, block_table

MODEL_PREFIX = "diffusion_model."


def ldm_to_diffusers(key: str, family: Union[Family, str]) -> str:
    """The diffusers name of an LDM UNet parameter (or module) name.

    `key` may carry the `diffusion_model.` prefix; a `::type::index` suffix must be stripped
    by the caller. Raises KeyError naming the key when it is not part of a `family` UNet.
    """
    fam = Family(family)
    name = key[len(MODEL_PREFIX):] if key.startswith(MODEL_PREFIX) else key
    table = block_table(fam)
    parts = name.split(".")
    for n in range(min(len(parts), 4), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in table:
            target, kind = table[prefix]
            rest = parts[n:]
            if kind == RESNET and rest:
                inner = ".".join(rest[:2])
                if inner in RESNET_PARTS:
                    rest = [RESNET_PARTS[inner]] + rest[2:]
                elif rest[0] in RESNET_PARTS:
                    rest = [RESNET_PARTS[rest[0]]] + rest[1:]
                else:
                    raise KeyError(f"{key!r}: {'.'.join(rest)!r} is not a ResBlock parameter")
            return ".".join([target] + rest)
    raise KeyError(f"{key!r} is not a parameter of the {fam.label} UNet (no block {parts[0]!r}"
                   f"{'.' + parts[1] if len(parts) > 1 else ''})")
