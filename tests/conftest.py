"""Test-wide guards: no network (loopback only), no hub access, and a private weight folder."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_ENDPOINT", None)

from lib_layerdiffuse.testing.network import loopback_only  # noqa: E402

pytest_plugins = ("forge_fixtures",)  # the fake Forge hosts, for test_forge*.py


@pytest.fixture(autouse=True, scope="session")
def _loopback_only():
    with loopback_only():
        yield


@pytest.fixture(autouse=True)
def _private_models_dir(tmp_path, monkeypatch):
    """Every test starts with empty weight and rembg model folders of its own (never the
    project's models/ or the user's ~/.u2net)."""
    folder = tmp_path / "models"
    monkeypatch.setenv("LAYERDIFFUSE_MODELS_DIR", str(folder))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    return folder
