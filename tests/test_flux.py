"""LayerDiffuse-Flux on diffusers: the LoRA (strict, reversible, beside quantised layers), the
16-channel transparent VAE against a step-by-step rendition of the release's code, converting
the pickled VAE, the family detector, and generation on a tiny FluxPipeline."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from lib_layerdiffuse.engine import LayerDiffuse, UnsupportedModelError, locate_model
from lib_layerdiffuse.engine.family import family_of_checkpoint_file
from lib_layerdiffuse.methods import Family, Method
from lib_layerdiffuse.patches import (
    PatchMismatchError,
    apply_frozen_patches,
    attach_lora_branches,
    parse_transformer_lora,
    resolve_patches,
)
from lib_layerdiffuse.patches.flux_names import diffusers_to_bfl
from lib_layerdiffuse.testing.flux import (
    bfl_layout,
    flux_vae_state_dict,
    lora_layout,
    meta_flux_transformer,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_flux_vae,
    to_bfl_state_dict,
    write_flux_lora,
    write_flux_vae_pickle,
)
from lib_layerdiffuse.testing.layer_files import TINY_DECODER_CONFIG, decoder_layout
from lib_layerdiffuse.vae import OFFSET_SCALE, TransparentDecoder, TransparentEncoder, pad_rgb
from lib_layerdiffuse.vae.convert import convert_flux_vae, read_pickled_state_dict, split_flux_vae
from lib_layerdiffuse.weights import CATALOG, State, WeightFormatError, WeightMissingError, WeightStore
from lib_layerdiffuse.weights.integrity import layout_sha256

DECODER = "layer_flux_vae_transparent_decoder.safetensors"
ENCODER = "layer_flux_vae_transparent_encoder.safetensors"


def tiny_catalog():
    """The catalog, with the Flux decoder's layout hash for the tiny test decoder."""
    catalog = dict(CATALOG)
    tiny = layout_sha256(decoder_layout(latent_channels=16, **TINY_DECODER_CONFIG))
    catalog[DECODER] = dataclasses.replace(CATALOG[DECODER], layout_sha256=tiny)
    return catalog


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture
def flux_store(tmp_path, pipe):
    """A weight folder with the release's files, tiny: the LoRA, and the VAE converted from its pickle."""
    write_flux_lora(tmp_path / "w" / "layerlora.safetensors", pipe.transformer)
    write_flux_vae_pickle(tmp_path / "w" / "TransparentVAE.pth", decoder_config=TINY_DECODER_CONFIG)
    store = WeightStore(tmp_path / "w", allow_download=False, progress=False, catalog=tiny_catalog())
    convert_flux_vae(store.folder / "TransparentVAE.pth", store)
    return store


# ---- the LoRA ----------------------------------------------------------------------------

def test_full_size_lora_layout_maps_key_by_key_onto_the_full_size_transformer():
    transformer = meta_flux_transformer()
    layout = lora_layout(transformer, rank=64)
    assert len(layout) == 2 * (19 * 8 + 38 * 5)
    tensors = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    resolved = resolve_patches(transformer, parse_transformer_lora(tensors), Family.FLUX, "layerlora")
    assert len(resolved) == 19 * 8 + 38 * 5
    assert "single_transformer_blocks.37.proj_out.weight" in resolved
    assert resolved["transformer_blocks.0.attn.to_q.weight"][2][1].shape == (64, 3072)


def test_lora_key_grammar_alpha_and_errors():
    down, up = torch.randn(4, 8), torch.randn(16, 4)
    peft = parse_transformer_lora({"transformer.a.b.lora_A.weight": down, "transformer.a.b.lora_B.weight": up})
    old = parse_transformer_lora({"a.b.lora.down.weight": down, "a.b.lora.up.weight": up, "a.b.alpha": torch.tensor(2.0)})
    assert torch.equal(peft["a.b.weight"][1][0], up) and torch.equal(peft["a.b.weight"][1][1], down)
    torch.testing.assert_close(old["a.b.weight"][1][0], up * 0.5)  # alpha / rank
    with pytest.raises(ValueError, match="text_encoder.x.lora_A.weight.*another part"):
        parse_transformer_lora({"transformer.a.lora_A.weight": down, "text_encoder.x.lora_A.weight": down})
    with pytest.raises(ValueError, match="'a.b' has no up"):
        parse_transformer_lora({"a.b.lora_A.weight": down})
    with pytest.raises(ValueError, match="not a LoRA key"):
        parse_transformer_lora({"a.b.weight": down})
    with pytest.raises(ValueError, match="do not chain"):
        parse_transformer_lora({"a.lora_A.weight": down, "a.lora_B.weight": torch.randn(16, 3)})


def test_merged_lora_is_w_plus_up_down_and_restores_bit_for_bit():
    transformer = tiny_flux_transformer()
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=gen) for k, s in lora_layout(transformer, 2).items()}
    patches = parse_transformer_lora(tensors)
    applied = apply_frozen_patches(transformer, patches, Family.FLUX, 0.5)
    q = "transformer_blocks.0.attn.to_q"
    expected = before[f"{q}.weight"] + 0.5 * tensors[f"transformer.{q}.lora_B.weight"] @ tensors[f"transformer.{q}.lora_A.weight"]
    torch.testing.assert_close(transformer.get_submodule(q).weight.data, expected)
    applied.restore()
    assert all(torch.equal(v, before[k]) for k, v in transformer.state_dict().items())


def test_a_lora_that_does_not_fit_changes_nothing():
    transformer = tiny_flux_transformer()
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    layout = lora_layout(transformer, 2)
    tensors = {k: torch.ones(s) for k, s in layout.items()}
    tensors["transformer.nope.lora_A.weight"], tensors["transformer.nope.lora_B.weight"] = torch.ones(2, 3), torch.ones(3, 2)
    with pytest.raises(PatchMismatchError, match="'nope.weight'.*Flux.1 model does not have"):
        apply_frozen_patches(transformer, parse_transformer_lora(tensors), Family.FLUX)
    assert all(torch.equal(v, before[k]) for k, v in transformer.state_dict().items())


def test_lora_beside_quantised_layers_matches_the_merged_lora():
    """Layers stored in fp8 (diffusers' layerwise casting) cannot take a merged delta; the LoRA
    runs beside them and gives the merged result, and leaves nothing behind."""
    transformer = tiny_flux_transformer()
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=gen) * 0.1 for k, s in lora_layout(transformer, 2).items()}
    patches = parse_transformer_lora(tensors)
    args = _transformer_inputs()
    with torch.no_grad():
        plain = transformer(**args).sample
        applied = apply_frozen_patches(transformer, patches, Family.FLUX)
        merged = transformer(**args).sample
        applied.restore()
        branches = attach_lora_branches(transformer, patches)
        beside = transformer(**args).sample
        branches.restore()
        again = transformer(**args).sample
    assert (merged - plain).abs().max() > 1e-2
    torch.testing.assert_close(beside, merged, atol=1e-5, rtol=1e-4)
    assert torch.equal(again, plain)


def _transformer_inputs(tokens: int = 16):
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, tokens, 64, generator=gen),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=gen),
                pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
                guidance=torch.tensor([3.5]), img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(8, 3))


def test_engine_runs_the_lora_beside_fp8_layers(flux_store, pipe):
    pipe = tiny_flux_pipeline()
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    fp8 = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    ld = LayerDiffuse(pipe, store=flux_store, progress=False, decoder_passes=1)
    with_lora = np.asarray(ld.generate("a cat", width=64, height=64, steps=2, seed=3).rgba[0])
    without = np.asarray(ld.generate("a cat", width=64, height=64, steps=2, seed=3, weight=0.0).rgba[0])
    assert np.abs(with_lora.astype(int) - without).max() > 0
    assert all(torch.equal(v, fp8[k]) for k, v in pipe.transformer.state_dict().items())


# ---- the transparent VAE against the release's code ---------------------------------------

def _published_decode(vae, decoder, latent):
    """LayerDiffuse-Flux's `TransparentVAE.decode(latent, aug=True)`, step by step: the ordinary
    decode mapped to [0,1] without clipping, then per image the eight flips and turns, each
    output clipped, turned back, and the median. Channels come out as RGBA."""
    pixel = vae.decode(latent).sample * 0.5 + 0.5
    outputs = []
    for i in range(latent.shape[0]):
        results = []
        for flip, k in [(False, 0), (False, 1), (False, 2), (False, 3), (True, 0), (True, 1), (True, 2), (True, 3)]:
            p, z = pixel[i:i + 1].clone(), latent[i:i + 1].clone()
            if flip:
                p, z = torch.flip(p, dims=(3,)), torch.flip(z, dims=(3,))
            p, z = torch.rot90(p, k=k, dims=(2, 3)), torch.rot90(z, k=k, dims=(2, 3))
            y = torch.rot90(decoder(p, z).clip(0, 1), k=-k, dims=(2, 3))
            results.append(torch.flip(y, dims=(3,)) if flip else y)
        outputs.append(torch.median(torch.stack(results), dim=0).values)
    return torch.cat(outputs)


def _published_encode(vae, encoder, rgba: np.ndarray):
    """LayerDiffuse-Flux's `TransparentVAE.encode(..., use_offset=True)` as its i2i demo feeds it."""
    x = torch.from_numpy(rgba).float().permute(2, 0, 1)[None] / 255.0
    a = x[:, 3:]
    padded = torch.from_numpy(pad_rgb(rgba)).permute(2, 0, 1)[None]
    dist = vae.encode((x[:, :3] * 2.0 - 1.0) * a).latent_dist
    offset = encoder(torch.cat([padded, a], dim=1)) * OFFSET_SCALE
    latent = dist.mean + dist.std * offset
    return vae.config.scaling_factor * (latent - vae.config.shift_factor)


def test_decoder_matches_the_published_decode_and_writes_rgb_then_alpha():
    state = flux_vae_state_dict(decoder_config=TINY_DECODER_CONFIG, seed=4)
    decoder, _ = split_flux_vae(state, "test")
    ours = TransparentDecoder.from_state_dict(decoder, device="cpu", dtype=torch.float32, alpha_first=False)
    vae = tiny_flux_vae()
    raw = torch.randn(2, 16, 8, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pixel = vae.decode(raw).sample * 0.5 + 0.5
        expected = _published_decode(vae, ours.model, raw)
    assert pixel.min() < 0 or pixel.max() > 1  # unclipped, as the release feeds it
    out = ours.decode(raw, pixel)
    torch.testing.assert_close(torch.from_numpy(out.rgb), expected[:, :3].permute(0, 2, 3, 1), atol=5e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(out.alpha), expected[:, 3], atol=5e-5, rtol=0)
    assert out.rgba.shape == (2, 64, 128, 4)


def test_encoder_matches_the_published_encode_in_model_space():
    _, encoder = split_flux_vae(flux_vae_state_dict(decoder_config=TINY_DECODER_CONFIG, seed=5), "test")
    ours = TransparentEncoder.from_state_dict(encoder, device="cpu", dtype=torch.float32, alpha_first=False)
    vae = tiny_flux_vae()
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[:16, :, 3] = 0
    with torch.no_grad():
        expected = _published_encode(vae, ours.model, rgba)
    torch.testing.assert_close(ours.encode(vae, [rgba]), expected, atol=1e-4, rtol=1e-4)  # float rounding of the grey flattening


# ---- converting the pickle ----------------------------------------------------------------

def test_convert_writes_both_files_drops_the_vae_copy_and_records_their_hashes(tmp_path):
    source = write_flux_vae_pickle(tmp_path / "TransparentVAE.pth", decoder_config=TINY_DECODER_CONFIG)
    store = WeightStore(tmp_path / "w", allow_download=False, progress=False, catalog=tiny_catalog())
    written = convert_flux_vae(source, store)
    assert [p.name for p in written] == [DECODER, ENCODER]
    assert store.status(DECODER, verify=True).state is State.RECORDED
    assert store.status(ENCODER, verify=True).state is State.RECORDED
    recorded = json.loads((store.folder / ".layerdiffuse-recorded.json").read_text())
    assert set(recorded) == {DECODER, ENCODER}
    from safetensors import safe_open
    with safe_open(str(written[0]), "pt") as f:
        assert not any(k.startswith("sd_vae") for k in f.keys())
        assert f.metadata()["converted_from"] == "TransparentVAE.pth"
    written[1].write_bytes(written[1].read_bytes()[:-4] + b"\0\0\0\0")  # changed after it was recorded
    st = store.status(ENCODER, verify=True)
    assert st.state is State.NOT_OFFICIAL and "recorded when it was converted" in st.detail


def test_convert_is_strict(tmp_path):
    state = flux_vae_state_dict(decoder_config=TINY_DECODER_CONFIG, with_sd_vae=False)
    with pytest.raises(WeightFormatError, match="neither the decoder nor the encoder.*first: extra.thing"):
        split_flux_vae({**state, "extra.thing": torch.zeros(1)}, "f")
    broken = dict(state)
    broken["encoder.blocks.0.weight"] = torch.zeros(32, 3, 3, 3)
    with pytest.raises(WeightFormatError, match=r"encoder.*blocks.0.weight has shape \(32, 3, 3, 3\)"):
        split_flux_vae(broken, "f")
    sd_like = {k: v for k, v in state.items() if k.startswith("decoder.")}
    with pytest.raises(WeightFormatError, match="no encoder"):
        split_flux_vae(sd_like, "f")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_convert_never_runs_code_from_the_pickle(tmp_path, capsys):
    path = tmp_path / "TransparentVAE.pth"
    with open(path, "wb") as fh:
        pickle.dump({"decoder.x": _Payload()}, fh)
    with pytest.raises(WeightFormatError, match="cannot be read as a plain PyTorch state dict"):
        read_pickled_state_dict(path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_vae_files_say_how_to_convert(tmp_path):
    store = WeightStore(tmp_path / "w", allow_download=False, progress=False)
    with pytest.raises(WeightMissingError, match=r"TransparentVAE.pth.*python -m lib_layerdiffuse convert"):
        store.ensure(DECODER)


def test_the_cli_converts_and_names_the_licence(tmp_path, capsys):
    from lib_layerdiffuse.cli import main

    write_flux_vae_pickle(tmp_path / "w" / "TransparentVAE.pth", decoder_config=TINY_DECODER_CONFIG)
    assert main(["convert", "--models-dir", str(tmp_path / "w"), "-q"]) == 0
    out = capsys.readouterr().out
    assert DECODER in out and ENCODER in out and "non-commercial" in out
    assert main(["status", "--models-dir", str(tmp_path / "w")]) == 1  # the tiny decoder is not the released layout
    out = capsys.readouterr().out
    assert "FLUX_FG_ONLY" in out and "Licence: Flux LayerDiffuse runs on FLUX.1-dev" in out


# ---- family -------------------------------------------------------------------------------

def test_family_detector_knows_flux_folders_and_single_files(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "flux"
    (folder / "transformer").mkdir(parents=True)
    config = {"_class_name": "FluxTransformer2DModel", "in_channels": 64, "num_single_layers": 38}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    assert locate_model(str(folder)).family is Family.FLUX
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "in_channels": 384}))
    with pytest.raises(UnsupportedModelError, match="384 input channels.*Fill"):
        locate_model(str(folder))
    single = tmp_path / "flux1-dev.safetensors"
    save_file({"model.diffusion_model.img_in.weight": torch.zeros(4, 64),
               "model.diffusion_model.double_blocks.0.img_attn.qkv.weight": torch.zeros(12, 4)}, str(single))
    assert family_of_checkpoint_file(single) is Family.FLUX
    sd3 = tmp_path / "sd3"
    (sd3 / "transformer").mkdir(parents=True)
    (sd3 / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(UnsupportedModelError, match="SD3Transformer2DModel that is not FLUX.1's"):
        locate_model(str(sd3))


# ---- generation ---------------------------------------------------------------------------

def test_text_to_rgba_on_a_tiny_flux_pipeline(flux_store, pipe):
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    ld = LayerDiffuse(pipe, store=flux_store, progress=False, decoder_passes=2)
    seen = []
    result = ld.generate("a glass bottle", width=64, height=48, steps=3, seed=7, batch=2,
                         on_progress=lambda *a: seen.append(a))
    assert result.method is Method.FLUX_FG_ONLY and len(result.rgba) == 2
    assert all(im.mode == "RGBA" and im.size == (64, 48) for im in result.rgba)
    assert ("Sampling", 3, 3) in seen and ("Decoding", 2, 2) in seen
    assert "Distilled CFG Scale: 3.5" in result.infotext and "(Flux) Only Generate Transparent Image" in result.infotext
    again = ld.generate("a glass bottle", width=64, height=48, steps=3, seed=7, batch=2)
    assert np.array_equal(np.asarray(again.rgba[1]), np.asarray(result.rgba[1]))
    assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())


def test_transparent_img2img_and_stop_at(flux_store, pipe):
    ld = LayerDiffuse(pipe, store=flux_store, progress=False, decoder_passes=1)
    init = np.zeros((64, 64, 4), np.uint8)
    init[16:48, 16:48] = (200, 40, 40, 255)
    out = ld.generate("a red square", init_image=init, strength=0.5, steps=4, seed=1)
    assert out.rgba[0].size == (64, 64) and "Denoising strength: 0.5" in out.infotext
    full = np.asarray(ld.generate("a cat", width=64, height=64, steps=4, seed=2).rgba[0]).astype(int)
    early = np.asarray(ld.generate("a cat", width=64, height=64, steps=4, seed=2, stop_at=0.25).rgba[0]).astype(int)
    assert np.abs(full - early).max() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=72), "multiples of 16.*72x64.*64x64"),
    (dict(negative_prompt="blurry"), "no negative prompt"),
    (dict(sampler="Euler a"), "cannot be chosen"),
    (dict(fg=np.zeros((8, 8, 4), np.uint8)), "takes no layer images"),
    (dict(method="FG_ONLY_ATTN"), "needs an SDXL model, but the model is Flux.1"),
])
def test_bad_requests_fail_before_sampling(flux_store, pipe, kwargs, message):
    ld = LayerDiffuse(pipe, store=flux_store, progress=False)
    call = dict(width=64, height=64, steps=1)
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ld.generate("x", **call)


def test_cli_generates_from_a_flux_model_folder(flux_store, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from lib_layerdiffuse.cli import main
    from lib_layerdiffuse.weights import catalog as catalog_module

    monkeypatch.setitem(catalog_module.CATALOG, DECODER, tiny_catalog()[DECODER])
    folder = tmp_path / "flux-model"
    tiny_flux_pipeline().save_pretrained(folder)
    code = main(["generate", "--model", str(folder), "--models-dir", str(flux_store.folder), "--prompt", "a cat",
                 "--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--passes", "1",
                 "--out", str(tmp_path / "out"), "-q"])
    assert code == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "layerdiffuse-5-00-fg.png") as img:
        assert img.mode == "RGBA" and "(Flux) Only Generate Transparent Image" in img.text["parameters"]


# ---- Forge's names (Black Forest Labs' layout) ---------------------------------------------

def test_bfl_names_agree_with_diffusers_own_converter():
    """Every parameter of the real-size transformer, placed in BFL's layout by our map, comes back
    to the same diffusers name and values through diffusers' single-file converter (an
    independent implementation). Values are one column wide: the converter only splits rows."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn((v.shape[0],) + (1,) * (v.ndim - 1), generator=gen)
             for k, v in meta_flux_transformer().state_dict().items()}
    back = convert_flux_transformer_checkpoint_to_diffusers(to_bfl_state_dict(state, 3072, 12288))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_full_size_lora_maps_onto_forges_full_size_flux_layout():
    transformer = meta_flux_transformer()
    shapes = {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    forge = bfl_layout(shapes, 3072, 12288)
    assert forge["double_blocks.0.img_attn.qkv.weight"] == (9216, 3072)
    assert forge["single_blocks.37.linear1.weight"] == (21504, 3072)
    lora = parse_transformer_lora({k: torch.empty(s, device="meta") for k, s in lora_layout(transformer, 64).items()})
    covered: dict[str, list] = {}
    for key, (_, (up, down)) in lora.items():
        target = diffusers_to_bfl(key, 3072, 12288)
        rows, cols = forge[target.name]
        first, count = target.rows or (0, rows)
        assert first + count <= rows and (count, cols) == (up.shape[0], down.shape[1]), key
        covered.setdefault(target.name, []).append((first, count))
    for name, spans in covered.items():  # the fused weights' row ranges do not overlap
        spans.sort()
        assert all(a[0] + a[1] <= b[0] for a, b in zip(spans, spans[1:])), name
