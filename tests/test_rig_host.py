"""The real-Forge rig's choice of Python for Forge Neo's venv (e2e/forge/host.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "forge"))

import host  # noqa: E402


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(os.name != "posix", reason="shell-script stand-ins for pythons")
def test_a_pyenv_shim_that_cannot_run_is_passed_over_for_pyenvs_own_python(tmp_path, monkeypatch):
    # pyenv puts a python3.13 shim on PATH even where 3.11 is selected; it then exits 127
    _script(tmp_path / "shims" / "python3.13", "echo 'pyenv: python3.13: command not found' >&2; exit 127")
    real = _script(tmp_path / "pyenv" / "versions" / "3.13.0" / "bin" / "python", f'exec "{sys.executable}" "$@"')
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.delenv("FORGE_RIG_NEO_PYTHON", raising=False)
    assert host.neo_python() == str(real)


@pytest.mark.skipif(os.name != "posix", reason="shell-script stand-ins for pythons")
def test_no_runnable_python_313_is_a_clear_error(tmp_path, monkeypatch):
    _script(tmp_path / "shims" / "python3.13", "exit 127")
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "none"))
    monkeypatch.delenv("FORGE_RIG_NEO_PYTHON", raising=False)
    with pytest.raises(RuntimeError, match="FORGE_RIG_NEO_PYTHON"):
        host.neo_python()
