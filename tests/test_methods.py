import pytest

from lib_layerdiffuse.methods import Family, Method, PatchKind, methods_for
from lib_layerdiffuse.weights import CATALOG

REFERENCE_DISPLAY = [
    "(SD1.5) Only Generate Transparent Image (Attention Injection)",
    "(SD1.5) From Foreground to Background (need batch size 2)",
    "(SD1.5) From Background to Foreground (need batch size 2)",
    "(SD1.5) Generate Everything Together (need batch size 3)",
    "(SDXL) Only Generate Transparent Image (Attention Injection)",
    "(SDXL) Only Generate Transparent Image (Conv Injection)",
    "(SDXL) From Foreground to Blending",
    "(SDXL) From Foreground and Blending to Background",
    "(SDXL) From Background to Blending",
    "(SDXL) From Background and Blending to Foreground",
]


def test_the_reference_methods_in_reference_order_with_reference_strings_then_flux():
    assert Method.choices(forge=True) == REFERENCE_DISPLAY + ["(Flux) Only Generate Transparent Image"]
    assert Method.choices() == Method.choices(forge=True) + ["(Qwen-Image-2.1) Native RGBA"]
    assert Method.default() is Method.FG_ONLY_ATTN
    assert Method.default(Family.FLUX) is Method.FLUX_FG_ONLY
    assert methods_for(Family.FLUX) == [Method.FLUX_FG_ONLY]


def test_flux_and_qwen_methods_name_their_base_licences():
    assert "non-commercial" in Method.FLUX_FG_ONLY.spec.licence
    assert "separate licence" in Method.QWEN21_RGBA.spec.licence
    assert all(not m.spec.licence for m in Method if m.family not in (Family.FLUX, Family.QWEN21))


@pytest.mark.parametrize("method", list(Method))
def test_parse_display_member_name_and_any_case(method):
    assert Method.parse(method.value) is method
    assert Method.parse(method.name) is method
    assert Method.parse(method.value.upper()) is method
    assert Method.parse(method.name.lower()) is method
    assert Method.parse("  " + method.value.replace(" ", "  ") + " ") is method
    assert Method.parse(method) is method


@pytest.mark.parametrize("legacy, member", [
    ("Only Generate Transparent Image (Attention Injection)", Method.FG_ONLY_ATTN),
    ("Only Generate Transparent Image (Conv Injection)", Method.FG_ONLY_CONV),
    ("From Foreground to Blending", Method.FG_TO_BLEND),
    ("From Foreground and Blending to Background", Method.FG_BLEND_TO_BG),
    ("From Background to Blending", Method.BG_TO_BLEND),
    ("From Background and Blending to Foreground", Method.BG_BLEND_TO_FG),
    ("from background and blending to foreground", Method.BG_BLEND_TO_FG),
])
def test_parse_pre_2024_03_08_names(legacy, member):
    assert Method.parse(legacy) is member
    assert member.legacy_name.casefold() == legacy.casefold()


def test_unprefixed_name_follows_loaded_family():
    name = "Only Generate Transparent Image (Attention Injection)"
    assert Method.parse(name, family="sd15") is Method.FG_ONLY_ATTN_SD15
    assert Method.parse(name, family=Family.SDXL) is Method.FG_ONLY_ATTN
    # no SD1.5 method of that name: the SDXL one comes back and the family check reports it later
    assert Method.parse("From Foreground to Blending", family="sd15") is Method.FG_TO_BLEND


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        Method.parse("Generate Transparent Cats")
    msg = str(err.value)
    assert "Generate Transparent Cats" in msg
    for m in Method:
        assert m.value in msg and m.name in msg


@pytest.mark.parametrize("bad", [4, None, 1.5, ["FG_ONLY_ATTN"]])
def test_non_string_method_is_a_type_error(bad):
    with pytest.raises(TypeError, match="method"):
        Method.parse(bad)


def test_metadata_matches_the_spec_table():
    assert [m.frames for m in methods_for("sd15")] == [1, 2, 2, 3]
    assert Method.FG_TO_BG_SD15.spec.frames == ("bg", "blend")
    assert Method.BG_TO_FG_SD15.spec.frames == ("fg", "blend")
    assert Method.JOINT_SD15.spec.frames == ("fg", "bg", "blend")
    assert Method.FG_TO_BG_SD15.spec.transparent == ()
    assert Method.BG_TO_FG_SD15.spec.transparent == (0,)
    assert Method.JOINT_SD15.spec.transparent == (0,)
    assert {m: m.conv_in_channels for m in methods_for("sdxl")} == {
        Method.FG_ONLY_ATTN: 4, Method.FG_ONLY_CONV: 4, Method.FG_TO_BLEND: 8,
        Method.FG_BLEND_TO_BG: 12, Method.BG_TO_BLEND: 8, Method.BG_BLEND_TO_FG: 12}
    assert Method.FG_BLEND_TO_BG.conditions == ("fg", "blend")
    assert Method.BG_BLEND_TO_FG.conditions == ("bg", "blend")
    assert Method.FG_TO_BG_SD15.conditions == ("fg",)
    transparent = {m for m in Method if m.spec.transparent}
    assert transparent == {Method.FG_ONLY_ATTN_SD15, Method.BG_TO_FG_SD15, Method.JOINT_SD15,
                           Method.FG_ONLY_ATTN, Method.FG_ONLY_CONV, Method.BG_BLEND_TO_FG, Method.FLUX_FG_ONLY,
                           Method.QWEN21_RGBA}
    assert Method.FLUX_FG_ONLY.spec.patch_kind is PatchKind.TRANSFORMER_LORA
    assert Method.FG_ONLY_ATTN.spec.patch_kind is PatchKind.LORA
    assert all(m.spec.patch_kind is PatchKind.ATTENTION_SHARING for m in methods_for("sd15"))


@pytest.mark.parametrize("method", list(Method))
def test_every_method_file_is_in_the_catalog_and_of_its_family(method):
    for name in method.weight_files:
        assert CATALOG[name].family is method.family
    if method.family.native_rgba:  # the model's own VAE makes the alpha: nothing to download
        assert method.weight_files == () and method.spec.patch_kind is PatchKind.NATIVE
    elif method.spec.transparent:
        assert CATALOG[method.spec.decoder_file].role == "decoder"
