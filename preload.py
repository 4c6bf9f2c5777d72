"""Read by Forge while it builds its command-line parser (keep it import-light)."""


def preload(parser) -> None:
    parser.add_argument(
        "--layerdiffuse-models-dir", type=str, default=None,
        help="Folder for the LayerDiffuse weight files (default: models/layer_model). "
             "The LAYERDIFFUSE_MODELS_DIR environment variable, when set, takes precedence.")
    parser.add_argument(
        "--layerdiffuse-allow-unpinned", action="store_true", default=False,
        help="Use LayerDiffuse layer files that are not the official ones (converted to fp16/fp8, fine-tuned, "
             "mirrored) when their tensors have the official names and shapes; each one's SHA-256 is logged "
             "and named in the infotext. Same as LAYERDIFFUSE_ALLOW_UNPINNED=1.")
