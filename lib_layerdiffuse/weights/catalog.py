"""The weight files: the 14 official LayerDiffuse files, pinned by SHA-256, and the Flux files.

LayerDiffuse-Flux publishes no hashes (its hub repository's LFS pointers could not be read from
here), so its entries are unpinned: a file's SHA-256 is recorded when it is downloaded or made
(`store.RECORDED_FILE`) and checked on every later use, and the two converted VAE files must
also have the exact layout of our networks. Its VAE comes as a pickle (`TransparentVAE.pth`),
which is never loaded: `python -m lib_layerdiffuse convert` turns it into the two safetensors
files the methods use (`converted_from`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..methods import Family

REPO_ID = "LayerDiffusion/layerdiffusion-v1"
FLUX_REPO_ID = "RedAIGC/Flux-version-LayerDiffuse"
FLUX_VAE_PICKLE = "TransparentVAE.pth"  # LayerDiffuse-Flux's VAE as published; converted to safetensors
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub host; `HF_ENDPOINT` points downloads at a mirror, as huggingface_hub does."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class WeightFile:
    """One official weight file.

    `approx_size` is the size published on the hub, rounded; it sizes progress bars and the
    free-space check. Integrity is decided by `sha256` alone; `layout_sha256` decides only
    whether a file that is not the official one may stand in for it when unpinned files are
    allowed (a converted, fine-tuned or mirrored copy with the same tensors). An empty `sha256`
    means no official hash is published (the Flux files): see the module docstring.
    """

    name: str
    sha256: str
    approx_size: int
    family: Family
    role: str
    layout_sha256: str = ""  # integrity.layout_sha256 of its keys and shapes: what an unpinned copy must match
    repo_id: str = REPO_ID
    converted_from: str = ""  # made locally from this catalog file by `convert`, never downloaded

    @property
    def pinned(self) -> bool:
        return bool(self.sha256)

    @property
    def url(self) -> str:
        return f"{hub_endpoint()}/{self.repo_id}/resolve/main/{self.converted_from or self.name}"


_MB = 1_000_000

CATALOG: dict[str, WeightFile] = {
    f.name: f
    for f in (
        WeightFile("layer_xl_transparent_attn.safetensors",
                   "b7919c5b4837fb64f24c97a7abdf1a9c6e8d60de080a5dae089dde098266df95",
                   743 * _MB, Family.SDXL, "unet-lora",
                   "63db3bbd72ee4cf18400d1df9b0506d191581f2e72160ac8e0450703f4d8c491"),
        WeightFile("layer_xl_transparent_conv.safetensors",
                   "5ee958d80dcd515fa7ac915274c536fadd3db5d919adeb5ff45107b6169aacc7",
                   3620 * _MB, Family.SDXL, "unet-diff",
                   "67d6d8f8963f0dd3dfec4164460a5c01b8108ce3d12a7f1869d164c5d270d385"),
        WeightFile("layer_xl_fg2ble.safetensors",
                   "50a29851ad56308f14d6c9ed375be17df6921efeca240b31f567f6b8c76d1e70",
                   702 * _MB, Family.SDXL, "unet-diff",
                   "6a70e3bf090b6a1e39934603ada2bcaa1c9522b19abc56baa4e607ed2f324ae0"),
        WeightFile("layer_xl_bg2ble.safetensors",
                   "2901d1353cc4ca763c8bedc48453b36e88680605f417c7f7ec730a7c36845d7c",
                   702 * _MB, Family.SDXL, "unet-diff",
                   "6a70e3bf090b6a1e39934603ada2bcaa1c9522b19abc56baa4e607ed2f324ae0"),
        WeightFile("layer_xl_fgble2bg.safetensors",
                   "179a61fdcdb149af1897b2840f24ba09466ab6265b2c792b0e99df557f0439be",
                   702 * _MB, Family.SDXL, "unet-diff",
                   "1d9041e36c333def26d1a25f0421fcaa30cfe1aa3112054793a4e4d320227c4c"),
        WeightFile("layer_xl_bgble2fg.safetensors",
                   "1688f0c17447f74662686fadd431f24d26a1ba8ffea322c6f56c8b5ed581b78d",
                   3620 * _MB, Family.SDXL, "unet-diff",
                   "590868c43f3ce3b1c314dfb99bc1926401204e836fcf4c7fa54fee9d0df2e9ed"),
        WeightFile("vae_transparent_decoder.safetensors",
                   "59dc8feefe40d26b6cb7186aed7af70c60d94ac4f9db8ebe7f121a01ba27a2fc",
                   208 * _MB, Family.SDXL, "decoder",
                   "811bf67758387b1af76a130a803eeee2b43400ca71981d743e21b99c332e1f6f"),
        WeightFile("vae_transparent_encoder.safetensors",
                   "47d048bd7c6f873b55d123ff424c0b584bbfb8a666f20aa634336e922f5c821c",
                   2_370_000, Family.SDXL, "encoder",
                   "ec65e0329e8747c227bff526ba91ecbc1af8c85ef5f12cfad5026377f35c0978"),
        WeightFile("layer_sd15_transparent_attn.safetensors",
                   "cc9ee87452bf1ccdd419035bf9618f6bdcaac1a2d3e23694d62e5a9c721da295",
                   350 * _MB, Family.SD15, "attention-sharing",
                   "54742db780ece86b8afc01aea129a7f0105afa2bddcfffeed86d6e493d34c123"),
        WeightFile("layer_sd15_joint.safetensors",
                   "2cc81c33c1a786bdc376c6d1bfb43dbdffda2f610f7c6b4ebd776505a29712bd",
                   554 * _MB, Family.SD15, "attention-sharing",
                   "1430528ee22a4a287462f49941ee4016487bbc59326bb0279a5c9876f4c8c08b"),
        WeightFile("layer_sd15_fg2bg.safetensors",
                   "5bade856ec3e55d6ceb0e35bbc97cea7fa4953f7776c8032f2fe52ba740ed580",
                   563 * _MB, Family.SD15, "attention-sharing",
                   "6e4ba11925ae59dce6de05c6a3c9d474e3f3b090bfb1baae9bfebe6cf3dd0f90"),
        WeightFile("layer_sd15_bg2fg.safetensors",
                   "8367f976da1cc4275e513c7fb40f977ca312e79e720d7db7ae94978a9359fb62",
                   563 * _MB, Family.SD15, "attention-sharing",
                   "6e4ba11925ae59dce6de05c6a3c9d474e3f3b090bfb1baae9bfebe6cf3dd0f90"),
        WeightFile("layer_sd15_vae_transparent_decoder.safetensors",
                   "6df4712dfbb3783231b22f869a5da5cbfea782ebb05f782bd9e8744bfb0cdf03",
                   208 * _MB, Family.SD15, "decoder",
                   "811bf67758387b1af76a130a803eeee2b43400ca71981d743e21b99c332e1f6f"),
        WeightFile("layer_sd15_vae_transparent_encoder.safetensors",
                   "4c6bd4fa714bcdc83ee73fac9092f0723c5cafc60befccf490c697c0a378725a",
                   2_370_000, Family.SD15, "encoder",
                   "ec65e0329e8747c227bff526ba91ecbc1af8c85ef5f12cfad5026377f35c0978"),
        # Flux: sizes are not published; these are estimated from the networks at 16 bits
        WeightFile("layerlora.safetensors", "", 300 * _MB, Family.FLUX, "transformer-lora",
                   repo_id=FLUX_REPO_ID),
        WeightFile(FLUX_VAE_PICKLE, "", 420 * _MB, Family.FLUX, "vae-pickle", repo_id=FLUX_REPO_ID),
        WeightFile("layer_flux_vae_transparent_decoder.safetensors", "", 208 * _MB, Family.FLUX, "decoder",
                   "97700ca67767e9634e60e030e2075105abf5f9523f93493228aeb7aa8645d111",
                   repo_id=FLUX_REPO_ID, converted_from=FLUX_VAE_PICKLE),
        WeightFile("layer_flux_vae_transparent_encoder.safetensors", "", 2_420_000, Family.FLUX, "encoder",
                   "8891eb6cc8fc407a303a534143d77f1e61427f55575adddc54ef1c72c295d6ee",
                   repo_id=FLUX_REPO_ID, converted_from=FLUX_VAE_PICKLE),
    )
}


def file_for(family: Family, role: str) -> str:
    """Name of the official file with this family and role (e.g. the SD1.5 "decoder")."""
    for name, entry in CATALOG.items():
        if entry.family is Family(family) and entry.role == role:
            return name
    raise ValueError(f"no {Family(family).label} file with role {role!r} in the catalog")


def human_size(n: int) -> str:
    """A byte count as people read it: 10.30 GB, 320 MB, 8 kB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
