"""Install this checkout into a Forge Neo tree the way a Neo user does, and start Neo twice.

    python e2e/forge/install_check.py --forge-dir /path/to/neo/webui

A Neo user clones the extension into `extensions/` and restarts: Neo's launcher then runs every
extension's install.py and afterwards re-installs its own requirements.txt if any pin is unmet
("enforce requirements"). This check takes away what only LayerDiffuse brings (rembg,
pymatting, onnxruntime), starts Neo once without the extension (so that Neo's own installers
have settled), copies the checkout in, and runs Neo's real launch flow (`launch.py --exit`:
everything up to the server, installers included) twice. It passes when the first start runs
LayerDiffuse's pip at most twice (one install with dependencies, one without: rembg's releases
pin packages Neo pins otherwise), the second none, Neo never re-installs its requirements
after LayerDiffuse's installer, and every version Neo pins is the same after both starts.
Needs the package index (the first start installs the packages taken away).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from host import CPU_FLAG, EXTENSION_NAME, Forge, log  # noqa: E402

ONLY_OURS = ("rembg", "pymatting", "onnxruntime")
LAUNCH_FLAGS = ("--exit", "--skip-python-version-check", "--skip-torch-cuda-test", "--skip-version-check")
OUR_PIP = re.compile(r"^Installing .* for LayerDiffuse$", re.M)
ENFORCED = "Installing requirements"  # Neo's run_pip description for requirements.txt


def neo_pins(forge: Forge) -> dict[str, str]:
    """{name: version} that Neo's requirements.txt pins (for this Python)."""
    pins = {}
    for line in (forge.root / "requirements.txt").read_text().splitlines():
        found = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line)
        if found:
            pins[found.group(1).lower().replace("_", "-")] = found.group(2)
    return pins


def start(forge: Forge, label: str) -> str:
    """One run of Neo's launcher up to the server (`--exit`); returns its output."""
    cmd = [str(forge.python), "launch.py", *LAUNCH_FLAGS, CPU_FLAG[forge.generation]]
    log(f"{label}: {' '.join(cmd)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMMANDLINE_ARGS": ""}
    out = subprocess.run(cmd, cwd=str(forge.root), env=env, capture_output=True, text=True, timeout=3600)
    text = out.stdout + out.stderr
    if out.returncode:
        raise RuntimeError(f"{label}: Neo's launcher exited with {out.returncode}:\n{text[-3000:]}")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forge-dir", default=os.environ.get("FORGE_DIR"), help="Forge Neo tree (FORGE_DIR)")
    args = parser.parse_args(argv)
    forge = Forge(Path(args.forge_dir).resolve())
    if forge.generation != 3:
        parser.error(f"{forge.root} is not a Forge Neo tree (modules_forge/forge_version.py)")
    forge.prepare_venv()
    target = forge.root / "extensions" / EXTENSION_NAME
    if target.exists():
        import shutil

        shutil.rmtree(target)
    installed = forge.pip_freeze()
    present = [name for name in ONLY_OURS if name in installed]
    if present:
        subprocess.run([str(forge.python), "-m", "pip", "uninstall", "-q", "-y", *present], check=True)
    start(forge, "Neo alone")
    pins = neo_pins(forge)
    before = {k: v for k, v in forge.pip_freeze().items() if k in pins}
    forge.install_extension(run_installer=False)
    failures, counts = [], []
    for label in ("first start with LayerDiffuse", "second start"):
        text = start(forge, label)
        ours = OUR_PIP.findall(text)
        counts.append(len(ours))
        log(f"{label}: LayerDiffuse ran pip {len(ours)} time(s){': ' if ours else ''}{'; '.join(ours)}")
        if ENFORCED in text:
            failures.append(f"{label}: Neo re-installed its requirements after the extension installers")
        after = {k: v for k, v in forge.pip_freeze().items() if k in pins}
        changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
        if changed:
            failures.append(f"{label}: Neo's pinned packages changed: {changed}")
    if counts[0] > 2 or counts[1]:
        failures.append(f"pip runs by LayerDiffuse per start: {counts} (allowed: at most 2, then 0)")
    missing = [n for n in ONLY_OURS if n not in forge.pip_freeze()]
    if missing:
        failures.append(f"not installed after the first start: {', '.join(missing)}")
    print(f"\nForge {forge.version()} ({forge.commit()}): LayerDiffuse's pip runs per start {counts}; "
          f"Neo's {len(before)} pinned packages {'unchanged' if not any('pinned' in f for f in failures) else 'CHANGED'}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
