"""The LayerDiffuse methods (ten for SD1.5 and SDXL, one for Flux), the native RGBA of
Qwen-Image-2.1, and what each one needs.

The enum values are the reference extension's current display strings, so an infotext or an
API payload written for the reference parses unchanged. `Method.parse` also accepts the names
used before 2024-03-08 (the SDXL strings without their "(SDXL) " prefix), the member names and
any capitalisation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union


class Family(str, enum.Enum):
    """Stable Diffusion model family a method (and a weight file) belongs to."""

    SD15 = "sd15"
    SDXL = "sdxl"
    FLUX = "flux"
    QWEN21 = "qwen21"

    @property
    def label(self) -> str:
        return {"sd15": "SD1.5", "sdxl": "SDXL", "flux": "Flux.1", "qwen21": "Qwen-Image-2.1"}[self.value]

    @property
    def native_rgba(self) -> bool:
        """The model makes RGBA itself (an RGBA VAE): no LayerDiffuse weights, no patching."""
        return self is Family.QWEN21


class PatchKind(str, enum.Enum):
    """How a method's UNet weight file changes the UNet."""

    LORA = "lora"  # merged rank-256 LoRA (SDXL attention injection)
    DIFF = "diff"  # merged full weight offsets (SDXL conv injection and the layer models)
    ATTENTION_SHARING = "attention_sharing"  # SD1.5 run-time attention modules
    TRANSFORMER_LORA = "transformer_lora"  # a LoRA in diffusers names, merged into the Flux transformer
    NATIVE = "native"  # nothing to patch: the model's own VAE decodes RGBA (Qwen-Image-2.1)


@dataclass(frozen=True)
class MethodSpec:
    """Everything the engines and the UIs need to know about one method.

    `frames` names the images produced together for one sample, in the interleaved batch order
    (sample index = b * len(frames) + f). `conditions` are the layer images the user supplies;
    for the SDXL methods they are VAE-encoded and concatenated to the UNet input (in this
    order), for the SD1.5 methods the single condition drives the control encoder.
    `transparent` lists the frame indices whose output goes through the transparent decoder.
    `prompts` lists the frames that accept an additional per-frame prompt.
    """

    display: str
    family: Family
    unet_file: str
    patch_kind: PatchKind
    frames: tuple[str, ...]
    conditions: tuple[str, ...]
    transparent: tuple[int, ...]
    conv_in_channels: int = 4
    prompts: tuple[str, ...] = ()
    decoder_file: Optional[str] = None
    encoder_file: Optional[str] = None
    licence: str = ""  # a licence the user must know of when choosing the method (shown by the UIs)

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def weight_files(self) -> tuple[str, ...]:
        """All weight files this method loads, UNet file first."""
        files = [self.unet_file, self.decoder_file, self.encoder_file]
        return tuple(f for f in files if f)


_SD15_DEC = "layer_sd15_vae_transparent_decoder.safetensors"
_SD15_ENC = "layer_sd15_vae_transparent_encoder.safetensors"
_XL_DEC = "vae_transparent_decoder.safetensors"
_XL_ENC = "vae_transparent_encoder.safetensors"
QWEN21_LICENCE = ("Qwen-Image-2.1 is published under the Qwen Research License: research and non-commercial "
                  "use; commercial use, self-hosting included, needs a separate licence from Alibaba Cloud. "
                  "Check it before using the images commercially.")
FLUX_LICENCE = ("Flux LayerDiffuse runs on FLUX.1-dev, whose licence is non-commercial (FLUX.1 [dev] "
                "Non-Commercial License); its LoRA and VAE are published under AFL-3.0 on that base. "
                "Check both before using the images commercially.")

_SPECS: dict[str, MethodSpec] = {
    "FG_ONLY_ATTN_SD15": MethodSpec(
        "(SD1.5) Only Generate Transparent Image (Attention Injection)", Family.SD15,
        "layer_sd15_transparent_attn.safetensors", PatchKind.ATTENTION_SHARING,
        frames=("fg",), conditions=(), transparent=(0,),
        decoder_file=_SD15_DEC, encoder_file=_SD15_ENC),
    "FG_TO_BG_SD15": MethodSpec(
        "(SD1.5) From Foreground to Background (need batch size 2)", Family.SD15,
        "layer_sd15_fg2bg.safetensors", PatchKind.ATTENTION_SHARING,
        frames=("bg", "blend"), conditions=("fg",), transparent=(),
        prompts=("bg", "blend")),
    "BG_TO_FG_SD15": MethodSpec(
        "(SD1.5) From Background to Foreground (need batch size 2)", Family.SD15,
        "layer_sd15_bg2fg.safetensors", PatchKind.ATTENTION_SHARING,
        frames=("fg", "blend"), conditions=("bg",), transparent=(0,),
        prompts=("fg", "blend"), decoder_file=_SD15_DEC),
    "JOINT_SD15": MethodSpec(
        "(SD1.5) Generate Everything Together (need batch size 3)", Family.SD15,
        "layer_sd15_joint.safetensors", PatchKind.ATTENTION_SHARING,
        frames=("fg", "bg", "blend"), conditions=(), transparent=(0,),
        prompts=("fg", "bg", "blend"), decoder_file=_SD15_DEC),
    "FG_ONLY_ATTN": MethodSpec(
        "(SDXL) Only Generate Transparent Image (Attention Injection)", Family.SDXL,
        "layer_xl_transparent_attn.safetensors", PatchKind.LORA,
        frames=("fg",), conditions=(), transparent=(0,),
        decoder_file=_XL_DEC, encoder_file=_XL_ENC),
    "FG_ONLY_CONV": MethodSpec(
        "(SDXL) Only Generate Transparent Image (Conv Injection)", Family.SDXL,
        "layer_xl_transparent_conv.safetensors", PatchKind.DIFF,
        frames=("fg",), conditions=(), transparent=(0,),
        decoder_file=_XL_DEC, encoder_file=_XL_ENC),
    "FG_TO_BLEND": MethodSpec(
        "(SDXL) From Foreground to Blending", Family.SDXL,
        "layer_xl_fg2ble.safetensors", PatchKind.DIFF,
        frames=("blend",), conditions=("fg",), transparent=(), conv_in_channels=8),
    "FG_BLEND_TO_BG": MethodSpec(
        "(SDXL) From Foreground and Blending to Background", Family.SDXL,
        "layer_xl_fgble2bg.safetensors", PatchKind.DIFF,
        frames=("bg",), conditions=("fg", "blend"), transparent=(), conv_in_channels=12),
    "BG_TO_BLEND": MethodSpec(
        "(SDXL) From Background to Blending", Family.SDXL,
        "layer_xl_bg2ble.safetensors", PatchKind.DIFF,
        frames=("blend",), conditions=("bg",), transparent=(), conv_in_channels=8),
    "BG_BLEND_TO_FG": MethodSpec(
        "(SDXL) From Background and Blending to Foreground", Family.SDXL,
        "layer_xl_bgble2fg.safetensors", PatchKind.DIFF,
        frames=("fg",), conditions=("bg", "blend"), transparent=(0,), conv_in_channels=12,
        decoder_file=_XL_DEC),
    "FLUX_FG_ONLY": MethodSpec(
        "(Flux) Only Generate Transparent Image", Family.FLUX,
        "layerlora.safetensors", PatchKind.TRANSFORMER_LORA,
        frames=("fg",), conditions=(), transparent=(0,),
        decoder_file="layer_flux_vae_transparent_decoder.safetensors",
        encoder_file="layer_flux_vae_transparent_encoder.safetensors", licence=FLUX_LICENCE),
    "QWEN21_RGBA": MethodSpec(
        "(Qwen-Image-2.1) Native RGBA", Family.QWEN21, "", PatchKind.NATIVE,
        frames=("fg",), conditions=(), transparent=(0,), licence=QWEN21_LICENCE),
}

_SDXL_PREFIX = "(SDXL) "
_SD15_PREFIX = "(SD1.5) "
_FLUX_PREFIX = "(Flux) "
_QWEN21_PREFIX = "(Qwen-Image-2.1) "


class Method(enum.Enum):
    """A LayerDiffuse method; the value is the display string of the reference extension."""

    FG_ONLY_ATTN_SD15 = _SPECS["FG_ONLY_ATTN_SD15"].display
    FG_TO_BG_SD15 = _SPECS["FG_TO_BG_SD15"].display
    BG_TO_FG_SD15 = _SPECS["BG_TO_FG_SD15"].display
    JOINT_SD15 = _SPECS["JOINT_SD15"].display
    FG_ONLY_ATTN = _SPECS["FG_ONLY_ATTN"].display
    FG_ONLY_CONV = _SPECS["FG_ONLY_CONV"].display
    FG_TO_BLEND = _SPECS["FG_TO_BLEND"].display
    FG_BLEND_TO_BG = _SPECS["FG_BLEND_TO_BG"].display
    BG_TO_BLEND = _SPECS["BG_TO_BLEND"].display
    BG_BLEND_TO_FG = _SPECS["BG_BLEND_TO_FG"].display
    FLUX_FG_ONLY = _SPECS["FLUX_FG_ONLY"].display
    QWEN21_RGBA = _SPECS["QWEN21_RGBA"].display

    @property
    def spec(self) -> MethodSpec:
        return _SPECS[self.name]

    @property
    def display(self) -> str:
        return self.value

    @property
    def family(self) -> Family:
        return self.spec.family

    @property
    def frames(self) -> int:
        return self.spec.frame_count

    @property
    def conditions(self) -> tuple[str, ...]:
        return self.spec.conditions

    @property
    def conv_in_channels(self) -> int:
        return self.spec.conv_in_channels

    @property
    def weight_files(self) -> tuple[str, ...]:
        return self.spec.weight_files

    @property
    def legacy_name(self) -> Optional[str]:
        """The name this method had before 2024-03-08 (SDXL only), or None."""
        if self.value.startswith(_SDXL_PREFIX):
            return self.value[len(_SDXL_PREFIX):]
        return None

    @classmethod
    def default(cls, family: Union[Family, str, None] = None) -> "Method":
        """The default method: SDXL attention injection, or the transparent foreground of the
        SD1.5, Flux or Qwen-Image-2.1 family when `family` says so."""
        own = {Family.SD15: cls.FG_ONLY_ATTN_SD15, Family.FLUX: cls.FLUX_FG_ONLY, Family.QWEN21: cls.QWEN21_RGBA}
        return own.get(Family(family), cls.FG_ONLY_ATTN) if family is not None else cls.FG_ONLY_ATTN

    @classmethod
    def choices(cls, forge: bool = False, first: Union[Family, str, None] = None) -> list[str]:
        """Display strings in dropdown order; with `forge`, the methods the Forge panel runs (a
        model with native RGBA runs on the host's own engine, without the panel); with `first`,
        that family's methods come first (the loaded checkpoint's)."""
        shown = [m for m in cls if not (forge and m.family.native_rgba)]
        if first is not None:
            family = Family(first)
            shown.sort(key=lambda m: m.family is not family)  # stable: each group keeps its order
        return [m.value for m in shown]

    @classmethod
    def parse(cls, text: Union[str, "Method"], family: Union[Family, str, None] = None) -> "Method":
        """Find a method from a display string, a legacy name or a member name (any case).

        A bare name such as "Only Generate Transparent Image (Attention Injection)" was an SDXL
        method before 2024-03-08; when `family` says the loaded model is SD1.5 and an SD1.5
        method of that name exists, that one is chosen instead.
        """
        if isinstance(text, cls):
            return text
        if not isinstance(text, str):
            raise TypeError(
                f"method must be a method name (str), got {type(text).__name__}: {text!r}")
        key = " ".join(text.split()).casefold()
        for member in cls:
            if key in (member.value.casefold(), member.name.casefold()):
                return member
        matches = [m for m in cls if key == _unprefixed(m.value).casefold()]
        if matches:
            preferred = Family(family) if family is not None else Family.SDXL
            return sorted(matches, key=lambda m: m.family is not preferred)[0]
        valid = "\n  ".join(f"{m.value}  (or {m.name})" for m in cls)
        raise ValueError(f"unknown LayerDiffuse method {text!r}; valid methods are:\n  {valid}")


def _unprefixed(display: str) -> str:
    for prefix in (_SDXL_PREFIX, _SD15_PREFIX, _FLUX_PREFIX, _QWEN21_PREFIX):
        if display.startswith(prefix):
            return display[len(prefix):]
    return display


def methods_for(family: Union[Family, str]) -> list[Method]:
    """The methods that run on a model of `family`."""
    fam = Family(family)
    return [m for m in Method if m.family is fam]
