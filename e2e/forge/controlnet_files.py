"""A random full-size SD1.5 ControlNet for the rig, in the layout of the official v1.1 files as
Forge users load them (`control_v11p_sd15_*_fp16.safetensors`: `control_model.` + the UNet's
encoder (`time_embed`, `input_blocks`, `middle_block`), a zero convolution after every input
block and the middle block, and the hint encoder that takes the 3-channel control image).
"""

from __future__ import annotations

from pathlib import Path

from lib_layerdiffuse.testing.checkpoints import random_tensors
from lib_layerdiffuse.testing.unet_specs import FULL, UNetSpec, ldm_unet_layout

PREFIX = "control_model."
# input_hint_block: conv layers at even indices (SiLU between them), strides 1, 1, 2, 1, 2, 1, 2, 1
HINT_CHANNELS = (3, 16, 16, 32, 32, 96, 96, 256)


def controlnet_layout(spec: UNetSpec = FULL["sd15"]) -> dict[str, tuple[int, ...]]:
    unet = ldm_unet_layout(spec)
    layout = {k: v for k, v in unet.items() if k.startswith(("time_embed.", "input_blocks.", "middle_block."))}
    blocks = sorted({int(k.split(".")[1]) for k in layout if k.startswith("input_blocks.")})
    for i in blocks:  # each input block's output channels: its last conv or its last ResBlock's
        out = _block_out(unet, i)
        layout[f"zero_convs.{i}.0.weight"], layout[f"zero_convs.{i}.0.bias"] = (out, out, 1, 1), (out,)
    middle = unet["middle_block.2.out_layers.3.weight"][0]
    layout["middle_block_out.0.weight"], layout["middle_block_out.0.bias"] = (middle, middle, 1, 1), (middle,)
    channels = (*HINT_CHANNELS, spec.model_channels)
    for n, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layout[f"input_hint_block.{2 * n}.weight"] = (cout, cin, 3, 3)
        layout[f"input_hint_block.{2 * n}.bias"] = (cout,)
    return layout


def _block_out(unet: dict[str, tuple[int, ...]], i: int) -> int:
    for suffix in ("0.out_layers.3.weight", "0.op.weight", "0.weight"):
        key = f"input_blocks.{i}.{suffix}"
        if key in unet:
            return unet[key][0]
    raise KeyError(f"input block {i} has no output convolution in the layout")


def write_controlnet(path: Path, seed: int = 0, spec: UNetSpec = FULL["sd15"]) -> Path:
    """The random ControlNet in fp16 (about 720 MB at full size); kept when already there."""
    from safetensors.torch import save_file

    if path.is_file():
        return path
    tensors = {PREFIX + k: v for k, v in random_tensors(controlnet_layout(spec), seed)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path


def listed_name(path: Path) -> str:
    """The name current and early Forge's ControlNet list the file under (and their API takes):
    the file name without extension and the WebUI's old short hash (SHA-256 of 64 KiB at 1 MiB,
    8 digits). Forge Neo lists the bare file name (`host_name` asks the host)."""
    import hashlib

    with open(path, "rb") as fh:
        fh.seek(0x100000)
        digest = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    return f"{path.stem} [{digest}]"


def host_name(path: Path, listed: list[str]) -> str:
    """The entry of the host's ControlNet model list (`/controlnet/model_list`) for `path`:
    with the short hash on current and early Forge, the bare file name on Forge Neo. When
    neither is listed, the hashed name (the case then fails with the host's own error)."""
    hashed = listed_name(path)
    return next((name for name in listed if name in (hashed, path.stem)), hashed)
