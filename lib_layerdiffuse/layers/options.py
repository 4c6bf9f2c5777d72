"""Qwen-Image-Layered's settings and their defaults (the model card's), without torch: the
command line and the app read them before any model is loaded."""

DEFAULT_MODEL = "Qwen/Qwen-Image-Layered"
DEFAULT_LAYERS = 4
DEFAULT_STEPS = 50
DEFAULT_CFG = 4.0  # true CFG, with " " as the negative prompt
RESOLUTIONS = (640, 1024)  # the buckets the model was trained on; 640 is recommended
MAX_LAYERS = 16
LICENCE = "Qwen-Image-Layered is published under the Apache License 2.0."
