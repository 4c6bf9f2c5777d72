"""Run by Forge (in a subprocess) before every start: install what LayerDiffuse needs and lacks.

Only missing packages are installed, never upgraded: Forge pins its own torch, numpy, Pillow
and gradio (and transformers; it bundles the rest), and replacing any of them can break the WebUI.
Outside Forge, `pip install -e .` from pyproject.toml does this job instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

# distribution name -> requirement to install when it is absent (mirrors pyproject.toml)
REQUIREMENTS = {
    "diffusers": "diffusers>=0.25",
    "safetensors": "safetensors>=0.4",
    "requests": "requests>=2.28",
    "tqdm": "tqdm>=4.60",
    "tomli": "tomli>=1.1; python_version < '3.11'",
}
HOST_PINNED = ("torch", "numpy", "Pillow", "gradio", "transformers")

# The cutout panel: {distributions any of which counts as installed: pip arguments}. rembg goes
# in without its dependencies: from 2.0.70 it pins numpy, Pillow and scikit-image versions Forge
# cannot take, and 2.0.69 is the last release for Python 3.10 (Forge's); what it needs beyond
# Forge's own packages is listed here. Any onnxruntime build counts (two of them break each other).
REMBG = "--no-deps rembg==2.0.69" if sys.version_info < (3, 11) else "--no-deps rembg"
CUTOUT_REQUIREMENTS = {
    ("pymatting",): "pymatting>=1.1.10",
    ("pooch",): "pooch>=1.8",
    ("jsonschema",): "jsonschema",
    ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-rocm",
     "onnxruntime-openvino"): "onnxruntime>=1.16",
    ("rembg",): REMBG,
}


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(name) is not None


def applies(requirement: str) -> bool:
    """Whether a requirement's environment marker (`; python_version < '3.11'`) holds here, so
    that Forge does not run pip at every start for a package this Python never needs."""
    marker = requirement.partition(";")[2].strip()
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # pip's own copy, present wherever pip is
        from pip._vendor.packaging.markers import Marker
    return Marker(marker).evaluate()


def missing(is_installed=_installed) -> list[str]:
    """Requirements of this Python whose package is not installed at all."""
    out = [req for name, req in REQUIREMENTS.items() if applies(req) and not is_installed(name)]
    out += [req for names, req in CUTOUT_REQUIREMENTS.items() if not any(is_installed(n) for n in names)]
    return out


# Early Forge pins diffusers 0.25.0, which imports huggingface_hub.cached_download; hub 0.26
# removed it, and a fresh install of early Forge today resolves a newer hub (nothing pins it).
# Then diffusers cannot be imported at all, by LayerDiffuse or by Forge's own preprocessors.
OLD_DIFFUSERS_HUB = "huggingface_hub<0.26"


def diffusers_needs_older_hub() -> bool:
    """diffusers is installed but fails to import for want of `cached_download`."""
    res = subprocess.run([sys.executable, "-c", "import diffusers"], capture_output=True, text=True)
    return res.returncode != 0 and "cached_download" in res.stderr


def pip_commands(needed: list[str]) -> list[list[str]]:
    """The pip argument lists for `needed`: one install of everything that may bring its
    dependencies, one `--no-deps` install of the rest. Forge Neo re-checks its pins after the
    installers, and each pip start costs seconds: fewer runs, and none when nothing is missing."""
    # markers were evaluated already (`applies`); pip gets the bare requirement
    with_deps = [req.partition(";")[0].strip() for req in needed if not req.startswith("--no-deps ")]
    without = [req.removeprefix("--no-deps ").strip() for req in needed if req.startswith("--no-deps ")]
    return ([["install", *with_deps]] if with_deps else []) + \
        ([["install", "--no-deps", *without]] if without else [])


def forge_pip_command(args: list[str]) -> str:
    """Forge's `run_pip` pastes its command into a shell line (sh, or cmd.exe on Windows), where an
    unquoted `pymatting>=1.1.10` is a redirection: pip would get `pymatting` with no version and
    a file named `=1.1.10` would appear in Forge's folder. Double quotes work in both shells."""
    return " ".join(f'"{a}"' for a in args)


def main() -> int:
    try:
        import launch  # Forge's installer helpers; present when Forge runs this file

        is_installed = launch.is_installed

        def run_pip(args: list[str], desc: str) -> None:
            launch.run_pip(forge_pip_command(args), desc)
    except ImportError:
        is_installed = _installed

        def run_pip(args: list[str], desc: str) -> None:
            subprocess.run([sys.executable, "-m", "pip", *args], check=True)

    needed = missing(is_installed)
    if is_installed("diffusers") and diffusers_needs_older_hub():
        needed.append(OLD_DIFFUSERS_HUB)
    failed = 0
    for args in pip_commands(needed):
        wanted = " ".join(args[1:])
        try:
            run_pip(args, f"{wanted} for LayerDiffuse")
        except Exception as exc:  # report and carry on: Forge must still start
            failed += 1
            print(f"[LayerDiffuse] could not install {wanted}: {exc}. Install it by hand with "
                  f"'{sys.executable} -m pip {' '.join(args)}'.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
