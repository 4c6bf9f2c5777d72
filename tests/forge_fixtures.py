"""Fixtures shared by the tests that run LayerDiffuse against the fake Forge hosts
(registered in conftest.py): the tiny layer files, each host generation with its settings and
saved files, and a fake gradio."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from lib_layerdiffuse.forge import saving, ui, unet_files
from lib_layerdiffuse.methods import Family, Method
from lib_layerdiffuse.testing.flux import tiny_flux_transformer
from lib_layerdiffuse.testing.layer_files import write_unet_files
from lib_layerdiffuse.testing.unet_specs import TINY
from lib_layerdiffuse.weights import WeightStore

import fake_forge as ff


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Tiny official-format files of both families, written once."""
    folder = tmp_path_factory.mktemp("layer_model")
    catalog = {}
    for family in ("sd15", "sdxl"):
        catalog.update(write_unet_files(folder, TINY[family]))
    catalog.update(write_flux_files(folder))
    return folder, catalog


def write_flux_files(folder):
    """The Flux LoRA for the stand-in Flux model and the VAE converted from a tiny pickle;
    returns their catalog entries (the decoder's layout is the tiny one)."""
    from lib_layerdiffuse.testing.flux import write_flux_lora, write_flux_vae_pickle
    from lib_layerdiffuse.testing.layer_files import TINY_DECODER_CONFIG, decoder_layout
    from lib_layerdiffuse.vae.convert import convert_flux_vae
    from lib_layerdiffuse.weights import CATALOG
    from lib_layerdiffuse.weights.integrity import layout_sha256

    catalog = {n: e for n, e in CATALOG.items() if e.family is Family.FLUX}
    decoder = Method.FLUX_FG_ONLY.spec.decoder_file
    catalog[decoder] = dataclasses.replace(
        catalog[decoder], layout_sha256=layout_sha256(decoder_layout(latent_channels=16, **TINY_DECODER_CONFIG)))
    write_flux_lora(folder / "layerlora.safetensors", tiny_flux_transformer(0))
    source = write_flux_vae_pickle(folder / "TransparentVAE.pth", decoder_config=TINY_DECODER_CONFIG)
    convert_flux_vae(source, WeightStore(folder, catalog=catalog, allow_download=False, progress=False))
    return catalog


@pytest.fixture(params=[1, 2, 3], ids=["early-forge", "current-forge", "forge-neo"])
def forge(request, monkeypatch, weight_files):
    folder, catalog = weight_files
    memory = ff.Memory()
    # each host's defaults: Neo saves grids as JPEG and has no stealth infotext
    opts = types.SimpleNamespace(samples_format="png", grid_format="jpg" if request.param == 3 else "png",
                                 enable_pnginfo=True, grid_background_color="#ffffff",
                                 data={} if request.param == 3 else {"stealth_pnginfo_option": "Alpha"})
    saved: list = []
    ff.install(monkeypatch, {**ff.forge_modules(request.param, memory), **ff.webui_modules(opts, saved, request.param)})
    callbacks = sys.modules["modules.script_callbacks"]  # as the script file registers them
    callbacks.on_before_image_saved(saving.restore_alpha)
    callbacks.on_image_grid(saving.remember_grid)
    unet_files.use_store(WeightStore(folder, catalog=catalog, allow_download=False, progress=False))
    yield types.SimpleNamespace(generation=request.param, memory=memory, opts=opts, saved=saved,
                                catalog=catalog, folder=folder)
    unet_files.use_store(None)
    ui.START_METHODS.clear()  # the panel's start values of a test that built it
    ui._panels.clear()
    ui._checkpoint.clear()



@pytest.fixture()
def gradio(monkeypatch):
    gr = ff.fake_gradio()
    monkeypatch.setitem(__import__("sys").modules, "gradio", gr)
    ff.Component.created = []
    return gr


