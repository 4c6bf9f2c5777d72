"""The diffusers engine: every LayerDiffuse method on a user's SD1.5 / SDXL diffusers pipeline."""

from .conditions import condition_latents, control_pixels, fit_image, prepare_condition
from .family import (ModelLocation, ModelNotAvailableError, UnsupportedModelError, check_method_family,
                     family_of_checkpoint_file, family_of_model, family_of_unet, family_of_unet_config,
                     locate_model)
from .generate import LayerDiffuse, format_infotext
from .outputs import LayerImage, LayerResult, decode_outputs, save_png, vae_decode
from .samplers import SAMPLERS, default_sampler, make_scheduler, parse_sampler
from .sharing import (AttentionSharingWeights, SharingProcessor, SharingState,
                      install_attention_sharing, sharing_module_names)
from .unet_hook import UNetStepHook, broadcast_condition, stop_timestep

__all__ = [
    "condition_latents", "control_pixels", "fit_image", "prepare_condition", "ModelLocation",
    "ModelNotAvailableError", "UnsupportedModelError", "locate_model",
    "check_method_family", "family_of_checkpoint_file", "family_of_model", "family_of_unet",
    "family_of_unet_config", "LayerDiffuse", "format_infotext", "LayerImage", "LayerResult",
    "decode_outputs", "save_png", "vae_decode", "SAMPLERS", "default_sampler", "make_scheduler",
    "parse_sampler", "AttentionSharingWeights", "SharingProcessor", "SharingState",
    "install_attention_sharing", "sharing_module_names", "UNetStepHook", "broadcast_condition",
    "stop_timestep",
]
