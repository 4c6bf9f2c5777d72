"""Checks against a real Forge source tree (`FORGE_DIR`: early or current Forge, or a Forge Neo
tree): the fakes' signatures and attributes match the host, and the rig (e2e/forge/run.py)
passes its matrix there. Skipped without FORGE_DIR (CI has no Forge); see the README's
"Tested inside real Forge"."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

import fake_forge as ff

FORGE_DIR = os.environ.get("FORGE_DIR")
pytestmark = [pytest.mark.forge_real,
              pytest.mark.skipif(not FORGE_DIR, reason="FORGE_DIR is not set to a Forge source tree")]
PROJECT = Path(__file__).resolve().parents[1]


def forge_root() -> Path:
    return Path(FORGE_DIR).resolve()


def generation() -> int:
    """3 for Forge Neo, 2 for current Forge, 1 for early Forge (as the rig tells them apart)."""
    sys.path.insert(0, str(PROJECT / "e2e" / "forge"))
    try:
        from host import Forge
    finally:
        sys.path.pop(0)
    return Forge(forge_root()).generation


def _tree(relative: str) -> ast.Module:
    return ast.parse((forge_root() / relative).read_text(encoding="utf-8"))


def _classes(relative: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.walk(_tree(relative)) if isinstance(n, ast.ClassDef)}


def real_function(relative: str, qualname: str) -> Optional[ast.FunctionDef]:
    """A function or a method (`Class.method`, searched in the class and its bases in the same
    file and in `BASES`) from a Forge source file, without importing Forge."""
    if "." not in qualname:
        for node in _tree(relative).body:
            if isinstance(node, ast.FunctionDef) and node.name == qualname:
                return node
        return None
    cls_name, method = qualname.split(".")
    classes = _classes(relative)
    cls = classes.get(cls_name)
    while cls is not None:
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and node.name == method:
                return node
        base = next((b.id for b in cls.bases if isinstance(b, ast.Name)), None)
        where = BASES.get(generation(), {}).get(base)
        cls = _classes(where).get(base) if where else classes.get(base)
    return None


BASES = {3: {"ModelPatcher": "backend/patcher/base.py"}, 2: {"ModelPatcher": "backend/patcher/base.py"},
         1: {"ModelPatcher": "ldm_patched/modules/model_patcher.py"}}


def _params(fn: ast.FunctionDef) -> dict[str, bool]:
    """{parameter name: has a default}, without self."""
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    out = {a.arg: d for a, d in zip(positional, defaults)}
    out.update({a.arg: d is not None for a, d in zip(args.kwonlyargs, args.kw_defaults)})
    out.pop("self", None)
    return out


def _fake_params(fn) -> tuple[dict[str, bool], bool]:
    sig = inspect.signature(fn)
    named = {n: p.default is not inspect.Parameter.empty for n, p in sig.parameters.items()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"}
    catch_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return named, catch_all


SAMPLERS = [(getattr(ff.Sampler, name), f"modules/sd_samplers_{kind}.py", f"{cls}.{name}")
            for kind, cls in (("kdiffusion", "KDiffusionSampler"), ("timesteps", "CompVisSampler"))
            for name in ("sample", "sample_img2img")]
NEO_ADAPTER = "modules_forge/packages/comfy/weight_adapter/lora.py"
SIGNATURES = {
    3: [
        (ff.NeoUnetPatcher.clone, "backend/patcher/unet.py", "UnetPatcher.clone"),
        (ff.NeoUnetPatcher.add_conditioning_modifier, "backend/patcher/unet.py", "UnetPatcher.add_conditioning_modifier"),
        (ff.NeoUnetPatcher.set_transformer_option, "backend/patcher/unet.py", "UnetPatcher.set_transformer_option"),
        (ff.NeoUnetPatcher.add_extra_torch_module_during_sampling, "backend/patcher/unet.py",
         "UnetPatcher.add_extra_torch_module_during_sampling"),
        (ff.NeoUnetPatcher.load_frozen_patcher, "backend/patcher/unet.py", "UnetPatcher.load_frozen_patcher"),
        (ff.NeoUnetPatcher.add_patches, "backend/patcher/unet.py", "UnetPatcher.add_patches"),
        (ff.NeoModelPatcher.add_object_patch, "backend/patcher/base.py", "ModelPatcher.add_object_patch"),
        (ff.NeoModelPatcher.clone, "backend/patcher/base.py", "ModelPatcher.clone"),
        (ff.Memory.sampling_prepare, "backend/sampling/sampling_function.py", "sampling_prepare"),
        (ff.neo_merge, "backend/patcher/lora.py", "merge_lora_to_weight"),
        (ff.neo_get_weight_and_bias, "backend/operations.py", "get_weight_and_bias"),
        (ff.LoRAAdapter.__init__, NEO_ADAPTER, "LoRAAdapter.__init__"),
        (ff.LoRAAdapter.calculate_weight, NEO_ADAPTER, "LoRAAdapter.calculate_weight"),
        (ff.NeoFirstStage.encode, "backend/nn/vae.py", "IntegratedAutoencoderKL.encode"),
        (ff.set_attr_raw, "backend/utils.py", "set_attr_raw"),
        (ff.Condition.__init__, "backend/sampling/condition.py", "Condition.__init__"),
        *SAMPLERS,
    ],
    2: [
        (ff.CurrentUnetPatcher.clone, "backend/patcher/unet.py", "UnetPatcher.clone"),
        (ff.CurrentUnetPatcher.add_conditioning_modifier, "backend/patcher/unet.py", "UnetPatcher.add_conditioning_modifier"),
        (ff.CurrentUnetPatcher.set_transformer_option, "backend/patcher/unet.py", "UnetPatcher.set_transformer_option"),
        (ff.CurrentUnetPatcher.add_extra_torch_module_during_sampling, "backend/patcher/unet.py",
         "UnetPatcher.add_extra_torch_module_during_sampling"),
        (ff.CurrentUnetPatcher.load_frozen_patcher, "backend/patcher/unet.py", "UnetPatcher.load_frozen_patcher"),
        (ff.CurrentUnetPatcher.add_patches, "backend/patcher/unet.py", "UnetPatcher.add_patches"),
        (ff.ModelPatcher.add_object_patch, "backend/patcher/base.py", "ModelPatcher.add_object_patch"),
        (ff.ModelPatcher.set_model_vae_regulation, "backend/patcher/base.py", "ModelPatcher.set_model_vae_regulation"),
        (ff.Memory.sampling_prepare, "backend/sampling/sampling_function.py", "sampling_prepare"),
        (ff.CurrentUnetPatcher.refresh_loras, "backend/patcher/base.py", "ModelPatcher.refresh_loras"),
        (ff.CurrentUnetPatcher.forge_patch_model, "backend/patcher/base.py", "ModelPatcher.forge_patch_model"),
        (ff.CurrentUnetPatcher.forge_unpatch_model, "backend/patcher/base.py", "ModelPatcher.forge_unpatch_model"),
        (ff.LoraLoader.refresh, "backend/patcher/lora.py", "LoraLoader.refresh"),
        (ff.get_weight_and_bias, "backend/operations.py", "get_weight_and_bias"),
        (ff.get_attr_with_parent, "backend/utils.py", "get_attr_with_parent"),
        (ff.set_attr_raw, "backend/utils.py", "set_attr_raw"),
        *SAMPLERS,
    ],
    1: [
        (ff.EarlyUnetPatcher.clone, "modules_forge/unet_patcher.py", "UnetPatcher.clone"),
        (ff.EarlyUnetPatcher.add_conditioning_modifier, "modules_forge/unet_patcher.py",
         "UnetPatcher.add_conditioning_modifier"),
        (ff.EarlyUnetPatcher.set_transformer_option, "modules_forge/unet_patcher.py", "UnetPatcher.set_transformer_option"),
        (ff.EarlyUnetPatcher.add_extra_torch_module_during_sampling, "modules_forge/unet_patcher.py",
         "UnetPatcher.add_extra_torch_module_during_sampling"),
        (ff.EarlyUnetPatcher.load_frozen_patcher, "modules_forge/unet_patcher.py", "UnetPatcher.load_frozen_patcher"),
        (ff.EarlyUnetPatcher.add_patches, "modules_forge/unet_patcher.py", "UnetPatcher.add_patches"),
        (ff.ModelPatcher.add_object_patch, "modules_forge/unet_patcher.py", "UnetPatcher.add_object_patch"),
        (ff.Memory.sampling_prepare, "modules_forge/forge_sampler.py", "sampling_prepare"),
        (ff.EarlyUnetPatcher.patch_model, "ldm_patched/modules/model_patcher.py", "ModelPatcher.patch_model"),
        (ff.EarlyUnetPatcher.unpatch_model, "ldm_patched/modules/model_patcher.py", "ModelPatcher.unpatch_model"),
        (ff.set_attr_raw, "ldm_patched/modules/utils.py", "set_attr_raw"),
        *SAMPLERS,
    ],
}
WEBUI = [("save_image", "modules/images.py"), ("resize_image", "modules/images.py"),
         ("image_grid", "modules/images.py"), ("create_infotext", "modules/processing.py"), ("on_before_image_saved", "modules/script_callbacks.py"),
         ("on_image_grid", "modules/script_callbacks.py")]


def test_fake_host_functions_take_what_the_real_ones_take():
    """Every parameter a fake declares exists in the real function with the same has-a-default,
    and every required real parameter is in the fake (or the fake takes **kwargs)."""
    problems = []
    for fake, relative, qualname in SIGNATURES[generation()]:
        real = real_function(relative, qualname)
        if real is None:
            problems.append(f"{relative}: no {qualname}")
            continue
        want, (have, catch_all) = _params(real), _fake_params(fake)
        if fake is ff.Memory.sampling_prepare:
            have.pop("self", None)
        for name, default in have.items():
            if name not in want:
                problems.append(f"{qualname}: the fake has {name!r}, the real one has not ({list(want)})")
            elif want[name] != default:
                problems.append(f"{qualname}: {name!r} has a default in one and not the other")
        missing = [n for n, d in want.items() if not d and n not in have]
        if missing and not catch_all:
            problems.append(f"{qualname}: required {missing} missing from the fake")
    assert not problems, "\n".join(problems)


def test_webui_functions_our_code_calls_exist_with_the_arguments_we_pass():
    saved: list = []
    fakes = ff.webui_modules(None, saved, generation())
    fake_of = {"save_image": fakes["modules.images"].save_image, "resize_image": fakes["modules.images"].resize_image,
               "image_grid": fakes["modules.images"].image_grid,
               "create_infotext": fakes["modules.processing"].create_infotext}
    problems = []
    for name, relative in WEBUI:
        real = real_function(relative, name)
        if real is None:
            problems.append(f"{relative}: no {name}")
            continue
        if name in fake_of:
            have, _ = _fake_params(fake_of[name])
            want = _params(real)
            problems += [f"{name}: the fake has {n!r}, the real one has not" for n in have if n not in want]
    assert not problems, "\n".join(problems)


# what the Extras cutout, the settings page, the endpoints and the checkpoint lookup use
EXTRAS_FUNCTIONS = [("on_ui_settings", "modules/script_callbacks.py"), ("on_app_started", "modules/script_callbacks.py"),
                    ("on_after_component", "modules/script_callbacks.py"),
                    ("run_postprocessing", "modules/postprocessing.py"),
                    ("get_closet_checkpoint_match", "modules/sd_models.py")]


def test_extras_settings_and_endpoint_hooks_match_the_fakes():
    problems = [f"{relative}: no {name}" for name, relative in EXTRAS_FUNCTIONS if real_function(relative, name) is None]
    fakes = ff.webui_modules(None, [], generation())
    # Neo's run_postprocessing takes a video path before the scripts' arguments
    real = _params(real_function("modules/postprocessing.py", "run_postprocessing"))
    fake, _ = _fake_params(fakes["modules.postprocessing"].run_postprocessing)
    if list(real) != list(fake):
        problems.append(f"run_postprocessing takes {list(real)}, the fake {list(fake)}")
    option = _params(real_function("modules/options.py", "OptionInfo.__init__")
                     or real_function("modules/shared.py", "OptionInfo.__init__"))
    fake_option, _ = _fake_params(ff.OptionInfo.__init__)
    problems += [f"OptionInfo has no {n!r}" for n in ("default", "label", "component", "component_args", "section")
                 if n not in option]
    problems += [f"the fake OptionInfo has {n!r}, the real one has not" for n in fake_option if n not in option]
    source = (forge_root() / "modules/scripts_postprocessing.py").read_text(encoding="utf-8")
    problems += [f"PostprocessedImage has no {field}" for field in
                 ("self.image", "self.info", "self.extra_images", "self.nametags", "self.disable_processing")
                 if field not in source]
    problems += [f"ScriptPostprocessingRunner has no {name}" for name in ("create_args_for_run",
                                                                           "scripts_in_preferred_order")
                 if real_function("modules/scripts_postprocessing.py", f"ScriptPostprocessingRunner.{name}") is None]
    for relative, text in (("modules/call_queue.py", "queue_lock"), ("modules/sd_models.py", "model_data"),
                           ("modules/ui_components.py", "InputAccordion"), ("modules/shared_state.py", "skipped"),
                           ("modules/scripts.py", "scripts_postproc")):
        if text not in (forge_root() / relative).read_text(encoding="utf-8"):
            problems.append(f"{relative} has no {text}")
    assert not problems, "\n".join(problems)


def _calls(fn: ast.AST, name: str) -> list[int]:
    """Lines where `fn` calls something named `name` (a function or a method)."""
    return [n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


def test_loras_are_merged_by_path_after_the_object_patches():
    """What the fakes' `load` follows: loading a UNet puts the object patches in first and merges
    weight patches after, by dotted parameter path (current Forge's LoRA loader with
    set_attr_raw / get_attr_with_parent, early Forge's patch_model through the state dict)."""
    if generation() == 3:
        patch = real_function("backend/patcher/base.py", "ModelPatcher.patch_model")
        assert max(_calls(patch, "set_attr_raw")) < min(_calls(patch, "load"))
        load = ast.unparse(real_function("backend/patcher/base.py", "ModelPatcher.load"))
        assert "patch_weight_to_device" in load and "weight_function = [LowVramPatch" in load
        weight = ast.unparse(real_function("backend/patcher/base.py", "get_key_weight"))
        assert "utils.get_attr(model" in weight  # by dotted path
        merge = ast.unparse(real_function("backend/patcher/lora.py", "merge_lora_to_weight"))
        assert "is not recognized" in merge and "pad_weight" in merge
        assert "weight[:] = weight_calc" not in ast.unparse(real_function("backend/operations.py", "get_weight_and_bias"))
    elif generation() == 2:
        load = real_function("backend/memory_management.py", "LoadedModel.model_load")
        assert max(_calls(load, "forge_patch_model")) < min(_calls(load, "refresh_loras"))
        refresh = real_function("backend/patcher/lora.py", "LoraLoader.refresh")
        assert _calls(refresh, "set_attr_raw") and _calls(refresh, "get_attr_with_parent")
        assert "forge_online_loras" in ast.unparse(refresh)
        weights = real_function("backend/operations.py", "get_weight_and_bias")
        assert "forge_online_loras" in ast.unparse(weights)
    else:
        patch = real_function("ldm_patched/modules/model_patcher.py", "ModelPatcher.patch_model")
        assert max(_calls(patch, "set_attr_raw")) < min(_calls(patch, "model_state_dict"))


def test_attention_modules_hold_no_parameters_of_their_own():
    """SharedAttention keeps the original's child modules under their names, which keeps every
    parameter path only when the LDM attention module has no parameters of its own."""
    where = "backend/nn/unet.py" if generation() >= 2 else "ldm_patched/ldm/modules/attention.py"
    cls = _classes(where)["CrossAttention"]
    assert "Parameter(" not in ast.unparse(cls)
    assigned = {n.attr for n in ast.walk(_method_node(cls, "__init__")) if isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)}
    assert {"to_q", "to_k", "to_v", "to_out"} <= assigned


def test_stealth_infotext_is_written_before_the_callbacks_as_the_fake_writes_it():
    """Current Forge's writer runs on the saved object before `before_image_saved`: "Alpha" sets
    the alpha to 255, "RGB" unpacks three values per pixel (an RGBA image raises). Early Forge
    has none. Grids: current Forge composes RGBA, early Forge RGB."""
    save = real_function("modules/images.py", "save_image")
    grid = ast.unparse(real_function("modules/images.py", "image_grid"))
    if generation() == 1:
        assert not (forge_root() / "modules" / "stealth_infotext.py").exists()
        assert "Image.new('RGB'" in grid
        return
    if generation() == 3:  # Neo removed it
        assert not (forge_root() / "modules" / "stealth_infotext.py").exists()
        assert not _calls(save, "add_stealth_pnginfo")
        assert "Image.new('RGBA'" in grid
        return
    assert max(_calls(save, "add_stealth_pnginfo")) < min(_calls(save, "before_image_saved_callback"))
    writer = ast.unparse(real_function("modules/stealth_infotext.py", "add_data"))
    assert "params.image.putalpha(255)" in writer and "r, g, b = values" in writer
    assert "Image.new('RGBA'" in grid and "grid_background_color" in grid


def _method_node(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _line_of(fn: ast.FunctionDef, match) -> Optional[int]:
    lines = [n.lineno for n in ast.walk(fn) if match(n)]
    return min(lines) if lines else None


def test_every_pass_creates_its_sampler_before_the_sampling_hook():
    """The transparent decode keeps the latents the sampler returns (with hires fix
    `post_sample` only gets pixels), so `p.sampler` must already be the coming pass's sampler
    when `process_before_every_sampling` runs: in txt2img's sample and hires pass, and in
    img2img (whose init creates it). Also: Forge hands `post_sample` its DecodedSamples."""
    classes = _classes("modules/processing.py")

    def creates_sampler(n):
        return isinstance(n, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "sampler"
                                                 for t in n.targets) and "create_sampler" in ast.unparse(n.value)

    def calls_hook(n):
        return isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
            and n.func.attr == "process_before_every_sampling"

    txt2img = classes["StableDiffusionProcessingTxt2Img"]
    for name in ("sample", "sample_hr_pass"):
        fn = _method_node(txt2img, name)
        created, hooked = _line_of(fn, creates_sampler), _line_of(fn, calls_hook)
        assert created is not None and hooked is not None and created < hooked, name
    img2img = classes["StableDiffusionProcessingImg2Img"]
    assert _line_of(_method_node(img2img, "init"), creates_sampler) is not None
    assert _line_of(_method_node(img2img, "sample"), creates_sampler) is None
    decoded = classes["DecodedSamples"]
    assert "already_decoded" in {t.id for n in decoded.body if isinstance(n, ast.Assign) for t in n.targets}
    assert [b.id for b in decoded.bases] == ["list"] and ff.DecodedSamples.__bases__ == (list,)


def _assigned_attributes(cls: ast.ClassDef) -> set[str]:
    out = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def test_the_fake_unet_has_a_dtype_exactly_when_the_real_one_has():
    """The attribute that broke every SD1.5 method in current Forge: its UNet has no `dtype`."""
    if generation() >= 2:
        real = _classes("backend/nn/unet.py")["IntegratedUNet2DConditionModel"]
    else:
        real = _classes("ldm_patched/ldm/modules/diffusionmodules/openaimodel.py")["UNetModel"]
    fake = ff.BaseModel("sd15", generation()).diffusion_model
    assert ("dtype" in _assigned_attributes(real)) == hasattr(fake, "dtype")


def test_processing_attributes_of_the_fake_exist_on_the_real_processing_object():
    classes = _classes("modules/processing.py")
    real = _assigned_attributes(classes["StableDiffusionProcessing"])
    real |= _assigned_attributes(classes["StableDiffusionProcessingImg2Img"])
    real |= {n.name for n in ast.walk(classes["StableDiffusionProcessing"]) if isinstance(n, ast.FunctionDef)}
    real |= {n.attr for n in ast.walk(_tree("modules/processing.py")) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id == "p" and isinstance(n.ctx, ast.Store)}
    fake = {f.name for f in ff.Processing.__dataclass_fields__.values()} | {"comment", "save_samples"}
    assert sorted(fake - real - {"sd_model", "saved"}) == []


def test_what_the_neo_fakes_leave_out_neo_lacks():
    """Neo has no VAE regulation hook, no `unload_model_clones`, no stealth infotext option, and
    its Flux blocks take `transformer_options`; the Neo fakes leave out the first three."""
    if generation() != 3:
        pytest.skip("Forge Neo only")
    assert real_function("backend/patcher/base.py", "ModelPatcher.set_model_vae_regulation") is None
    assert ff.NeoModelPatcher.set_model_vae_regulation is None
    assert real_function("backend/memory_management.py", "unload_model_clones") is None
    assert "stealth_pnginfo_option" not in (forge_root() / "modules" / "shared_options.py").read_text()
    version = (forge_root() / "modules_forge" / "forge_version.py").read_text()
    assert 'version = "neo"' in version
    # its sampling function passes extra_concat_condition on only for inpainting models (what
    # ff.neo_concat_inputs reproduces and the conditioning modifier works around)
    sampling = (forge_root() / "backend" / "sampling" / "sampling_function.py").read_text()
    assert "isinstance(image_cond_in, torch.Tensor) and self.inner_model.inner_model.is_inpaint" in sampling


@pytest.mark.slow
def test_the_rig_passes_its_matrix_in_real_forge(tmp_path):
    """The whole matrix (tens of minutes on a CPU): e2e/forge/run.py exits 0."""
    res = subprocess.run([sys.executable, str(PROJECT / "e2e" / "forge" / "run.py"), "--forge-dir", FORGE_DIR,
                          "--json", str(tmp_path / "results.json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
