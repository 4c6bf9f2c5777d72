"""LayerDiffuse weight files: the pinned catalog, where they live, download, verification, loading.

>>> from lib_layerdiffuse.weights import CATALOG, WeightStore
>>> CATALOG["vae_transparent_decoder.safetensors"].sha256[:8]
'59dc8fee'
"""

from .catalog import CATALOG, REPO_ID, WeightFile, file_for, hub_endpoint, human_size
from .download import download_file
from .errors import WeightDownloadError, WeightError, WeightFormatError, WeightIntegrityError, WeightMissingError
from .integrity import HashCache, sha256_file
from .loading import load_safetensors
from .location import ENV_VAR, ModelsDir, resolve_models_dir
from .store import FileStatus, State, WeightStore

__all__ = [
    "CATALOG", "REPO_ID", "WeightFile", "file_for", "hub_endpoint", "human_size", "download_file",
    "WeightError", "WeightDownloadError", "WeightFormatError", "WeightIntegrityError",
    "WeightMissingError", "HashCache", "sha256_file", "load_safetensors", "ENV_VAR",
    "ModelsDir", "resolve_models_dir", "FileStatus", "State", "WeightStore",
]
