import base64
import io

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffuse.methods import Method
from lib_layerdiffuse.params import LayerDiffuseParams, ResizeMode


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def rgba_image(w=6, h=4):
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = np.linspace(0, 255, w, dtype=np.uint8)
    return arr


# The reference extension's positional payload: 12 values, text and images as JSON null.
REFERENCE_PAYLOAD = [True, "(SDXL) From Foreground to Blending", 1, 1, None, None, None,
                     "Crop and Resize", False, None, None, None]


def test_defaults_match_the_reference_ui():
    p = LayerDiffuseParams()
    assert p.to_script_args() == (False, Method.FG_ONLY_ATTN, 1.0, 1.0, None, None, None,
                                  ResizeMode.CROP_AND_RESIZE, False, "", "", "")


def test_reference_positional_payload_with_nulls():
    p = LayerDiffuseParams.from_script_args(*REFERENCE_PAYLOAD)
    assert p.enabled is True and p.method is Method.FG_TO_BLEND
    assert p.weight == 1.0 and isinstance(p.weight, float)
    assert p.fg_image is None and p.fg_prompt == "" and p.blend_prompt == ""


def test_short_positional_list_takes_defaults():
    p = LayerDiffuseParams.from_script_args(True, "(SD1.5) Generate Everything Together (need batch size 3)")
    assert p.method is Method.JOINT_SD15 and p.stop_at == 1.0 and p.fg_prompt == ""


def test_named_values_in_a_dict_followed_by_host_defaults():
    host_defaults = REFERENCE_PAYLOAD[1:]  # Forge fills the remaining slots with UI defaults
    p = LayerDiffuseParams.from_script_args(
        {"method": "FG_ONLY_CONV", "weight": 0.8, "Stop At": "0.5", "ending_step": 0.5}, *host_defaults)
    assert p.enabled is True  # named values mean "run it" unless enabled is given
    assert p.method is Method.FG_ONLY_CONV and p.weight == 0.8 and p.stop_at == 0.5
    off = LayerDiffuseParams.from_script_args({"enabled": False, "method": "FG_ONLY_CONV"})
    assert off.enabled is False


def test_named_aliases_and_infotext_keys():
    p = LayerDiffuseParams.from_script_args({
        "layerdiffusion_method": "From Background to Blending",  # pre-2024 name
        "fg_additional_prompt": "a cat", "Resize Mode": 2, "output-origin": "true"})
    assert p.method is Method.BG_TO_BLEND and p.fg_prompt == "a cat"
    assert p.resize_mode is ResizeMode.RESIZE_AND_FILL and p.output_origin is True


def test_images_from_every_accepted_form_become_rgba_uint8():
    ref = rgba_image()
    pil = Image.fromarray(ref, "RGBA")
    forms = [ref, pil, png_b64(pil), "data:image/png;base64," + png_b64(pil),
             {"background": ref, "layers": [], "composite": None}, ref.astype(np.float32) / 255.0]
    for form in forms:
        p = LayerDiffuseParams.from_script_args(True, "FG_TO_BLEND", 1, 1, form)
        assert p.fg_image.dtype == np.uint8 and p.fg_image.shape == (4, 6, 4)
        np.testing.assert_array_equal(p.fg_image, ref)


@pytest.mark.parametrize("img, alpha", [
    (Image.new("RGB", (5, 3), (10, 20, 30)), 255),
    (Image.new("L", (5, 3), 77), 255),
    (Image.new("LA", (5, 3), (77, 128)), 128),
    (np.full((3, 5), 9, np.uint8), 255),
    (np.full((3, 5, 3), 9, np.uint8), 255),
])
def test_images_without_alpha_are_opaque_and_grey_becomes_rgb(img, alpha):
    p = LayerDiffuseParams.from_script_args(True, "FG_TO_BLEND", 1, 1, None, img)
    assert p.bg_image.shape == (3, 5, 4)
    assert (p.bg_image[..., 3] == alpha).all()


def test_palette_image_keeps_its_transparency():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    p = LayerDiffuseParams.from_script_args({"blend_image": png_b64(pal)})
    assert p.blend_image[0, 0].tolist() == [0, 255, 0, 255]
    assert p.blend_image[1, 1, 3] == 0


@pytest.mark.parametrize("args, exc, words", [
    ((True, "FG_ONLY_ATTN", 2.5), ValueError, ["weight", "2.5"]),
    ((True, "FG_ONLY_ATTN", "heavy"), ValueError, ["weight", "heavy"]),
    ((True, "FG_ONLY_ATTN", True), TypeError, ["weight"]),
    ((True, "FG_ONLY_ATTN", float("nan")), ValueError, ["weight"]),
    ((True, "FG_ONLY_ATTN", 1, -0.1), ValueError, ["stop_at"]),
    ((True, "FG_ONLY_ATTN", 1, [1]), TypeError, ["stop_at"]),
    (("maybe",), TypeError, ["enabled"]),
    ((2,), TypeError, ["enabled"]),
    ((True, "Make it transparent"), ValueError, ["method", "Make it transparent"]),
    ((True, 4), TypeError, ["method"]),
    ((True, "FG_ONLY_ATTN", 1, 1, "!!not base64!!"), ValueError, ["fg_image", "base64"]),
    ((True, "FG_ONLY_ATTN", 1, 1, base64.b64encode(b"hello").decode()), ValueError, ["fg_image", "image"]),
    ((True, "FG_ONLY_ATTN", 1, 1, None, np.zeros((2, 2, 5), np.uint8)), ValueError, ["bg_image", "shape"]),
    ((True, "FG_ONLY_ATTN", 1, 1, None, None, np.full((2, 2, 3), 1.5)), ValueError, ["blend_image", "[0, 1]"]),
    ((True, "FG_ONLY_ATTN", 1, 1, None, None, 42), TypeError, ["blend_image"]),
    ((True, "FG_ONLY_ATTN", 1, 1, None, None, None, 7), ValueError, ["resize_mode"]),
    ((True, "FG_ONLY_ATTN", 1, 1, None, None, None, "Stretch"), ValueError, ["resize_mode", "Just Resize"]),
    ((True, "FG_ONLY_ATTN", 1, 1, None, None, None, "Crop and Resize", False, 5), TypeError, ["fg_prompt"]),
    (tuple([False] * 13), ValueError, ["at most 12"]),
    (({"weigth": 1},), ValueError, ["weigth", "weight"]),
])
def test_bad_values_name_the_field(args, exc, words):
    with pytest.raises(exc) as err:
        LayerDiffuseParams.from_script_args(*args)
    for word in words:
        assert word in str(err.value)


def test_huge_image_is_refused_before_decoding():
    big = Image.new("L", (9000, 8000))
    buf = io.BytesIO()
    big.save(buf, format="PNG", optimize=False)
    with pytest.raises(ValueError, match="fg_image.*9000x8000"):
        LayerDiffuseParams.from_script_args({"fg_image": base64.b64encode(buf.getvalue()).decode()})


def test_infotext_round_trip_as_forge_parses_it():
    p = LayerDiffuseParams.from_script_args(
        True, "BG_BLEND_TO_FG", 0.75, 0.5, None, rgba_image(), rgba_image(), "Resize and Fill",
        False, "a glass bottle, studio", "", "")
    info = p.to_infotext()
    assert all(isinstance(v, (str, float, bool)) for v in info.values())
    assert info["layerdiffusion_method"] == "(SDXL) From Background and Blending to Foreground"
    assert info["layerdiffusion_bg_image"] is True and "layerdiffusion_fg_image" not in info
    assert "layerdiffusion_bg_additional_prompt" not in info  # empty values are not written
    as_text = {k: str(v) for k, v in info.items()}  # paste hands every value back as a string
    back = LayerDiffuseParams.from_infotext(as_text)
    assert back == LayerDiffuseParams.from_script_args(
        True, "BG_BLEND_TO_FG", 0.75, 0.5, None, None, None, "Resize and Fill", False, "a glass bottle, studio")


def test_infotext_without_our_keys_switches_off():
    p = LayerDiffuseParams.from_infotext({"Steps": "20", "Sampler": "Euler a"})
    assert p.enabled is False and p == LayerDiffuseParams()


def test_reference_infotext_with_legacy_method_name():
    ref = {"layerdiffusion_enabled": "True",
           "layerdiffusion_method": "Only Generate Transparent Image (Attention Injection)",
           "layerdiffusion_weight": "1", "layerdiffusion_ending_step": "1",
           "layerdiffusion_fg_image": "False", "layerdiffusion_resize_mode": "Crop and Resize"}
    assert LayerDiffuseParams.from_infotext(ref).method is Method.FG_ONLY_ATTN
    assert LayerDiffuseParams.from_infotext(ref, family="sd15").method is Method.FG_ONLY_ATTN_SD15


def test_to_dict_round_trip_keeps_images():
    p = LayerDiffuseParams(enabled=True, method=Method.FG_BLEND_TO_BG, fg_image=rgba_image(),
                           blend_image=rgba_image(3, 3), resize_mode="Just Resize", weight=2)
    d = p.to_dict()
    assert d["fg_image"].startswith("data:image/png;base64,") and d["bg_image"] is None
    assert LayerDiffuseParams.from_script_args(d) == p
    assert p != LayerDiffuseParams(enabled=True, method=Method.FG_BLEND_TO_BG)


def test_resize_mode_parse_forms():
    assert ResizeMode.parse(0) is ResizeMode.RESIZE
    assert ResizeMode.parse("crop_and_resize") is ResizeMode.CROP_AND_RESIZE
    assert ResizeMode.parse("resize and fill") is ResizeMode.RESIZE_AND_FILL
    assert [m.int_value for m in ResizeMode] == [0, 1, 2]
