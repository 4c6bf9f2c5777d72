"""A real Forge to test against: its venv, its repositories, random weights, this checkout as
an extension, and the server started headless on 127.0.0.1.

Nothing of Forge is copied here: the rig works on a Forge source tree the user gives
(`FORGE_DIR`: a checkout of lllyasviel/stable-diffusion-webui-forge at `main` or `previous`, or
a Forge Neo tree, e.g. the `webui/` folder of exo101/sd-webui-forge-neo-v3 without its bundled
extensions).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests

PROJECT = Path(__file__).resolve().parents[2]
EXTENSION_NAME = "layerdiffuse-under-test"
# renamed whenever the writer changes: the cache keeps files
CHECKPOINT_NAMES = {"sd15": "rig-random-sd15-v2.safetensors", "sdxl": "rig-random-sdxl-v2.safetensors",
                    "flux": "rig-random-flux1-dev-Q4_0.gguf"}  # flux_files.TRANSFORMER
# pip takes the machine's CPU build for an exact version; Forge's own default is a CUDA index
TORCH_SPEC = os.environ.get("FORGE_RIG_TORCH", "torch==2.14.1 torchvision==0.29.1")
# Neo: Python 3.13 and its own pins; pip offers torch 2.11 for cp313 only as the CUDA build,
# which runs on the CPU. gradio goes in before requirements.txt, whose Pillow pin gradio's own
# `pillow<11` would refuse in one resolve (Neo's launcher installs them in that order too).
NEO_TORCH_SPEC = os.environ.get("FORGE_RIG_NEO_TORCH", "torch==2.11.0 torchvision==0.26.0")
NEO_GRADIO_SPEC = "gradio==4.40.0 gradio_rangeslider==0.0.8"
NEO_PYTHON = "3.13"
RIG_FLAGS = ("--skip-prepare-environment", "--skip-python-version-check", "--skip-torch-cuda-test",
             "--skip-version-check", "--api", "--layerdiffuse-allow-unpinned")
CPU_FLAG = {1: "--always-cpu", 2: "--always-cpu", 3: "--cpu"}  # by generation; Neo renamed it
START_TIMEOUT = 900.0
STARTED_LINE = "Startup time:"  # webui.py prints it after the API is complete (both generations)
OPTIONAL_REPOSITORIES = {"BLIP": "the CLIP interrogator"}  # folder -> what uses it
# What Forge's launcher would install beyond its requirements (the rig skips the launcher's own
# environment step): early Forge imports openai's CLIP (a github.com archive; the same code is
# on PyPI as clip-anytorch), and its pytorch_lightning imports pkg_resources, which new
# setuptools no longer has.
LAUNCHER_PACKAGES = {"clip": "clip-anytorch", "open_clip": "open-clip-torch", "pkg_resources": "setuptools<70"}


def log(message: str) -> None:
    print(f"[forge-rig] {message}", flush=True)


def run(cmd: list[str], cwd: Path, **kwargs) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], cwd=str(cwd), check=True, **kwargs)


@dataclass
class Forge:
    """One Forge source tree and what the rig adds to it."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def generation(self) -> int:
        """3 for Forge Neo, 2 for current Forge (backend/), 1 for early Forge (ldm_patched/)."""
        if self.neo_release() is not None:
            return 3
        return 2 if (self.root / "backend").is_dir() else 1

    def neo_release(self) -> Optional[str]:
        """Neo's release ("2.26") from modules_forge/forge_version.py, None for lllyasviel's Forge."""
        try:
            text = (self.root / "modules_forge" / "forge_version.py").read_text()
        except OSError:
            return None
        if not re.search(r"^version\s*=\s*[\"']neo[\"']", text, re.M):
            return None
        found = re.search(r"^release\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
        return found.group(1) if found else ""

    def commit(self) -> str:
        out = subprocess.run(["git", "-C", str(self.root), "rev-parse", "--short=8", "HEAD"],
                             capture_output=True, text=True)
        return out.stdout.strip() or "unknown"

    def version(self) -> str:
        if self.generation == 3:
            return f"Neo {self.neo_release()}"
        out = subprocess.run(["git", "-C", str(self.root), "describe", "--tags", "--always"],
                             capture_output=True, text=True)
        return out.stdout.strip() or "unknown"

    # ---- preparing -------------------------------------------------------------------

    def prepare_venv(self) -> None:
        """Forge's venv with a CPU torch and Forge's pinned requirements (skipped when it imports)."""
        neo = self.generation == 3
        launcher = {} if neo else LAUNCHER_PACKAGES
        if self.python.exists() and subprocess.run(
                [str(self.python), "-c", "import torch, torchvision, gradio, fastapi" + "".join(f", {m}" for m in launcher)],
                capture_output=True).returncode == 0:
            return
        if not self.python.exists():
            run([neo_python() if neo else sys.executable if _has_venv(sys.executable) else "python3",
                 "-m", "venv", "venv"], self.root)
        pip = [self.python, "-m", "pip", "install", "-q"]
        if neo:
            run([*pip, *NEO_TORCH_SPEC.split()], self.root)
            run([*pip, *NEO_GRADIO_SPEC.split()], self.root)
            run([*pip, "-r", "requirements.txt", *NEO_TORCH_SPEC.split()], self.root)
            return
        run([*pip, *TORCH_SPEC.split()], self.root)
        run([*pip, "-r", "requirements_versions.txt"], self.root)
        for module, requirement in launcher.items():
            if subprocess.run([str(self.python), "-c", f"import {module}"], capture_output=True).returncode:
                run([*pip, requirement], self.root)

    def pip_freeze(self) -> dict[str, str]:
        """{distribution name (lower case): version} of Forge's venv."""
        out = subprocess.run([str(self.python), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                             text=True, check=True).stdout
        return {n.lower().replace("_", "-"): v for n, _, v in (line.partition("==") for line in out.split()) if v}

    def repositories(self) -> list[tuple[str, str, str]]:
        """(folder, git URL, commit) of each repository Forge's launcher clones, read from its
        modules/launch_utils.py (the rig starts Forge with --skip-prepare-environment)."""
        text = (self.root / "modules" / "launch_utils.py").read_text()
        values = dict(re.findall(r"^\s*(\w+) = os\.environ\.get\('\w+', [\"']([^\"']+)[\"']\)", text, re.M))
        repos = []
        for url_var, folder, commit_var in re.findall(
                r"^\s*git_clone\((\w+), repo_dir\('([^']+)'\), \"[^\"]*\", (\w+)\)", text, re.M):
            repos.append((folder, values[url_var], values[commit_var]))
        return repos

    def prepare_repositories(self) -> None:
        """Clone what is missing. `FORGE_RIG_GIT_MIRROR` (a template such as
        `/mirrors/{owner}+{name}`) replaces github.com where it cannot be reached."""
        mirror = os.environ.get("FORGE_RIG_GIT_MIRROR")
        for folder, url, commit in self.repositories():
            target = self.root / "repositories" / folder
            try:
                if not target.is_dir():
                    source = url
                    if mirror:
                        owner, name = url.rstrip("/").removesuffix(".git").split("/")[-2:]
                        source = mirror.format(owner=owner, name=name)
                    run(["git", "clone", "-q", "--no-checkout", source, target], self.root)
                checkout = subprocess.run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", "-f", commit],
                                          cwd=str(target), capture_output=True, text=True)
                if checkout.returncode:
                    missing = _export_available(target, commit)
                    log(f"repositories/{folder}: {len(missing)} files are not in the mirror "
                        f"(e.g. {', '.join(missing[:3])}); the others are checked out")
            except subprocess.CalledProcessError:
                if folder not in OPTIONAL_REPOSITORIES:
                    raise
                log(f"repositories/{folder} is incomplete; only {OPTIONAL_REPOSITORIES[folder]} needs it")

    def install_extension(self, run_installer: bool = True) -> Path:
        """This checkout's files (tracked and new, not ignored ones) copied into extensions/,
        then (unless told not to) its install.py run the way Forge runs extension installers."""
        target = self.root / "extensions" / EXTENSION_NAME
        if target.exists():
            shutil.rmtree(target)
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT,
                               capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = PROJECT / name
            if src.is_file():
                dst = target / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        if run_installer:
            run([self.python, target / "install.py"], self.root, env={**os.environ, "PYTHONPATH": str(self.root)})
        return target

    def place(self, source: Path, folder: str) -> Path:
        """A file from the rig's cache in one of Forge's model folders (hard link when possible)."""
        dst = self.root / "models" / folder / source.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.link(source, dst)
            except OSError:
                shutil.copy2(source, dst)
        return dst

    def outputs(self, url: str) -> Path:
        """The folder above txt2img's and img2img's output folders, from the running Forge's
        settings (current Forge saves under outputs/, early Forge under output/)."""
        options = requests.get(f"{url}/sdapi/v1/options", timeout=60).json()
        folders = [self.root / options[k] for k in ("outdir_txt2img_samples", "outdir_img2img_samples")]
        return Path(os.path.commonpath([str(f) for f in folders]))


def _export_available(repo: Path, commit: str) -> list[str]:
    """Write every file of `commit` whose content the clone has into its work tree; returns the
    paths it lacks. Repository snapshots may leave out large files (sample images, weights),
    and then `git checkout` refuses the whole commit although no code is missing."""
    listing = subprocess.run(["git", "ls-tree", "-r", "-z", commit], cwd=str(repo), capture_output=True,
                             check=True).stdout.decode().split("\0")
    missing = []
    for entry in filter(None, listing):
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind != "blob":
            continue
        blob = subprocess.run(["git", "cat-file", "blob", sha], cwd=str(repo), capture_output=True)
        if blob.returncode:
            missing.append(path)
            continue
        dst = repo / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(blob.stdout)
        if mode == "100755":
            dst.chmod(0o755)
    return missing


def neo_python() -> str:
    """A Python 3.13 for Neo's venv: `FORGE_RIG_NEO_PYTHON`, python3.13 on PATH, or pyenv's.
    Each must run and make venvs: pyenv's shim for python3.13 is on PATH even where another
    version is selected, and then fails with 'command not found'."""
    named = os.environ.get("FORGE_RIG_NEO_PYTHON")
    if named:
        return named
    on_path = shutil.which(f"python{NEO_PYTHON}")
    pyenv = sorted((Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions").glob(f"{NEO_PYTHON}.*"))
    for candidate in ([on_path] if on_path else []) + [str(root / "bin" / "python") for root in pyenv]:
        if _has_venv(candidate):
            return candidate
    raise RuntimeError(f"Forge Neo needs Python {NEO_PYTHON}: install it or set FORGE_RIG_NEO_PYTHON")


def _has_venv(python: str) -> bool:
    return subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0


class Server:
    """Forge started headless on 127.0.0.1 with --api; its console goes to `log_path`."""

    def __init__(self, forge: Forge, port: int, log_path: Path):
        self.forge, self.port, self.log_path = forge, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> float:
        """Start and wait for the API; returns the seconds it took."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "COMMANDLINE_ARGS": ""}
        cmd = [str(self.forge.python), "launch.py", *RIG_FLAGS, CPU_FLAG[self.forge.generation],
               "--port", str(self.port)]
        log(" ".join(cmd))
        self.log_file = open(self.log_path, "w")
        begin = time.monotonic()
        self.process = subprocess.Popen(cmd, cwd=str(self.forge.root), env=env, stdout=self.log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - begin < START_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"Forge exited with {self.process.returncode} while starting; see {self.log_path}")
            # The API's routes answer before it has computed every script's default arguments;
            # a call in that window gives every script an empty argument list. Forge prints its
            # startup line once that is done.
            if STARTED_LINE in self.log_since(0):
                try:
                    if requests.get(f"{self.url}/sdapi/v1/sd-models", timeout=5).ok:
                        return time.monotonic() - begin
                except requests.RequestException:
                    pass
            time.sleep(2)
        raise RuntimeError(f"Forge's API did not come up within {START_TIMEOUT:.0f} s; see {self.log_path}")

    def peak_memory_gb(self) -> float:
        """The most resident memory the Forge process has held since it started (VmHWM)."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
        except (OSError, AttributeError, ValueError):
            pass
        return 0.0

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, errors="replace") as fh:
            fh.seek(offset)
            return fh.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        if getattr(self, "log_file", None):
            self.log_file.close()
