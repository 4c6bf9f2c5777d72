"""The diffusers engine: every LayerDiffuse method on a user's SD1.5 / SDXL diffusers pipeline.

Names are imported from their modules on first use, so that `from lib_layerdiffuse.engine import
locate_model` (the command line's first check) does not load torch and diffusers.
"""

from importlib import import_module
from typing import Any

_MODULES = {
    "basics": ("fit_rgba", "format_infotext", "positive_int"),
    "conditions": ("condition_latents", "control_pixels", "fit_image", "prepare_condition"),
    "family": ("ModelLocation", "ModelNotAvailableError", "UnsupportedModelError", "check_method_family",
               "family_of_checkpoint_file", "family_of_model", "family_of_unet", "family_of_unet_config",
               "locate_model"),
    "generate": ("LayerDiffuse",),
    "outputs": ("LayerImage", "LayerResult", "decode_outputs", "save_png", "vae_decode"),
    "samplers": ("SAMPLERS", "default_sampler", "make_scheduler", "parse_sampler"),
    "sharing": ("AttentionSharingWeights", "SharingProcessor", "SharingState", "install_attention_sharing",
                "sharing_module_names"),
    "unet_hook": ("UNetStepHook", "broadcast_condition", "stop_timestep"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = list(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
