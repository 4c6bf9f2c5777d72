"""Read by Forge while it builds its command-line parser (keep it import-light)."""


def preload(parser) -> None:
    parser.add_argument(
        "--layerdiffuse-models-dir", type=str, default=None,
        help="Folder for the LayerDiffuse weight files (default: models/layer_model). "
             "The LAYERDIFFUSE_MODELS_DIR environment variable, when set, takes precedence.")
