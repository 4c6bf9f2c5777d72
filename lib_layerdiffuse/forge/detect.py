"""Which Forge we are running in, found by feature detection at call time (never by name): the
adapter of its generation, or an `UnsupportedHostError` that says what was found and what to do.
This module sits above the adapters, which know only `host.ForgeHost`."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Optional

from .gen1 import EarlyForge
from .gen2 import CurrentForge
from .host import ForgeHost, UnsupportedHostError
from .neo import neo_host

# The UNet patcher methods every generation must have for LayerDiffuse to work.
REQUIRED_PATCHER_METHODS = ("clone", "add_patches", "add_object_patch", "add_conditioning_modifier",
                            "add_extra_model_patcher_during_sampling", "load_frozen_patcher")
NEO_ROUTE = "Forge Neo (https://github.com/Haoming02/sd-webui-forge-classic, branch 'neo'), the maintained Forge"


def _import(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(name)
    except Exception:  # absent, or a different package of the same name that fails to import
        return None


def _missing_methods(patcher_cls: type) -> list[str]:
    return [m for m in REQUIRED_PATCHER_METHODS if not callable(getattr(patcher_cls, m, None))]


def detect_host() -> ForgeHost:
    """The adapter for the running Forge, or UnsupportedHostError explaining why there is none."""
    unet_v2 = _import("backend.patcher.unet")
    if unet_v2 is not None and hasattr(unet_v2, "UnetPatcher"):
        if hasattr(_import("backend.patcher.lora"), "weight_adapter"):  # Neo merges weight adapters
            missing = _missing_methods(unet_v2.UnetPatcher)
            if missing:
                raise UnsupportedHostError(f"this Forge Neo's UNet patcher lacks {', '.join(missing)}; LayerDiffuse "
                                           "was tested with Neo 2.26, update Neo or report the release")
            return neo_host(unet_v2)
        patcher = unet_v2.UnetPatcher
        missing = _missing_methods(patcher)
        if missing or "filename" not in inspect.signature(patcher.add_patches).parameters:
            raise UnsupportedHostError(
                "this WebUI has Forge's 'backend' package but its UNet patcher differs from current "
                f"Forge (missing: {', '.join(missing) or 'add_patches(filename=...)'}). LayerDiffuse supports "
                f"lllyasviel's Forge and {NEO_ROUTE}.")
        return CurrentForge({
            "unet": unet_v2, "memory": importlib.import_module("backend.memory_management"),
            "model_patcher": importlib.import_module("backend.patcher.base"),
            "sampling": importlib.import_module("backend.sampling.sampling_function"),
            "operations": importlib.import_module("backend.operations"),
        })
    unet_v1 = _import("modules_forge.unet_patcher")
    ldm = _import("ldm_patched.modules.model_patcher")
    if unet_v1 is not None and ldm is not None and hasattr(unet_v1, "UnetPatcher"):
        missing = _missing_methods(unet_v1.UnetPatcher)
        if missing:
            raise UnsupportedHostError(
                f"this Forge is too old for LayerDiffuse (its UNet patcher lacks {', '.join(missing)}; "
                "Forge from 2024-03-08 or later is needed). Update Forge with 'git pull'.")
        return EarlyForge({
            "unet": unet_v1, "memory": importlib.import_module("ldm_patched.modules.model_management"),
            "model_patcher": ldm, "sampling": importlib.import_module("modules_forge.forge_sampler"),
        })
    if ldm is not None:
        raise UnsupportedHostError(
            "this WebUI has 'ldm_patched' but not Forge's 'modules_forge' UNet patcher (reForge or "
            f"another fork); LayerDiffuse supports Stable Diffusion WebUI Forge and {NEO_ROUTE}.")
    raise UnsupportedHostError(
        "LayerDiffuse needs Stable Diffusion WebUI Forge (it patches the UNet through Forge's "
        "patcher); this WebUI has neither 'backend' nor 'ldm_patched' (plain AUTOMATIC1111?). "
        f"Use {NEO_ROUTE}, or outside Forge 'python -m lib_layerdiffuse generate' on diffusers.")
