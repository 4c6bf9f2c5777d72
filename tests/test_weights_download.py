"""Downloads against a loopback file host: success, resume, corruption, HTTP and network errors."""

import hashlib

import pytest
import requests

from lib_layerdiffuse.methods import Family
from lib_layerdiffuse.testing.file_server import FileServer
from lib_layerdiffuse.testing.network import NetworkAccessError
from lib_layerdiffuse.weights import (
    CATALOG,
    WeightDownloadError,
    WeightFile,
    WeightIntegrityError,
    WeightStore,
    download_file,
)
from lib_layerdiffuse.weights.download import part_path

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with FileServer({"w.safetensors": PAYLOAD}) as srv:
        yield srv


def test_download_verifies_and_renames(server, tmp_path):
    target = tmp_path / "w.safetensors"
    download_file(server.url("w.safetensors"), target, SHA, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert not part_path(target).exists()


def test_interrupted_download_leaves_nothing_loadable_then_resumes(server, tmp_path):
    target = tmp_path / "w.safetensors"
    server.behaviour.cut_after = 300_000
    with pytest.raises(WeightDownloadError) as err:
        download_file(server.url("w.safetensors"), target, SHA, progress=False)
    msg = str(err.value)
    assert "w.safetensors" in msg and server.url("w.safetensors") in msg and str(target) in msg
    assert "resumes" in msg
    assert not target.exists()
    kept = part_path(target).stat().st_size
    assert 0 < kept <= 300_000  # the bytes that arrived are kept for resuming

    server.behaviour.cut_after = None
    download_file(server.url("w.safetensors"), target, SHA, progress=False)
    assert server.behaviour.requests[-1]["headers"]["Range"] == f"bytes={kept}-"
    assert target.read_bytes() == PAYLOAD and not part_path(target).exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    target = tmp_path / "w.safetensors"
    part_path(target).write_bytes(b"stale bytes from another file")
    server.behaviour.ignore_range = True
    download_file(server.url("w.safetensors"), target, SHA, progress=False)
    assert target.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_a_body(server, tmp_path):
    target = tmp_path / "w.safetensors"
    part_path(target).write_bytes(PAYLOAD)
    download_file(server.url("w.safetensors"), target, SHA, progress=False)
    assert target.read_bytes() == PAYLOAD


def test_corrupt_download_is_deleted_and_reported(server, tmp_path):
    target = tmp_path / "w.safetensors"
    wrong = "0" * 64
    with pytest.raises(WeightIntegrityError) as err:
        download_file(server.url("w.safetensors"), target, wrong, progress=False)
    assert SHA in str(err.value) and wrong in str(err.value)
    assert not target.exists() and not part_path(target).exists()


def test_http_error_names_file_url_and_target(server, tmp_path):
    target = tmp_path / "missing.safetensors"
    with pytest.raises(WeightDownloadError) as err:
        download_file(server.url("missing.safetensors"), target, SHA, progress=False)
    msg = str(err.value)
    assert "HTTP 404" in msg and server.url("missing.safetensors") in msg and str(target) in msg
    assert not target.exists() and not part_path(target).exists()


def test_unreachable_host_is_one_clear_error(tmp_path):
    with FileServer({}) as srv:
        url = srv.url("w.safetensors")
    target = tmp_path / "w.safetensors"  # the server is gone: connection refused
    with pytest.raises(WeightDownloadError) as err:
        download_file(url, target, SHA, progress=False)
    msg = str(err.value)
    assert "unreachable" in msg and url in msg and str(target) in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_tests_cannot_reach_the_real_hub(tmp_path):
    with pytest.raises(NetworkAccessError):
        requests.get(CATALOG["vae_transparent_encoder.safetensors"].url, timeout=5)


def test_store_downloads_through_hf_endpoint_and_loads(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "src.safetensors"
    save_file({"blocks.0.weight": torch.ones(2, 2)}, str(src))
    data = src.read_bytes()
    name = "vae_transparent_encoder.safetensors"
    entry = WeightFile(name, hashlib.sha256(data).hexdigest(), len(data), Family.SDXL, "encoder")
    with FileServer({name: data}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        store = WeightStore(tmp_path / "models", progress=False, catalog={name: entry})
        assert store.status(name).state.value == "missing"
        tensors = store.load(name)
        assert srv.behaviour.requests[0]["path"] == f"/LayerDiffusion/layerdiffusion-v1/resolve/main/{name}"
    assert tensors["blocks.0.weight"].sum().item() == 4
    assert store.status(name).state.value == "verified"
