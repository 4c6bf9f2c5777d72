"""The standalone web app: `python -m lib_layerdiffuse app` (gradio, on the diffusers engine).

`Backend` does the work (model, weights, generation, cutouts, files) and imports no gradio;
`page.serve(backend)` builds the page and starts the server. Needs the `app` extra.
"""

from .backend import Backend, Outputs
from .readiness import DEFAULT_MODEL, ModelState, check_model

__all__ = ["Backend", "DEFAULT_MODEL", "ModelState", "Outputs", "check_model"]
