"""The weight folder: resolution order, states, the hash cache, corrupt and unreadable files."""

import hashlib
import math
import os
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from lib_layerdiffuse.methods import Family
from lib_layerdiffuse.testing.file_server import FileServer
from lib_layerdiffuse.testing.layer_files import (
    OFFSET_ENCODER_CHANNELS,
    decoder_layout,
    offset_encoder_layout,
    unet_file_layout,
    write_weight_file,
)
from lib_layerdiffuse.testing.unet_specs import FULL
from lib_layerdiffuse.weights import (
    CATALOG,
    REPO_ID,
    State,
    WeightFile,
    WeightFormatError,
    WeightIntegrityError,
    WeightMissingError,
    WeightStore,
    integrity,
    load_safetensors,
    resolve_models_dir,
)
from lib_layerdiffuse.weights.integrity import layout_sha256
from lib_layerdiffuse.weights.location import PROJECT_MODELS_DIR
from lib_layerdiffuse.weights.store import unpinned_allowed

NAME = "layer_sd15_vae_transparent_encoder.safetensors"


def make_file(tmp_path):
    src = tmp_path / "made.safetensors"
    save_file({"blocks.0.weight": torch.arange(6.0).reshape(2, 3)}, str(src))
    data = src.read_bytes()
    return data, WeightFile(NAME, hashlib.sha256(data).hexdigest(), len(data), Family.SD15, "encoder")


OFFICIAL = {n: e for n, e in CATALOG.items() if e.repo_id == REPO_ID}


def test_catalog_pins_all_14_official_files():
    assert len(OFFICIAL) == 14
    assert len({e.sha256 for e in OFFICIAL.values()}) == 14
    for name, e in OFFICIAL.items():
        assert e.pinned and not e.converted_from
        assert e.name == name and name.endswith(".safetensors")
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0
        assert e.url == f"https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/{name}"
        assert e.approx_size > 1_000_000
    assert CATALOG["vae_transparent_decoder.safetensors"].sha256 == \
        "59dc8feefe40d26b6cb7186aed7af70c60d94ac4f9db8ebe7f121a01ba27a2fc"
    assert sum(e.family is Family.SDXL for e in CATALOG.values()) == 8


def test_flux_files_are_unpinned_and_the_vae_files_are_made_from_the_pickle():
    flux = {n: e for n, e in CATALOG.items() if e.family is Family.FLUX}
    assert set(flux) == set(OFFICIAL).symmetric_difference(CATALOG)
    assert all(not e.pinned and e.repo_id == "RedAIGC/Flux-version-LayerDiffuse" for e in flux.values())
    assert flux["layerlora.safetensors"].url.endswith("/RedAIGC/Flux-version-LayerDiffuse/resolve/main/layerlora.safetensors")
    for role in ("decoder", "encoder"):
        entry = flux[f"layer_flux_vae_transparent_{role}.safetensors"]
        assert entry.converted_from == "TransparentVAE.pth" and entry.url.endswith("/TransparentVAE.pth")


class TestResolutionOrder:
    @pytest.fixture
    def forge(self, monkeypatch, tmp_path):
        """Fake the modules Forge has imported by the time our code runs."""
        shared = types.ModuleType("modules.shared")
        shared.cmd_opts = types.SimpleNamespace(layerdiffuse_models_dir=None)
        paths = types.ModuleType("modules.paths")
        paths.models_path = str(tmp_path / "webui" / "models")
        monkeypatch.setitem(sys.modules, "modules.shared", shared)
        monkeypatch.setitem(sys.modules, "modules.paths", paths)
        return shared

    def test_explicit_beats_everything(self, tmp_path, forge):
        assert resolve_models_dir(tmp_path / "x").path == tmp_path / "x"

    def test_env_var_beats_forge(self, tmp_path, forge, monkeypatch):
        monkeypatch.setenv("LAYERDIFFUSE_MODELS_DIR", str(tmp_path / "env"))
        d = resolve_models_dir()
        assert d.path == tmp_path / "env" and "LAYERDIFFUSE_MODELS_DIR" in d.source

    def test_forge_layer_model_folder(self, tmp_path, forge, monkeypatch):
        monkeypatch.delenv("LAYERDIFFUSE_MODELS_DIR")
        assert resolve_models_dir().path == tmp_path / "webui" / "models" / "layer_model"

    def test_forge_flag_beats_layer_model(self, tmp_path, forge, monkeypatch):
        monkeypatch.delenv("LAYERDIFFUSE_MODELS_DIR")
        forge.cmd_opts.layerdiffuse_models_dir = str(tmp_path / "flag")
        d = resolve_models_dir()
        assert d.path == tmp_path / "flag" and "--layerdiffuse-models-dir" in d.source

    def test_project_folder_outside_forge(self, monkeypatch):
        monkeypatch.delenv("LAYERDIFFUSE_MODELS_DIR")
        monkeypatch.delitem(sys.modules, "modules.shared", raising=False)
        monkeypatch.delitem(sys.modules, "modules.paths", raising=False)
        assert resolve_models_dir().path == PROJECT_MODELS_DIR
        assert (PROJECT_MODELS_DIR / "README.md").is_file()


def test_states_and_hash_cache(tmp_path, monkeypatch):
    data, entry = make_file(tmp_path)
    store = WeightStore(tmp_path / "m", progress=False, catalog={NAME: entry})
    assert store.status(NAME).state is State.MISSING
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / (NAME + ".part")).write_bytes(data[:10])
    assert store.status(NAME).state is State.PARTIAL
    store.path(NAME).write_bytes(data)
    assert store.status(NAME).state is State.PRESENT  # not hashed without verify

    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p, progress=True: calls.append(p) or real(p, progress))
    assert store.status(NAME, verify=True).state is State.VERIFIED
    assert WeightStore(tmp_path / "m", catalog={NAME: entry}).status(NAME, verify=True).state is State.VERIFIED
    assert len(calls) == 1  # a new store (new process) reads the cache file: no second hash

    os.utime(store.path(NAME), ns=(1, 1))  # same bytes, new mtime: hashed again
    assert store.status(NAME, verify=True).state is State.VERIFIED
    assert len(calls) == 2


def test_corrupt_file_reported_with_both_hashes_and_never_loaded(tmp_path):
    data, entry = make_file(tmp_path)
    store = WeightStore(tmp_path / "m", progress=False, allow_download=False, catalog={NAME: entry})
    store.folder.mkdir()
    store.path(NAME).write_bytes(data[:-1] + b"\0")
    st = store.status(NAME, verify=True)
    assert st.state is State.NOT_OFFICIAL and entry.sha256 in st.detail
    with pytest.raises(WeightIntegrityError) as err:
        store.load(NAME)
    msg = str(err.value)
    assert NAME in msg and entry.sha256 in msg and hashlib.sha256(data[:-1] + b"\0").hexdigest() in msg
    assert entry.url in msg and "not the official" in msg


def official_layout_copy(tmp_path, dtype=torch.float16):
    """An entry pinning one file, and other bytes with the same keys and shapes (a converted copy)."""
    tensors = {"blocks.0.weight": torch.ones(4, 4, 3, 3), "blocks.0.bias": torch.zeros(4)}
    entry = write_weight_file(tmp_path / "official" / NAME, tensors, Family.SD15, "encoder")
    copy = tmp_path / "copy.safetensors"
    save_file({k: (v * 0.5).to(dtype) for k, v in tensors.items()}, str(copy))
    return entry, copy.read_bytes()


def test_a_file_that_is_not_the_official_one_is_refused_without_a_download(tmp_path, monkeypatch):
    """Measured in Forge: a wrong-hash file was moved aside and downloaded again, which ended
    offline in "host unreachable". It is the user's file: keep it and say what it is."""
    entry, data = official_layout_copy(tmp_path)
    with FileServer({}) as srv:
        endpoint = srv.base_url
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # a download attempt would fail differently
    monkeypatch.delenv("LAYERDIFFUSE_ALLOW_UNPINNED", raising=False)
    store = WeightStore(tmp_path / "m", progress=False, catalog={NAME: entry})
    store.folder.mkdir()
    store.path(NAME).write_bytes(data)
    with pytest.raises(WeightIntegrityError) as err:
        store.load(NAME)
    msg = str(err.value)
    assert f"is not the official {NAME}" in msg and hashlib.sha256(data).hexdigest() in msg
    assert entry.sha256 in msg and "LAYERDIFFUSE_ALLOW_UNPINNED=1" in msg and "--layerdiffuse-allow-unpinned" in msg
    assert store.path(NAME).read_bytes() == data and not (store.folder / (NAME + ".corrupt")).exists()


def test_unpinned_files_with_the_official_layout_are_used_when_allowed(tmp_path, monkeypatch, caplog):
    entry, data = official_layout_copy(tmp_path, torch.float32)
    monkeypatch.setenv("LAYERDIFFUSE_ALLOW_UNPINNED", "1")
    store = WeightStore(tmp_path / "m", progress=False, allow_download=False, catalog={NAME: entry})
    store.folder.mkdir()
    store.path(NAME).write_bytes(data)
    assert store.status(NAME, verify=True).state is State.UNPINNED
    with caplog.at_level("WARNING", logger="lib_layerdiffuse.weights.store"):
        tensors = store.load(NAME)
        store.load(NAME)
    assert torch.equal(tensors["blocks.0.weight"], torch.full((4, 4, 3, 3), 0.5))
    digest = hashlib.sha256(data).hexdigest()
    assert store.unpinned == {NAME: digest}
    warnings = [r.getMessage() for r in caplog.records if "not the official file" in r.getMessage()]
    assert len(warnings) == 1 and digest in warnings[0]


def test_unpinned_files_must_have_the_official_layout(tmp_path):
    entry, _ = official_layout_copy(tmp_path)
    store = WeightStore(tmp_path / "m", progress=False, allow_download=False, catalog={NAME: entry},
                        allow_unpinned=True)
    store.folder.mkdir()
    save_file({"blocks.0.weight": torch.ones(4, 4, 3, 3)}, str(store.path(NAME)))  # a key missing
    with pytest.raises(WeightIntegrityError, match="cannot stand in for the official file"):
        store.load(NAME)
    torch.save({"blocks.0.weight": torch.ones(4, 4, 3, 3)}, store.path(NAME))  # a pickle: never opened
    assert store.status(NAME, verify=True).state is State.CORRUPT
    with pytest.raises(WeightIntegrityError, match="corrupt"):
        store.load(NAME)


def test_unpinned_is_allowed_by_the_environment_or_the_forge_flag(monkeypatch):
    monkeypatch.delenv("LAYERDIFFUSE_ALLOW_UNPINNED", raising=False)
    monkeypatch.delitem(sys.modules, "modules.shared", raising=False)
    assert not unpinned_allowed()
    monkeypatch.setenv("LAYERDIFFUSE_ALLOW_UNPINNED", "true")
    assert unpinned_allowed()
    monkeypatch.setenv("LAYERDIFFUSE_ALLOW_UNPINNED", "0")
    shared = types.ModuleType("modules.shared")
    shared.cmd_opts = types.SimpleNamespace(layerdiffuse_allow_unpinned=True)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    assert unpinned_allowed()


def test_catalog_layouts_are_the_official_full_size_layouts():
    """What an unpinned file is checked against: the layouts whose random fills came out
    byte-for-byte the size of the published files."""
    for name, entry in CATALOG.items():
        flux = entry.family is Family.FLUX
        if entry.role == "decoder":
            layout = decoder_layout(latent_channels=16 if flux else 4)
        elif entry.role == "encoder":
            layout = offset_encoder_layout(OFFSET_ENCODER_CHANNELS[:-1] + (16 if flux else 4,))
        elif flux:
            assert not entry.layout_sha256  # the LoRA is checked against the transformer it patches
            continue
        else:
            layout = unet_file_layout(name, FULL[entry.family.value])
        assert layout_sha256(layout) == entry.layout_sha256, name
        assert round(sum(math.prod(s) for s in layout.values()) * 2 / 1e6) == entry.approx_size // 1_000_000


def test_corrupt_file_is_moved_aside_and_downloaded_again(tmp_path, monkeypatch):
    data, entry = make_file(tmp_path)
    with FileServer({NAME: data}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        store = WeightStore(tmp_path / "m", progress=False, catalog={NAME: entry})
        store.folder.mkdir()
        store.path(NAME).write_bytes(b"garbage")
        tensors = store.load(NAME)
    assert tensors["blocks.0.weight"].shape == (2, 3)
    assert (store.folder / (NAME + ".corrupt")).read_bytes() == b"garbage"


def test_missing_without_download_says_where_to_put_it(tmp_path):
    store = WeightStore(tmp_path / "m", allow_download=False)
    with pytest.raises(WeightMissingError) as err:
        store.ensure(NAME)
    msg = str(err.value)
    assert NAME in msg and CATALOG[NAME].url in msg and str(tmp_path / "m" / NAME) in msg


def test_offline_store_gives_one_clear_error(tmp_path, monkeypatch):
    with FileServer({}) as srv:
        endpoint = srv.base_url
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # nothing listens there any more
    with pytest.raises(Exception) as err:
        WeightStore(tmp_path / "m", progress=False).ensure(NAME)
    assert type(err.value).__name__ == "WeightDownloadError"
    assert str(tmp_path / "m" / NAME) in str(err.value)
    assert not (tmp_path / "m" / NAME).exists()


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="not a LayerDiffuse weight file"):
        WeightStore(tmp_path).ensure("model.ckpt")


@pytest.mark.parametrize("content", [
    b"",  # empty
    b"<html>404 Not Found</html>",  # an error page saved under the right name
    b"\xff" * 64,  # header length far beyond the file
])
def test_garbage_files_raise_a_format_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightFormatError, match="bad.safetensors"):
        load_safetensors(path)


def test_truncated_file_raises_a_format_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightFormatError, match="truncated or corrupt"):
        load_safetensors(path)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin", "model.pth"])
def test_pickles_are_refused_without_being_opened(tmp_path, name):
    path = tmp_path / name
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(WeightFormatError, match="only .safetensors"):
        load_safetensors(path)


def test_file_for_finds_each_family_decoder_and_encoder():
    from lib_layerdiffuse.methods import Method
    from lib_layerdiffuse.weights import file_for

    assert file_for("sd15", "decoder") == "layer_sd15_vae_transparent_decoder.safetensors"
    assert file_for(Family.SDXL, "encoder") == "vae_transparent_encoder.safetensors"
    for m in Method:
        if m.spec.decoder_file:
            assert m.spec.decoder_file == file_for(m.family, "decoder")
    with pytest.raises(ValueError, match="SD1.5.*'vae'"):
        file_for("sd15", "vae")
