"""LayerDiffuse for Stable Diffusion: latent transparency on Forge and on plain diffusers.

The core is pure torch/numpy; Forge glue lives in `lib_layerdiffuse.forge` and UI libraries
(gradio, rembg) are imported only where they are used.
"""

__version__ = "0.1.0"
