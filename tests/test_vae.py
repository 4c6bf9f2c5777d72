"""The transparent decoder and offset encoder: layouts, exact TTA, padding, pixels, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from lib_layerdiffuse.methods import Family
from lib_layerdiffuse.testing.layer_files import (
    TINY_DECODER_CONFIG,
    decoder_layout,
    offset_encoder_layout,
    random_state_dict,
    write_unet_files,
)
from lib_layerdiffuse.testing.models import tiny_vae
from lib_layerdiffuse.testing.reference_decode import diffusers_forward, reference_tta
from lib_layerdiffuse.testing.unet_specs import TINY
from lib_layerdiffuse.vae import (
    OFFSET_SCALE,
    LatentTransparencyOffsetEncoder,
    TransparentDecoder,
    TransparentEncoder,
    UNet1024,
    checkerboard,
    decoder_for,
    encoder_for,
    estimate_augmented,
    pad_rgb,
    pad_to_multiple,
)
from lib_layerdiffuse.vae.pixels import _area_matrix, _linear_matrix
from lib_layerdiffuse.weights import WeightFormatError, WeightStore


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    model = UNet1024(**TINY_DECODER_CONFIG).eval()
    nn.init.normal_(model.latent_conv_in.weight, std=0.5)  # zero in a fresh model: wake it up
    return model


def inputs(b=2, h=64, w=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.randn(b, 4, h // 8, w // 8, generator=g)


# ---- layouts -----------------------------------------------------------------------------

def test_real_size_layouts_and_parameter_counts():
    layout = decoder_layout()
    assert sum(int(np.prod(s)) for s in layout.values()) == 104_104_804
    assert layout["latent_conv_in.weight"] == (64, 4, 1, 1)
    assert layout["conv_in.weight"] == (32, 3, 3, 3) and layout["conv_out.weight"] == (4, 32, 3, 3)
    assert layout["conv_norm_out.weight"] == (32,)
    for i in range(7):
        assert f"down_blocks.{i}.resnets.1.conv2.weight" in layout
        assert f"up_blocks.{i}.resnets.2.conv2.weight" in layout
        assert (f"down_blocks.{i}.downsamplers.0.conv.weight" in layout) == (i < 6)
        assert (f"up_blocks.{i}.upsamplers.0.conv.weight" in layout) == (i < 6)
        assert (f"down_blocks.{i}.attentions.1.to_q.weight" in layout) == (i >= 4)
        assert (f"up_blocks.{i}.attentions.2.to_out.0.weight" in layout) == (i <= 2)
    assert "mid_block.attentions.0.to_k.weight" in layout
    with torch.device("meta"):
        enc = LatentTransparencyOffsetEncoder()
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == offset_encoder_layout()
    assert sum(p.numel() for p in enc.parameters()) == 1_181_764


def test_fresh_networks_start_with_zeroed_injection_layers():
    assert UNet1024(**TINY_DECODER_CONFIG).latent_conv_in.weight.abs().sum() == 0
    assert LatentTransparencyOffsetEncoder().blocks[-1].weight.abs().sum() == 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("latent_channels", [4, 16])
def test_the_network_computes_what_the_diffusers_blocks_compute(layout, latent_channels):
    """UNet1024.forward runs the blocks' layers through its own code (one q/k/v product,
    in-place residuals); several heads per attention, as in the real network."""
    torch.manual_seed(3)
    model = UNet1024(block_out_channels=(8, 8, 8, 8, 16, 32, 32), latent_channels=latent_channels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.to(memory_format=layout)
    assert {a.heads for block in model.down_blocks[4:] for a in block.attentions} == {2, 4}
    g = torch.Generator().manual_seed(4)
    pixel = torch.rand(2, 3, 64, 128, generator=g).contiguous(memory_format=layout)
    latent = torch.randn(2, latent_channels, 8, 16, generator=g)
    with torch.no_grad():
        got, want = model(pixel, latent), diffusers_forward(model, pixel, latent)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert want.abs().max() > 0.1


# ---- test-time augmentation ---------------------------------------------------------------

def test_eight_passes_reproduce_the_reference():
    """To 1e-5: on the CPU ours runs channels-last, the reference in PyTorch's default layout
    (the same sums in another order)."""
    model = tiny_decoder()
    pixel, latent = inputs()
    with torch.no_grad():  # the reference decodes one image at a time
        want = torch.cat([reference_tta(model, pixel[i:i + 1], latent[i:i + 1]) for i in range(2)])
    got = estimate_augmented(model, pixel, latent, passes=8, batch_size=1)
    assert (got - want).abs().max() <= 1e-5
    batched = estimate_augmented(model, pixel, latent, passes=8, batch_size=8)
    assert torch.allclose(batched, want, atol=1e-5)
    assert got.dtype == torch.float32 and got.min() >= 0 and got.max() <= 1


def test_the_cpu_runs_the_decoder_channels_last(monkeypatch):
    from lib_layerdiffuse.vae import augment

    model = tiny_decoder()
    pixel, latent = inputs()
    got = estimate_augmented(model, pixel, latent, passes=2)
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv_in.weight.is_contiguous()
    monkeypatch.setattr(augment, "preferred_memory_format", lambda _device: torch.contiguous_format)
    model.to(memory_format=torch.contiguous_format)
    nchw = estimate_augmented(model, pixel, latent, passes=2)
    assert model.conv_in.weight.is_contiguous()
    assert (got - nchw).abs().max() <= 1e-5 and not torch.equal(got, torch.zeros_like(got))


class Pointwise(nn.Module):
    """Flip/rotation-equivariant stand-in: per-pixel maps only."""

    size_multiple = 64

    def __init__(self):
        super().__init__()
        self.px = nn.Conv2d(3, 4, 1)
        self.lt = nn.Conv2d(4, 4, 1)

    def forward(self, pixel, latent):
        up = nn.functional.interpolate(self.lt(latent), scale_factor=8, mode="nearest")
        return torch.sigmoid(self.px(pixel) + up)


@pytest.mark.parametrize("passes", [2, 4, 8])
def test_tta_of_an_equivariant_model_equals_one_pass(passes):
    model = Pointwise()
    pixel, latent = inputs(h=64, w=192)
    one = estimate_augmented(model, pixel, latent, passes=1)
    assert torch.allclose(estimate_augmented(model, pixel, latent, passes=passes), one, atol=1e-6)


def test_padding_is_a_no_op_on_aligned_sizes_and_invisible_to_pointwise_models():
    pixel, latent = inputs(h=128, w=64)
    p2, l2, size = pad_to_multiple(pixel, latent)
    assert p2 is pixel and l2 is latent and size == (128, 64)
    model = Pointwise()
    pixel, latent = inputs(h=72, w=136)
    out = estimate_augmented(model, pixel, latent, passes=1)
    with torch.no_grad():
        assert torch.allclose(out, model(pixel, latent).clamp(0, 1), atol=1e-6)
    p3, l3, _ = pad_to_multiple(pixel, latent)
    assert p3.shape[-2:] == (128, 192) and l3.shape[-2:] == (16, 24)
    assert torch.equal(p3[..., :72, :136], pixel) and torch.equal(l3[..., :9, :17], latent)


@pytest.mark.parametrize("h, w", [(64, 64), (72, 136), (520, 512), (200, 8)])
def test_real_decoder_any_size(h, w):
    pixel, latent = inputs(b=1, h=h, w=w)
    out = estimate_augmented(tiny_decoder(), pixel, latent, passes=2)
    assert out.shape == (1, 4, h, w)


@pytest.mark.slow
def test_real_decoder_2048():
    pixel, latent = inputs(b=1, h=2048, w=2048)
    assert estimate_augmented(tiny_decoder(), pixel, latent, passes=1).shape == (1, 4, 2048, 2048)


@pytest.mark.parametrize("h, w, lh, lw, words", [
    (64, 64, 9, 8, ["64x64", "8x9"]), (60, 64, 8, 8, ["64x60"])])
def test_latent_that_does_not_match_the_pixels(h, w, lh, lw, words):
    with pytest.raises(ValueError) as err:
        estimate_augmented(tiny_decoder(), torch.rand(1, 3, h, w), torch.rand(1, 4, lh, lw))
    for word in words:
        assert word in str(err.value)


def test_bad_passes():
    with pytest.raises(ValueError, match="passes"):
        estimate_augmented(tiny_decoder(), *inputs(), passes=3)


# ---- front ends ---------------------------------------------------------------------------

class Constant(nn.Module):
    size_multiple = 64

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values).view(1, 4, 1, 1))

    def forward(self, pixel, latent):
        return self.values.expand(pixel.shape[0], 4, *pixel.shape[-2:])


def test_alpha_is_channel_0_of_the_net_and_last_of_rgba():
    dec = TransparentDecoder(Constant([0.25, 1.0, 0.5, 0.0]))
    out = dec.decode(*inputs(b=2, h=64, w=128)[::-1])
    assert out.rgba.shape == (2, 64, 128, 4) and out.rgba.dtype == np.uint8
    assert (out.rgba[..., 3] == 64).all() and (out.rgba[..., :3] == [255, 128, 0]).all()
    assert np.allclose(out.alpha, 0.25)
    prem = out.premultiplied()
    assert (prem[..., :3] == [64, 32, 0]).all() and (prem[..., 3] == 64).all()
    cb = checkerboard(64, 128)
    expect = np.round((0.25 * np.array([1.0, 0.5, 0.0]) + 0.75 * cb[..., None]) * 255)
    assert np.array_equal(out.preview[0], expect.astype(np.uint8))


def test_checkerboard_cells():
    cb = checkerboard(130, 200)
    assert cb[0, 0] == np.float32(0.45) and cb[0, 64] == np.float32(0.55) and cb[64, 64] == np.float32(0.45)
    assert cb[63, 63] == cb[0, 0] and cb[129, 199] == cb[128, 192]


def test_strict_loading_reports_what_is_wrong():
    good = random_state_dict(decoder_layout(**TINY_DECODER_CONFIG), std=0.1, dtype=torch.float32)
    TransparentDecoder.from_state_dict(good, device="cpu")
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "conv_out.bias"}, "missing keys"),
        "extra": ({**good, "spare.weight": torch.zeros(1)}, "unexpected keys"),
        "dtype": ({**good, "conv_out.bias": torch.zeros(4, dtype=torch.int64)}, "conv_out.bias has dtype"),
        "nan": ({**good, "conv_in.weight": torch.full_like(good["conv_in.weight"], float("nan"))}, "NaN"),
        "shape": ({**good, "conv_out.bias": torch.zeros(5)}, "conv_out.bias has shape"),
    }
    for sd, words in cases.values():
        with pytest.raises(WeightFormatError, match=words):
            TransparentDecoder.from_state_dict(sd, "dec.safetensors", device="cpu")
    with pytest.raises(WeightFormatError, match="does not fit"):
        TransparentEncoder.from_state_dict(good, device="cpu")


def test_decoder_and_encoder_per_family_from_the_store(tmp_path):
    catalog = {**write_unet_files(tmp_path, TINY["sd15"], names=[]),
               **write_unet_files(tmp_path, TINY["sdxl"], names=[], seed=5)}
    store = WeightStore(tmp_path, allow_download=False, progress=False, catalog=catalog)
    d15, dxl = decoder_for("sd15", store, "cpu"), decoder_for(Family.SDXL, store, "cpu")
    assert d15 is not dxl and decoder_for("sd15", store, "cpu") is d15
    w15 = d15.model.conv_in.weight
    assert not torch.equal(w15, dxl.model.conv_in.weight)
    assert encoder_for("sd15", store, "cpu") is not encoder_for("sdxl", store, "cpu")
    assert next(d15.model.parameters()).dtype == torch.float32


# ---- pixels and the encoder -----------------------------------------------------------------

def half_red(h=48, w=64):
    img = np.zeros((h, w, 4), np.uint8)
    img[:, : w // 2] = [255, 0, 0, 255]
    img[:, w // 2:] = [0, 0, 255, 0]  # transparent, colour meaningless
    return img


def test_pad_rgb_keeps_opaque_pixels_and_extends_colours():
    img = half_red()
    img[5, 5] = [10, 200, 30, 255]
    out = pad_rgb(img)
    assert out.dtype == np.float32 and out.shape == (48, 64, 3)
    opaque = img[..., 3] == 255
    assert np.allclose(out[opaque], img[opaque][:, :3] / 255.0, atol=1e-6)
    assert out[:, 32:, 0].mean() > 0.9 and out[:, 32:, 2].max() < 0.05  # red spreads, blue ignored


@pytest.mark.parametrize("alpha", [0, 1])
def test_pad_rgb_is_finite_for_empty_or_nearly_empty_images(alpha):
    img = np.zeros((33, 17, 4), np.uint8)
    img[..., 3] = alpha
    img[..., 1] = 255
    out = pad_rgb(img)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 + 1e-6


def test_pad_rgb_tiny_and_thin_images():
    assert pad_rgb(np.full((1, 1, 4), 255, np.uint8)).shape == (1, 1, 3)
    assert pad_rgb(half_red(1, 40)).shape == (1, 40, 3)


def test_resampling_matrices():
    area = _area_matrix(10, 8)
    assert np.allclose(area.sum(1), 1) and np.allclose(area.sum(0), 0.8)
    assert np.allclose(_area_matrix(8, 4) @ np.arange(8.0), [0.5, 2.5, 4.5, 6.5])
    assert np.allclose(_linear_matrix(5, 5), np.eye(5))
    assert np.allclose(_linear_matrix(2, 4) @ np.array([0.0, 1.0]), [0, 0.25, 0.75, 1])


def test_encoder_adds_300_times_the_offset_to_the_vae_mean():
    torch.manual_seed(0)
    enc = TransparentEncoder.from_state_dict(random_state_dict(offset_encoder_layout(), std=0.05,
                                                               dtype=torch.float32), device="cpu")
    vae = tiny_vae("sdxl")
    img = half_red(64, 64)
    z = enc.encode(vae, [img])
    with torch.no_grad():
        grey = torch.from_numpy(0.5 + (img[..., :3] / 255.0 - 0.5) * (img[..., 3:] / 255.0)).float()
        post = vae.encode(grey.permute(2, 0, 1)[None] * 2 - 1).latent_dist
    off = enc.offset([img])
    assert off.shape == (1, 4, 8, 8) and off.abs().max() > 0
    want = (post.mean + post.std * OFFSET_SCALE * off) * vae.config.scaling_factor
    assert torch.allclose(z, want, atol=1e-5)
    assert OFFSET_SCALE == 300.0


def test_encoder_treats_rgb_as_opaque_and_rejects_odd_sizes():
    enc = TransparentEncoder.from_state_dict(random_state_dict(offset_encoder_layout(), dtype=torch.float32),
                                             device="cpu")
    vae = tiny_vae("sd15")
    rgb = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((32, 40, 1), 255, np.uint8)], -1)
    assert torch.equal(enc.encode(vae, [rgb]), enc.encode(vae, [rgba]))
    with pytest.raises(ValueError, match="multiple of 8"):
        enc.offset([rgba[:30]])


class RunsOutOfMemoryAboveOne(Pointwise):
    """Raises the CUDA-style OOM error for any batch of more than one sample."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, pixel, latent):
        self.batches.append(pixel.shape[0])
        if pixel.shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(pixel, latent)


def test_out_of_memory_halves_the_batch_and_still_gives_the_same_result():
    model = RunsOutOfMemoryAboveOne()
    pixel, latent = inputs(b=1, h=64, w=64)
    got = estimate_augmented(model, pixel, latent, passes=8, batch_size=4)
    assert model.batches[:3] == [4, 2, 1] and set(model.batches[3:]) == {1}
    model.batches.clear()
    assert torch.equal(estimate_augmented(model, pixel, latent, passes=8, batch_size=1), got)


def test_other_runtime_errors_are_not_swallowed():
    class Broken(Pointwise):
        def forward(self, pixel, latent):
            raise RuntimeError("shape mismatch somewhere")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        estimate_augmented(Broken(), *inputs(b=1, h=64, w=64), passes=8, batch_size=4)


REAL_RGBA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "rgba"


@pytest.mark.skipif(not REAL_RGBA.is_dir(), reason="shared/data/rgba is not beside this checkout")
def test_pad_rgb_on_real_layerdiffuse_outputs():
    from PIL import Image

    for path in sorted(REAL_RGBA.glob("*.png"))[:3]:
        img = np.array(Image.open(path).convert("RGBA"))
        out = pad_rgb(img)
        assert out.shape == img.shape[:2] + (3,) and np.isfinite(out).all()
        opaque = img[..., 3] == 255
        assert np.allclose(out[opaque], img[opaque][:, :3] / 255.0, atol=1e-5)
