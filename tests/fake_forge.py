"""Small stand-ins for the three Forge hosts (early Forge, current Forge, Forge Neo), written
from the documented host behaviour (../shared/reference/forge-api.md, hosts-2026.md) and checked
against the real sources by test_forge_real.py, for tests that cannot install Forge.

What they reproduce: `clone()` copies the patch containers and deep-copies `model_options`;
`add_patches` ignores keys the model does not have and returns the accepted ones (a list on
early Forge and Neo, a set keyed by a filename on current Forge); the `load_frozen_patcher`
signatures; object patches replace modules by dotted name; the LDM attention signature
with `transformer_options`; latent scaling on the UNet (early) or the VAE (current, Neo); a
processing object with the attributes the hooks read.

Loading a UNet (`Memory.load_unet`, what `sampling_prepare` does) follows the hosts' order:
the previous clone of the same model is unpatched, then object patches go in first and weight
patches (user LoRAs, LayerDiffuse's SDXL files) after, by parameter path. Current Forge's
`LoraLoader.refresh` restores its backups and merges with `set_attr_raw` on dotted paths and
raises "Wrong LoRA Key" for a path it cannot reach; in online mode it hangs the patches on the
layer (`forge_online_loras`) for `operations.get_weight_and_bias`. Early Forge's `patch_model`
looks keys up in the state dict after the object patches and skips missing ones.

Forge Neo (ComfyUI-style patcher): patches are 6-tuples per parameter, merged by `neo_merge`
(Neo's `merge_lora_to_weight`: weight adapters, `diff` padded only with `pad_weight`, `set`;
a raw `("lora", ...)` raises as in Neo); clones share the weight and object-patch backups; in
online mode the merge hangs on the layer's `weight_function` and merges into the tensor it is
given. Neo's VAE has no regulation hook: its `encode` samples the posterior, and the VAE
patcher's object patches go into the model when it is loaded.
"""

from __future__ import annotations

import copy
import itertools
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from lib_layerdiffuse.testing.flux import FLUX_VAE, tiny_flux_transformer, tiny_flux_vae, to_bfl_state_dict
from lib_layerdiffuse.testing.models import SCALING_FACTORS, tiny_vae
from lib_layerdiffuse.testing.unet_specs import TINY, ldm_unet_layout

SIGMA_MAX = 14.6


class CrossAttention(nn.Module):
    """The LDM attention module (to_q/to_k/to_v, to_out = Linear + Dropout)."""

    def __init__(self, query_dim: int, context_dim: int, inner: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None, value=None, mask=None, transformer_options=None):
        ctx = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        b, n, c = q.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


def _child(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        if not hasattr(module, part) or not isinstance(getattr(module, part), nn.Module):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module


def ldm_unet(family: str, seed: int = 0) -> nn.Module:
    """A tiny module tree with the LDM parameter names and shapes of `family`'s UNet, with real
    LDM-style attention modules (what `unet.model.diffusion_model` is in Forge)."""
    spec = TINY[family]
    layout = ldm_unet_layout(spec)
    gen = torch.Generator().manual_seed(seed)
    root = nn.Module()
    attn = {k.rsplit(".to_q.weight", 1)[0] for k in layout if k.endswith(".to_q.weight")}
    for prefix in sorted(attn):
        parent, name = prefix.rsplit(".", 1)
        inner, query = layout[prefix + ".to_q.weight"]
        module = CrossAttention(query, layout[prefix + ".to_k.weight"][1], inner, spec.heads[0])
        for p in module.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.1
        _child(root, parent).add_module(name, module)
    for key, shape in layout.items():
        if any(key.startswith(p + ".") for p in attn):
            continue
        parent, name = key.rsplit(".", 1)
        _child(root, parent).register_parameter(name, nn.Parameter(torch.randn(shape, generator=gen) * 0.02))
    return root


def set_attr(root: nn.Module, dotted: str, value: nn.Module) -> nn.Module:
    parent, name = dotted.rsplit(".", 1)
    module = root.get_submodule(parent)
    old = getattr(module, name)
    setattr(module, name, value)
    return old


def get_attr_with_parent(obj: Any, attr: str) -> tuple[Any, str, Any]:
    """Forge's `get_attr_with_parent`: plain getattr along a dotted path (AttributeError if a
    module on the way lacks the name)."""
    parent, value = obj, obj
    for name in attr.split("."):
        parent, value = value, getattr(value, name)
    return parent, attr.rsplit(".", 1)[-1], value


def set_attr_raw(obj: Any, attr: str, value: Any) -> None:
    """Forge's `set_attr_raw`: setattr on the module a dotted path leads to."""
    parent, name, _ = get_attr_with_parent(obj, attr)
    setattr(parent, name, value)


def merge_patches(entries: list, weight: torch.Tensor) -> torch.Tensor:
    """The weight with patches merged in fp32: entries `(strength, (kind, values), strength_model)`;
    kinds "lora" (up, down, alpha, ...) and "diff" (delta, ...), the two LayerDiffuse and kohya
    LoRAs use."""
    out = weight.float().clone()
    for entry in entries:  # early Forge keeps 3 values per patch, current Forge 5
        strength, (kind, values), strength_model = entry[:3]
        out = out * strength_model
        if kind == "lora":
            up, down, alpha = values[0].float(), values[1].float(), values[2]
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            out = out + strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(out.shape)
        elif kind == "diff":
            diff = values[0].float()
            if diff.shape != out.shape:  # LayerDiffuse's widened conv_in: pad the weight
                wide = out.new_zeros(diff.shape)
                wide[tuple(slice(0, n) for n in out.shape)] = out
                out = wide
            out = out + strength * diff
        else:
            raise ValueError(f"the fake merges lora and diff patches, not {kind!r}")
    return out.to(weight.dtype)


def neo_form(patches: dict) -> dict:
    """kohya-style `(type, values)` LoRA patches as Neo's LoRA loader makes them: adapters."""
    return {k: LoRAAdapter(set(), (*v[1][:3], None, None, None)) if v[0] == "lora" else v for k, v in patches.items()}


class LoraLoader:
    """Current Forge's `backend.patcher.lora.LoraLoader`, one per model (`model.lora_loader`)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.backup: dict[str, torch.Tensor] = {}
        self.online_backup: list = []
        self.loaded_hash = str([])

    @torch.no_grad()
    def refresh(self, lora_patches: dict, offload_device=None, force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        merged: dict[tuple, list] = {}
        for (_, _, _, online_mode), patches in lora_patches.items():
            for key, entries in patches.items():
                merged[(key, online_mode)] = merged.get((key, online_mode), []) + entries
        for layer in set(self.online_backup):
            del layer.forge_online_loras
        self.online_backup = []
        for key, weight in self.backup.items():
            set_attr_raw(self.model, key, weight)
        self.backup = {}
        for (key, online_mode), entries in merged.items():
            try:
                parent, child, weight = get_attr_with_parent(self.model, key)
                assert isinstance(weight, nn.Parameter)
            except (AttributeError, AssertionError):
                raise ValueError(f"Wrong LoRA Key: {key}") from None
            if online_mode:
                if not hasattr(parent, "forge_online_loras"):
                    parent.forge_online_loras = {}
                parent.forge_online_loras[child] = entries
                self.online_backup.append(parent)
                continue
            self.backup.setdefault(key, weight)
            out = merge_patches(entries, weight)
            set_attr_raw(self.model, key, nn.Parameter(out, requires_grad=False))
        self.loaded_hash = hashes


def get_weight_and_bias(layer, weight_args=None, bias_args=None, weight_fn=None, bias_fn=None):
    """Current Forge's `backend.operations.get_weight_and_bias`: the stored weight (through
    `weight_fn`) with the online LoRAs of the layer merged."""
    patches = getattr(layer, "forge_online_loras", {})
    weight = layer.weight if weight_fn is None else weight_fn(layer.weight)
    if "weight" in patches:
        weight = merge_patches(patches["weight"], weight)
    bias = layer.bias
    if bias is not None and "bias" in patches:
        bias = merge_patches(patches["bias"], bias)
    return weight, bias


class LoRAAdapter:
    """Neo's `weight_adapter.LoRAAdapter`: `weights` = (up, down, alpha, mid, dora_scale, reshape);
    `calculate_weight` adds the LoRA into the weight it is given (a view when offset)."""

    name = "lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys, self.weights = loaded_keys, weights

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        up, down, alpha = (t if not isinstance(t, torch.Tensor) else t.to(intermediate_dtype)
                           for t in self.weights[:3])
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        weight += function(strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)).type(weight.dtype)
        return weight


def neo_merge(patches: list, weight: torch.Tensor, key: str) -> torch.Tensor:
    """Neo's `merge_lora_to_weight`, in place on `weight`: entries (strength, value,
    strength_model, offset, function, online); values are weight adapters, `("diff", (delta,
    {"pad_weight": bool}))` (a second value that is not such a dict raises, as in Neo) or
    `("set", (tensor,))`; any other type raises Neo's ValueError."""
    for strength, v, strength_model, offset, function, _online in patches:
        function = function or (lambda a: a)
        old = None
        if offset is not None:
            old, weight = weight, weight.narrow(*offset)
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(v, LoRAAdapter):
            weight = v.calculate_weight(weight, key, strength, strength_model, offset, function)
            weight = old if old is not None else weight
            continue
        kind, v = ("diff", v) if len(v) == 1 else v
        if kind == "diff":
            diff = v[0]
            if len(v) > 1 and v[1]["pad_weight"] and diff.shape != weight.shape:
                wide = weight.new_zeros(diff.shape)
                wide[tuple(slice(0, n) for n in weight.shape)] = weight
                weight = wide
            if strength != 0.0 and diff.shape == weight.shape:
                weight += function(strength * diff.to(weight.dtype))
        elif kind == "set":
            weight.copy_(v[0])
        else:
            raise ValueError(f'"{key}" of type "{kind}" is not recognized...')
        weight = old if old is not None else weight
    return weight


def neo_get_weight_and_bias(layer):
    """Neo's `backend.operations.get_weight_and_bias`: the stored tensors through the layer's
    weight functions (which merge in place)."""
    weight = layer.weight
    for f in getattr(layer, "weight_function", []):
        weight = f(weight)
    bias = layer.bias
    for f in getattr(layer, "bias_function", []):
        bias = f(bias)
    return weight, bias


class QuantizedTensor(torch.Tensor):
    """Neo's mixed-precision weight (`backend.quant_ops.QuantizedTensor`); unused by the fakes'
    models, present for the type check."""


class LatentScaling:
    """`latent_format` on early Forge's UNet, `first_stage_model` on current Forge's VAE."""

    def __init__(self, scale: float):
        self.scale = scale

    def process_in(self, x):
        return x * self.scale

    def process_out(self, x):
        return x / self.scale


class Sigmas:
    """percent_to_sigma as Forge defines it: 1.0 -> 0 (never), 0.0 -> a huge sigma (at once)."""

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return SIGMA_MAX * (1.0 - percent) ** 2


def _put(root: nn.Module, dotted: str, param: nn.Parameter) -> None:
    """Register `param` under a dotted name, making plain modules (lists where the next part
    is an index) on the way."""
    parts = dotted.split(".")
    module = root
    for part, following in zip(parts[:-1], parts[1:]):
        if isinstance(module, nn.ModuleList):
            while len(module) <= int(part):
                module.append(nn.ModuleList() if following.isdigit() else nn.Module())
            module = module[int(part)]
        else:
            if part not in module._modules:
                module.add_module(part, nn.ModuleList() if following.isdigit() else nn.Module())
            module = module._modules[part]
    module.register_parameter(parts[-1], param)


class _PackedQuant:
    """The `gguf_cls` of `GGUFParameter`: dequantises its packed data."""

    @staticmethod
    def dequantize_pytorch(tensor: "GGUFParameter") -> torch.Tensor:
        return (tensor.data.float() * tensor.scale).reshape(tensor.real_shape)


class GGUFParameter(nn.Parameter):
    """Forge Neo's `ParameterGGUF` as LayerDiffuse meets it: the data is packed (int8 values in
    one row, not the layer's shape), `shape` says the real shape, `gguf_cls` dequantises it, and
    `.to()` casts the packed data and keeps the type."""

    def __new__(cls, weight: torch.Tensor, scale: Optional[torch.Tensor] = None, shape=None):
        if scale is None:
            scale, shape = weight.detach().abs().max().clamp(min=1e-8) / 127, weight.shape
            weight = torch.round(weight.detach() / scale).to(torch.int8).reshape(-1)
        param = super().__new__(cls, weight, requires_grad=False)
        param.gguf_cls, param.scale = _PackedQuant, scale
        param.real_shape = torch.Size(shape)
        return param

    @property
    def shape(self):
        return self.real_shape

    def to(self, *args, **kwargs):
        return GGUFParameter(self.data.to(*args, **kwargs), self.scale, self.real_shape)


def neo_dequantize(tensor):
    """Neo's `backend.operations_gguf.dequantize_tensor`: a GGUF parameter dequantised, anything
    else as it is."""
    if tensor is None or getattr(tensor, "gguf_cls", None) is None:
        return tensor
    return tensor.gguf_cls.dequantize_pytorch(tensor)


def gguf_weights(module: nn.Module, prefix: str = "") -> list[str]:
    """Turn the 2-D weights of `module` under `prefix` into `GGUFParameter`s (a GGUF Flux
    checkpoint in Neo); returns their names."""
    names = []
    for name, param in list(module.named_parameters()):
        if name.startswith(prefix) and name.endswith(".weight") and param.dim() == 2:
            set_attr_raw(module, name, GGUFParameter(param.detach().float()))
            names.append(name)
    return names


def bfl_flux(seed: int = 0) -> nn.Module:
    """Current Forge's `IntegratedFluxTransformer2DModel` as far as LayerDiffuse sees it: the
    tiny test transformer's weights under Black Forest Labs' names, `hidden_size` and the single
    blocks' `mlp_hidden_dim`."""
    transformer = tiny_flux_transformer(seed)
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    root = nn.Module()
    for name, value in to_bfl_state_dict(transformer.state_dict(), hidden, mlp).items():
        _put(root, name, nn.Parameter(value.clone(), requires_grad=False))
    root.hidden_size = hidden
    for block in root.single_blocks:
        block.mlp_hidden_dim = mlp
    return root


def neo_qwen21(width: int = 16, layers: int = 2) -> nn.Module:
    """Forge Neo's Qwen-Image-2.1 transformer (`backend/nn/qwen21.py`, from ComfyUI) as far as
    LayerDiffuse sees it: its parameter names (the text projection's `txt_in.text_norm`, the
    fused SwiGLU `img_mlp.gate_up`) at a tiny width."""
    root = nn.Module()
    names = {"txt_in.text_norm.weight": (width,), "txt_in.in_layer.weight": (width, width),
             "txt_in.out_layer.weight": (width, width), "img_in.weight": (width, 64),
             "modulation.1.weight": (4 * width, width), "proj_out.weight": (64, width),
             "norm_out.linear.weight": (width, width)}
    for i in range(layers):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            names[f"transformer_blocks.{i}.attn.{proj}.weight"] = (width, width)
        names[f"transformer_blocks.{i}.img_mlp.gate_up.weight"] = (6 * width, width)
        names[f"transformer_blocks.{i}.img_mlp.out.weight"] = (width, 3 * width)
    for name, shape in names.items():
        _put(root, name, nn.Parameter(torch.zeros(shape), requires_grad=False))
    return root


class FluxFirstStage(nn.Module):
    """Current Forge's Flux VAE (`first_stage_model`): latent shift and scale, and `decode` to
    [-1, 1] without clipping."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def process_in(self, x):
        return (x - FLUX_VAE["shift_factor"]) * FLUX_VAE["scaling_factor"]

    def process_out(self, x):
        return x / FLUX_VAE["scaling_factor"] + FLUX_VAE["shift_factor"]

    def decode(self, z):
        return self.model.decode(z).sample


def raw_latents(family: str, x: torch.Tensor) -> torch.Tensor:
    """Model-space latents of the stand-in models -> raw VAE latents."""
    if family == "flux":
        return x / FLUX_VAE["scaling_factor"] + FLUX_VAE["shift_factor"]
    return x / SCALING_FACTORS[family]


class BaseModel(nn.Module):
    def __init__(self, family: str, generation: int):
        super().__init__()
        self.diffusion_model = {"flux": bfl_flux, "qwen21": neo_qwen21}.get(family, lambda: ldm_unet(family))()
        if generation == 1:
            self.diffusion_model.dtype = torch.float32  # ldm_patched's UNetModel has one; current Forge's has not
            self.model_sampling = Sigmas()
            self.latent_format = LatentScaling(SCALING_FACTORS[family])
        else:
            self.predictor = Sigmas()


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.model_options = {"transformer_options": {}}
        self.object_patches: dict[str, nn.Module] = {}

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def set_model_vae_regulation(self, vae_regulation):
        self.model_options["model_vae_regulation"] = vae_regulation

    def model_keys(self) -> set[str]:
        return {k for k, _ in self.model.named_parameters()}


class UnetPatcherBase(ModelPatcher):
    generation = 0

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.extra_concat_condition = None
        self.extra_modules: list[nn.Module] = []
        self.extra_patchers: list = []
        self.object_patches_backup: dict[str, nn.Module] = {}

    def clone(self):
        n = type(self)(self.model, self.load_device, self.offload_device)
        n.model_options = copy.deepcopy(self.model_options)
        n.object_patches = self.object_patches.copy()
        n.extra_concat_condition = self.extra_concat_condition
        n.extra_modules = self.extra_modules.copy()
        n.extra_patchers = self.extra_patchers.copy()
        self._copy_patches(n)
        return n

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.model_options.setdefault("conditioning_modifiers", []).append(modifier)

    def set_transformer_option(self, k, v):
        self.model_options["transformer_options"][k] = v

    def add_extra_model_patcher_during_sampling(self, model_patcher):
        self.extra_modules.append(model_patcher.model)
        self.extra_patchers.append(model_patcher)

    def add_extra_torch_module_during_sampling(self, m, cast_to_unet_dtype=True):
        if cast_to_unet_dtype:  # as both Forges do; current Forge's UNet has no `dtype` (AttributeError)
            m.to(self.model.diffusion_model.dtype)
        self.extra_modules.append(m)
        return ModelPatcher(m, self.load_device, self.offload_device)

    def _frozen(self, state_dict):
        grouped: dict[str, dict[str, list]] = {}
        for k, w in state_dict.items():
            key, kind, index = k.split("::")
            grouped.setdefault(key, {}).setdefault(kind, [None] * 16)[int(index)] = w
        return {key: (kind, slots) for key, kinds in grouped.items() for kind, slots in kinds.items()}

    # what sampling_prepare does with object patches: put them into the shared model
    def apply_object_patches(self):
        backup = {k: set_attr(self.model, k, v) for k, v in self.object_patches.items()}
        return lambda: [set_attr(self.model, k, v) for k, v in backup.items()]

    def put_object_patches(self) -> None:
        """Both hosts' loading: object patches into the shared model, the originals kept once."""
        for k, obj in self.object_patches.items():
            self.object_patches_backup.setdefault(k, get_attr_with_parent(self.model, k)[2])
            set_attr_raw(self.model, k, obj)

    def take_object_patches(self) -> None:
        for k, obj in self.object_patches_backup.items():
            set_attr_raw(self.model, k, obj)
        self.object_patches_backup = {}

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model


class EarlyUnetPatcher(UnetPatcherBase):
    generation = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.patches: dict[str, list] = {}
        self.backup: dict[str, torch.Tensor] = {}

    def _copy_patches(self, n):
        n.patches = {k: v[:] for k, v in self.patches.items()}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        keys = self.model_keys()
        applied = []
        for k, v in patches.items():
            if k in keys:
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model))
                applied.append(k)
        return applied

    def load_frozen_patcher(self, state_dict, strength):
        self.add_patches(self._frozen(state_dict), float(strength), 1.0)

    def patch_model(self, device_to=None, patch_weights=True):
        """ldm_patched's order: object patches, then weights found in the state dict."""
        self.put_object_patches()
        state = self.model.state_dict(keep_vars=True)
        for key, entries in self.patches.items():
            if key not in state:
                print("could not patch. key doesn't exist in model:", key)
                continue
            weight = state[key]
            self.backup.setdefault(key, weight)
            set_attr_raw(self.model, key, nn.Parameter(merge_patches(entries, weight), requires_grad=False))
        return self.model

    def unpatch_model(self, device_to=None):
        for key, weight in self.backup.items():
            set_attr_raw(self.model, key, weight)
        self.backup = {}
        self.take_object_patches()

    def load(self):
        self.patch_model()

    def unload(self):
        self.unpatch_model()


class CurrentUnetPatcher(UnetPatcherBase):
    generation = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_patches: dict[tuple, dict] = {}

    def _copy_patches(self, n):
        n.lora_patches = self.lora_patches.copy()

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        """As current Forge: a key is a parameter name or (name, offset[, function]); the
        patches of one parameter are kept in a list under its name."""
        keys = self.model_keys()
        accepted, by_name = set(), {}
        for k, v in patches.items():
            name, offset = (k, None) if isinstance(k, str) else (k[0], k[1])
            if name in keys:
                accepted.add(k)
                by_name.setdefault(name, []).append([strength_patch, v, strength_model, offset, None])
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = by_name
        return accepted

    def load_frozen_patcher(self, filename, state_dict, strength):
        self.add_patches(filename=filename, patches=self._frozen(state_dict), strength_patch=float(strength))

    def refresh_loras(self):
        if not hasattr(self.model, "lora_loader"):
            self.model.lora_loader = LoraLoader(self.model)
        self.model.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)

    def forge_patch_model(self, target_device=None):
        self.put_object_patches()
        return self.model

    def forge_unpatch_model(self, target_device=None):
        self.take_object_patches()

    def load(self):
        """`LoadedModel.model_load`: object patches, then `refresh_loras`."""
        self.forge_patch_model()
        self.refresh_loras()

    def unload(self):
        self.forge_unpatch_model()


class NeoUnetPatcher(UnetPatcherBase):
    """Forge Neo's ComfyUI-style patcher: `add_patches(patches, strength_patch, strength_model, *,
    filename, online_mode)` keeps 6-tuples per parameter name and returns a list; clones share
    the weight and object-patch backups; loading puts the object patches in, then merges each
    patched parameter (`merge_lora_to_weight` on a float copy) or, in online mode, hangs the
    merge on the layer's `weight_function`."""

    generation = 3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.patches: dict[str, list] = {}
        self.backup: dict[str, torch.Tensor] = {}

    def _copy_patches(self, n):
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0, *, filename=None, online_mode=None):
        keys = self.model_keys()
        accepted = []
        for k, v in patches.items():
            name, offset = (k, None) if isinstance(k, str) else (k[0], k[1])
            if name in keys:
                accepted.append(k)
                self.patches.setdefault(name, []).append((strength_patch, v, strength_model, offset, None, online_mode))
        return accepted

    def load_frozen_patcher(self, filename, state_dict, strength):
        self.add_patches(filename=filename, patches=self._frozen(state_dict), strength_patch=float(strength))

    def take_object_patches(self) -> None:
        for k, obj in self.object_patches_backup.items():
            set_attr_raw(self.model, k, obj)
        self.object_patches_backup.clear()  # shared with the clones: cleared, not replaced

    @torch.no_grad()
    def load(self):
        self.put_object_patches()
        for key, entries in self.patches.items():
            parent, child, weight = get_attr_with_parent(self.model, key)
            if any(entry[-1] for entry in entries):
                parent.weight_function = [lambda w, e=entries, k=key: neo_merge(e, w, k)]
                continue
            self.backup.setdefault(key, weight)
            if getattr(weight, "gguf_cls", None) is not None:
                # Neo's patch_weight_to_device merges into `weight.to(dtype)`, the packed data, and
                # sets a plain tensor: the layer then multiplies with the packed bytes (real Neo
                # 2.26, GGUF Flux: "mat1 and mat2 shapes cannot be multiplied (64x3072 and
                # 18x884736)", HTTP 500 on every call until a restart)
                set_attr_raw(self.model, key, nn.Parameter(weight.data.float().clone(), requires_grad=False))
                continue
            merged = neo_merge(entries, weight.detach().float().clone(), key)
            set_attr_raw(self.model, key, nn.Parameter(merged.to(weight.dtype), requires_grad=False))

    def unload(self):
        for key, weight in self.backup.items():
            set_attr_raw(self.model, key, weight)
        self.backup.clear()
        for module in self.model.modules():
            module.__dict__.pop("weight_function", None)
        self.take_object_patches()


class NeoModelPatcher(ModelPatcher):
    """Neo's `ModelPatcher` for the VAE: no VAE regulation; object patches go into the model when
    the patcher is loaded, and the clones share their backup."""

    set_model_vae_regulation = None

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.object_patches_backup: dict[str, Any] = {}

    def clone(self):
        n = NeoModelPatcher(self.model, self.load_device, self.offload_device)
        n.object_patches = self.object_patches.copy()
        n.object_patches_backup = self.object_patches_backup
        return n

    def load(self):
        """`partially_load`: undo every object patch (the backup is shared), put this one's in."""
        for k, obj in self.object_patches_backup.items():
            set_attr_raw(self.model, k, obj)
        self.object_patches_backup.clear()
        for k, obj in self.object_patches.items():
            self.object_patches_backup.setdefault(k, getattr(self.model, k))
            set_attr_raw(self.model, k, obj)


class NeoFirstStage(nn.Module):
    """Neo's `AutoencoderKL` (`first_stage_model`): `encoder`, `quant_conv`, `encode` returning a
    random sample of the posterior, `decode` to [-1, 1], and the latent scaling (and Flux's shift)."""

    def __init__(self, model, family: str):
        super().__init__()
        self.model, self.family = model, family
        self.encoder, self.quant_conv = model.encoder, model.quant_conv

    def encode(self, x):
        z = self.encoder(x)
        if self.quant_conv is not None:
            z = self.quant_conv(z)
        mean, logvar = z.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean + std * torch.randn_like(std)

    def decode(self, z):
        return self.model.decode(z).sample

    def process_in(self, x):
        if self.family == "flux":
            return (x - FLUX_VAE["shift_factor"]) * FLUX_VAE["scaling_factor"]
        return x * SCALING_FACTORS[self.family]

    def process_out(self, x):
        return raw_latents(self.family, x)


class Posterior:
    def __init__(self, dist):
        self.mean, self.std = dist.mean, dist.std

    def sample(self):
        return self.mean + self.std * torch.randn_like(self.std)


class VAE:
    """Forge's VAE object over a tiny diffusers AutoencoderKL: `encode([B,H,W,3] in [0,1])`
    returns raw latents; current Forge lets a regulation replace `posterior.sample()`."""

    def __init__(self, family: str, generation: int, model=None, first_stage=None):
        self.family, self.generation = family, generation
        self.model = model if model is not None else tiny_flux_vae() if family == "flux" else tiny_vae(family)
        if generation == 3:
            self.first_stage_model = first_stage or NeoFirstStage(self.model, family)
            self.patcher = NeoModelPatcher(self.first_stage_model)
        else:
            self.patcher = ModelPatcher(self.model)
        if generation == 2:
            self.first_stage_model = FluxFirstStage(self.model) if family == "flux" else \
                LatentScaling(SCALING_FACTORS[family])
        self.encoded: list[torch.Tensor] = []

    def clone(self):
        n = VAE(self.family, self.generation, self.model, getattr(self, "first_stage_model", None))
        if self.generation == 3:
            n.patcher = self.patcher.clone()
        n.patcher.model_options = copy.deepcopy(self.patcher.model_options)
        n.encoded = self.encoded
        return n

    @torch.no_grad()
    def encode(self, pixels):
        self.encoded.append(pixels)
        x = pixels.movedim(-1, 1).float() * 2.0 - 1.0
        if self.generation == 3:  # Neo: load the patcher (its object patches), then the model's encode
            self.patcher.load()
            return self.first_stage_model.encode(x)
        posterior = Posterior(self.model.encode(x).latent_dist)
        regulation = self.patcher.model_options.get("model_vae_regulation")
        return regulation(posterior) if regulation is not None else posterior.sample()

    @torch.no_grad()
    def decode(self, raw):
        return ((self.model.decode(raw.float()).sample + 1.0) / 2.0).clamp(0, 1).movedim(1, -1)


class SdModel:
    def __init__(self, family: str, generation: int):
        unet_cls = {1: EarlyUnetPatcher, 2: CurrentUnetPatcher, 3: NeoUnetPatcher}[generation]
        self.family = family
        self.is_sdxl, self.is_sd1 = family == "sdxl", family == "sd15"
        self.forge_objects = types.SimpleNamespace(
            # Qwen-Image-2.1's RGBA VAE is never reached (LayerDiffuse refuses before decoding): any VAE stands in
            unet=unet_cls(BaseModel(family, generation), "cpu", "cpu"),
            vae=VAE("sd15" if family == "qwen21" else family, generation), clip=None)
        self.forge_objects_original = types.SimpleNamespace(**vars(self.forge_objects))
        self.forge_objects_after_applying_lora = types.SimpleNamespace(**vars(self.forge_objects))
        self.context_dim = TINY[family].context_dim if family in TINY else 32
        self.encoded_prompts: list[str] = []

    def apply_loras(self, loras: list[tuple[str, dict, float]], online_mode: bool = False):
        """What Forge's LoRA extension does when the prompt's LoRAs change: a clone of the
        original UNet with each `(filename, patches, strength)` added."""
        unet = self.forge_objects_original.unet.clone()
        for filename, patches, strength in loras:
            if unet.generation == 1:
                unet.add_patches(patches, strength)
            elif unet.generation == 3:
                unet.add_patches(neo_form(patches), strength, online_mode=online_mode)
            else:
                unet.add_patches(filename=filename, patches=patches, strength_patch=strength, online_mode=online_mode)
        self.forge_objects_after_applying_lora.unet = unet

    def reset_objects(self):
        """What Forge does before every sampling pass."""
        self.forge_objects = types.SimpleNamespace(**vars(self.forge_objects_after_applying_lora))

    def get_learned_conditioning(self, texts):
        self.encoded_prompts.extend(texts)
        gen = torch.Generator().manual_seed(sum(map(ord, texts[0])))
        c = torch.randn(len(texts), 77, self.context_dim, generator=gen)
        return {"crossattn": c, "vector": torch.zeros(len(texts), 8)} if self.is_sdxl else c


class Sampler:
    """Forge's sampler (modules/sd_samplers_kdiffusion.KDiffusionSampler): `sample` for txt2img,
    `sample_img2img` for img2img and the hires pass, both returning model-space latents. The
    stand-in halves its input and counts its calls."""

    def __init__(self):
        self.calls: list[str] = []

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        self.calls.append("sample")
        return x * 0.5

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        self.calls.append("sample_img2img")
        return x * 0.5 + noise * 0.1


class DecodedSamples(list):
    """What both Forges hand to `post_sample` after a hires pass: images it already decoded."""

    already_decoded = True


@dataclass
class Processing:
    sd_model: SdModel
    batch_size: int = 1
    n_iter: int = 1
    width: int = 64
    height: int = 64
    prompt: str = "a glass cup"
    prompts: list = field(default_factory=lambda: ["a glass cup"])
    negative_prompts: list = field(default_factory=lambda: [""])
    seeds: list = field(default_factory=lambda: [1])
    subseeds: list = field(default_factory=lambda: [1])
    extra_generation_params: dict = field(default_factory=dict)
    extra_result_images: list = field(default_factory=list)
    comments: dict = field(default_factory=dict)
    batch_index: int = 0
    iteration: int = 0
    init_images: Optional[list] = None
    resize_mode: int = 0
    outpath_samples: str = ""
    saved: bool = False
    sampler: Optional[Sampler] = None
    is_hr_pass: bool = False

    def comment(self, text):
        self.comments[text] = 1

    def save_samples(self):
        return self.saved


def _module(name: str, **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


class Memory:
    """`model_management` / `memory_management`: a CPU "GPU" that records loads."""

    def __init__(self):
        self.loaded: list = []
        self.prepared: list = []
        self.current_unets: list = []

    def module(self, name: str) -> types.ModuleType:
        return _module(name, get_torch_device=lambda: torch.device("cpu"), should_use_fp16=lambda device=None: False,
                       unet_offload_device=lambda: torch.device("cpu"), load_model_gpu=self.loaded.append)

    def sampling_prepare(self, unet, x):
        self.prepared.append(unet)
        self.load_unet(unet)

    def load_unet(self, unet) -> None:
        """`load_models_gpu([unet])`: nothing when this patcher is loaded already; otherwise
        its loaded clones are unloaded (their patches undone), then it is patched."""
        if any(u is unet for u in self.current_unets):
            return
        for other in [u for u in self.current_unets if unet.is_clone(u)]:
            other.unload()
            self.current_unets.remove(other)
        unet.load()
        self.current_unets.append(unet)


def forge_modules(generation: int, memory: Memory) -> dict[str, types.ModuleType]:
    """The host module tree of one Forge generation, for `sys.modules`."""
    if generation == 1:
        mods = {
            "ldm_patched": _module("ldm_patched"), "ldm_patched.modules": _module("ldm_patched.modules"),
            "ldm_patched.modules.model_patcher": _module("ldm_patched.modules.model_patcher", ModelPatcher=ModelPatcher),
            "ldm_patched.modules.model_management": memory.module("ldm_patched.modules.model_management"),
            "modules_forge": _module("modules_forge"),
            "modules_forge.unet_patcher": _module("modules_forge.unet_patcher", UnetPatcher=EarlyUnetPatcher),
            "modules_forge.forge_sampler": _module("modules_forge.forge_sampler",
                                                   sampling_prepare=memory.sampling_prepare),
        }
    elif generation == 3:
        mods = {
            "backend": _module("backend"), "backend.patcher": _module("backend.patcher"),
            "backend.patcher.unet": _module("backend.patcher.unet", UnetPatcher=NeoUnetPatcher),
            "backend.patcher.base": _module("backend.patcher.base", ModelPatcher=NeoModelPatcher),
            "backend.patcher.lora": _module("backend.patcher.lora", merge_lora_to_weight=neo_merge,
                                            weight_adapter=_module("weight_adapter", LoRAAdapter=LoRAAdapter)),
            "backend.quant_ops": _module("backend.quant_ops", QuantizedTensor=QuantizedTensor),
            "backend.operations_gguf": _module("backend.operations_gguf", dequantize_tensor=neo_dequantize),
            "backend.memory_management": memory.module("backend.memory_management"),
            "backend.operations": _module("backend.operations", get_weight_and_bias=neo_get_weight_and_bias),
            "backend.sampling": _module("backend.sampling"),
            "backend.sampling.sampling_function": _module("backend.sampling.sampling_function",
                                                          sampling_prepare=memory.sampling_prepare),
            "backend.sampling.condition": _module("backend.sampling.condition", Condition=Condition),
            "modules_forge": _module("modules_forge"),
            "modules_forge.forge_version": _module("modules_forge.forge_version", version="neo", release="2.26"),
        }
    else:
        mods = {
            "backend": _module("backend"), "backend.patcher": _module("backend.patcher"),
            "backend.patcher.unet": _module("backend.patcher.unet", UnetPatcher=CurrentUnetPatcher),
            "backend.patcher.base": _module("backend.patcher.base", ModelPatcher=ModelPatcher),
            "backend.memory_management": memory.module("backend.memory_management"),
            "backend.operations": _module("backend.operations", get_weight_and_bias=get_weight_and_bias),
            "backend.sampling": _module("backend.sampling"),
            "backend.sampling.sampling_function": _module("backend.sampling.sampling_function",
                                                          sampling_prepare=memory.sampling_prepare),
        }
    return mods


class Condition:
    """backend.sampling.condition.Condition (Neo): a model input to be batched (`cond`)."""

    def __init__(self, cond):
        self.cond = cond


def neo_concat_inputs(unet, x: torch.Tensor, cond: list, uncond: Optional[list] = None) -> tuple:
    """What Neo's sampling function hands the model for a non-inpainting checkpoint: it leaves
    `extra_concat_condition` out (it attaches it only when `is_inpaint`), then runs the
    conditioning modifiers in order. Returns (cond, uncond) after them."""
    model, timestep = "patched", torch.tensor([SIGMA_MAX])
    for modifier in unet.model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, _, _, _ = modifier(model, x, timestep, uncond, cond, 7.0, {}, 1)
    return cond, uncond


HOST_ROOTS = ("ldm_patched", "modules_forge", "backend", "modules")


def install(monkeypatch, modules: dict[str, types.ModuleType]) -> None:
    """Put a module tree into sys.modules (undone by monkeypatch), after hiding any real one."""
    for name in list(sys.modules):
        if name.split(".")[0] in HOST_ROOTS:
            monkeypatch.delitem(sys.modules, name)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
        if "." in name:
            parent, child = name.rsplit(".", 1)
            if parent in modules:
                setattr(modules[parent], child, module)


class Component:
    """A gradio component as far as the extension uses it (gradio 3 spelling)."""

    def __init__(self, value=None, **kwargs):
        self.value = value
        self.kwargs = kwargs
        self.visible = kwargs.get("visible", True)
        self.events: list = []
        Component.created.append(self)

    def change(self, fn, inputs=None, outputs=None, **kwargs):
        self.events.append((fn, inputs, outputs, kwargs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Component.created = []


class InputAccordion(Component):
    """modules.ui_components.InputAccordion: a checkbox shown as an accordion (`value` first)."""

    def __init__(self, value, **kwargs):
        super().__init__(value, **kwargs)


def fake_gradio() -> types.ModuleType:
    names = ("Blocks", "Accordion", "Row", "Column", "Group", "Checkbox", "Dropdown", "Slider", "Radio",
             "Textbox", "Image", "Markdown", "HTML", "ColorPicker")
    gr = _module("gradio", __version__="3.41.2", update=lambda **kw: {"__type__": "update", **kw})
    for name in names:
        setattr(gr, name, type(name, (Component,), {}))
    return gr


@dataclass
class ImageSaveParams:
    image: Any
    p: Any
    filename: str
    pnginfo: dict


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs, self.cols, self.rows = imgs, cols, rows


def stealth_write(params: ImageSaveParams, mode: str) -> None:
    """Current Forge's stealth-infotext writer as it treats pixels: "Alpha" sets the alpha of
    the image object to 255, then both modes write bits into the lowest bit of the first pixels
    (column by column); "RGB" unpacks three values per pixel, so an RGBA image raises."""
    bits = "".join(f"{byte:08b}" for byte in ("stealth_" + params.pnginfo["parameters"]).encode())[:96]
    if mode == "Alpha":
        params.image.putalpha(255)
    pixels = params.image.load()
    width, height = params.image.size
    index = 0
    for x in range(width):
        for y in range(height):
            if index >= len(bits):
                return
            if mode == "Alpha":
                r, g, b, a = pixels[x, y]
                pixels[x, y] = (r, g, b, (a & ~1) | int(bits[index]))
                index += 1
            else:
                r, g, b = pixels[x, y]
                pixels[x, y] = (r & ~1) | int(bits[index]), g, b
                index += 3


def webui_modules(opts: Any, saved: list, generation: int = 2) -> dict[str, types.ModuleType]:
    """`modules.*` of the WebUI as far as the script file and the saving code use them (early
    Forge's resize_image has no force_RGBA; only current Forge's transparent img2img passes it).

    `save_image` follows Forge's order: the stealth-infotext writer (current Forge, when PNG
    info is on), then the `before_image_saved` callbacks, then the file is written: `saved`
    records the object and a copy of what went into the file (RGB for JPEG and WebP).
    `image_grid` calls the `image_grid` callbacks, then composes like the host (current Forge RGBA on the grid colour,
    early Forge RGB on black)."""
    class Script:
        def elem_id(self, item_id):
            return f"script_layerdiffuse_{item_id}"

    callbacks: list = []
    grid_callbacks: list = []

    def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, p=None, suffix="",
                   grid=False, forced_filename=None, pnginfo_section_name="parameters", existing_info=None, **kw):
        filename = f"{path}/{forced_filename or f'{basename or seed}{suffix}'}.{extension}"
        pnginfo = dict(existing_info or {})
        if info is not None:
            pnginfo[pnginfo_section_name] = info
        params = ImageSaveParams(image, p, filename, pnginfo)
        if generation == 2 and opts.enable_pnginfo and filename.endswith(".png") and "parameters" in params.pnginfo:
            mode = opts.data.get("stealth_pnginfo_option", "Alpha")
            if mode and mode != "None":
                stealth_write(params, mode)
        for callback in callbacks:
            callback(params)
        # what goes into the file: Forge's writer drops the alpha for JPEG and WebP
        file = params.image.convert("RGB") if extension in ("jpg", "jpeg", "webp") else params.image.copy()
        saved.append(dict(image=params.image, file=file, extension=extension, info=info,
                          suffix=suffix, grid=grid, filename=filename, pnginfo=dict(params.pnginfo)))
        image.already_saved_as = filename
        return filename, None

    def image_grid(imgs, batch_size=1, rows=None):
        rows = rows or batch_size
        cols = -(-len(imgs) // rows)
        params = ImageGridLoopParams(imgs, cols, rows)
        for callback in grid_callbacks:
            callback(params)
        w, h = map(max, zip(*(i.size for i in params.imgs)))
        if generation >= 2:  # current Forge and Neo
            grid = Image.new("RGBA", (params.cols * w, params.rows * h), opts.grid_background_color)
        else:
            grid = Image.new("RGB", (params.cols * w, params.rows * h), "black")
        for i, img in enumerate(params.imgs):
            grid.paste(img, (i % params.cols * w + (w - img.width) // 2, i // params.cols * h + (h - img.height) // 2))
        return grid

    def draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin=0):
        """The X/Y/Z plot's labels in Forge's layout: an RGB canvas in the grid colour, labels
        left (a 3/4-cell-wide column) and on top, `margin` between the cells (texts are boxes)."""
        cols, rows = im.width // width, im.height // height
        pad_left = width * 3 // 4 if any(ver_texts) else 0
        pad_top = height // 5 if any(hor_texts) else 0
        size = (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1))
        result = Image.new("RGB", size, opts.grid_background_color)
        for row in range(rows):
            for col in range(cols):
                cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
                result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
        draw = ImageDraw.Draw(result)
        for col in range(cols if pad_top else 0):
            x = pad_left + (width + margin) * col
            draw.rectangle((x + 2, 2, x + width // 2, pad_top - 2), fill=(0, 0, 0))
        for row in range(rows if pad_left else 0):
            y = pad_top + (height + margin) * row
            draw.rectangle((2, y + 2, pad_left - 2, y + height // 3), fill=(0, 0, 0))
        return result

    def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
        return im.resize((width, height))

    def early_resize_image(resize_mode, im, width, height, upscaler_name=None):
        return im.resize((width, height))

    def add_option(key, info):
        opts.data_labels[key] = info
        opts.data.setdefault(key, info.default)

    if opts is not None:
        if not hasattr(opts, "data"):
            opts.data = {}
        opts.data_labels, opts.add_option = {}, add_option
    state = State()
    postproc = _module("modules.scripts_postprocessing", ScriptPostprocessing=ScriptPostprocessing,
                       PostprocessedImage=PostprocessedImage)
    runner = PostprocessingRunner(state)
    shared = _module("modules.shared", opts=opts, cmd_opts=types.SimpleNamespace(api=True), state=state,
                     OptionInfo=OptionInfo)
    images = _module("modules.images", save_image=save_image, image_grid=image_grid,
                     draw_grid_annotations=draw_grid_annotations,
                     resize_image=resize_image if generation >= 2 else early_resize_image)
    registered = {name: [] for name in ("ui_settings", "app_started", "after_component")}
    return {
        "modules": _module("modules"),
        "modules.scripts": _module("modules.scripts", Script=Script, AlwaysVisible=object(), scripts_postproc=runner),
        "modules.scripts_postprocessing": postproc,
        "modules.script_callbacks": _module("modules.script_callbacks", before_image_saved=callbacks,
                                            on_before_image_saved=callbacks.append, image_grid=grid_callbacks,
                                            on_image_grid=grid_callbacks.append, registered=registered,
                                            **{f"on_{name}": registered[name].append for name in registered}),
        "modules.shared": shared,
        "modules.images": images,
        "modules.processing": _module("modules.processing",
                                      create_infotext=lambda p, *a, index=0, **kw: f"{p.prompts[index]}, Seed: {p.seeds[index]}"),
        "modules.ui_components": _module("modules.ui_components", InputAccordion=InputAccordion),
        "modules.call_queue": _module("modules.call_queue", queue_lock=threading.Lock()),
        "modules.postprocessing": _module("modules.postprocessing",
                                          run_postprocessing=postprocessing_run(opts, state, runner, images,
                                                                                generation)),
        "modules.sd_models": _module("modules.sd_models", model_data=types.SimpleNamespace(sd_model=None),
                                     checkpoints={}, get_closet_checkpoint_match=lambda title: None),
    }


class OptionInfo:
    """modules.shared.OptionInfo (the same signature in the three hosts)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                 section=None, refresh=None, comment_before="", comment_after="", infotext=None,
                 restrict_api=False, category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.comment_after = section, ""

    def info(self, text):
        self.comment_after += f"<span class='info'>({text})</span>"
        return self


class State:
    """modules.shared.state as Extras drives it."""

    _stamps = itertools.count()

    def __init__(self):
        self.job_timestamp, self.job_count, self.job_no = "0", 0, 0
        self.textinfo, self.skipped, self.interrupted = None, False, False

    def begin(self, job=""):
        self.job_timestamp, self.job_no = f"2026{next(self._stamps):010d}", 0

    def nextjob(self):
        self.job_no += 1


class PostprocessedImage:
    """modules.scripts_postprocessing.PostprocessedImage (fields shared by the three hosts)."""

    def __init__(self, image):
        self.image, self.info, self.extra_images = image, {}, []
        self.nametags, self.disable_processing, self.caption = [], False, None


class ScriptPostprocessing:
    filename = None
    controls = None
    args_from = None
    args_to = None
    order = 1000
    name = None
    group = None

    def ui(self):
        pass

    def process(self, pp, **args):
        pass

    def process_firstpass(self, pp, **args):
        pass

    def image_changed(self):
        pass


class PostprocessingRunner:
    """modules.scripts.scripts_postproc: the scripts' UIs give their argument names (a dict);
    `create_args_for_run` fills the named ones (None for the rest); `run` calls every script's
    `process_firstpass`, then `process` in order, and stops when a script sets `state.skipped`."""

    def __init__(self, state):
        self.state, self.scripts = state, []

    def add(self, script) -> None:
        script.controls = script.ui()
        start = max((s.args_to for s in self.scripts), default=0)
        script.args_from, script.args_to = start, start + len(script.controls)
        self.scripts.append(script)

    def scripts_in_preferred_order(self):
        return sorted(self.scripts, key=lambda s: (s.order, s.name))

    def create_args_for_run(self, scripts_args):
        args = [None] * max((s.args_to for s in self.scripts), default=0)
        for script in self.scripts:
            values = scripts_args.get(script.name)
            if values is not None:
                for i, name in enumerate(script.controls):
                    args[script.args_from + i] = values.get(name)
        return args

    def run(self, pp, args):
        scripts = self.scripts_in_preferred_order()
        named = [(s, dict(zip(s.controls, args[s.args_from:s.args_to]))) for s in scripts]
        for script, values in named:
            script.process_firstpass(pp, **values)
        for script, values in named:
            if self.state.skipped:
                break
            script.process(pp, **values)


class UpscaleScript(ScriptPostprocessing):
    """The built-in Upscale of current Forge as far as a run without upscaling goes: its first
    pass computes a target size from `upscale_by` even when it is switched off (None raises)."""

    name, order = "Upscale", 1000

    def ui(self):
        return {"upscale_enabled": Component(True), "upscale_mode": Component(0), "upscale_by": Component(2.0),
                "max_side_length": Component(0), "upscaler_1_name": Component("None")}

    def process_firstpass(self, pp, upscale_enabled=True, upscale_mode=1, upscale_by=2.0, max_side_length=0,
                          upscaler_1_name=None):
        pp.target = (int(pp.image.width * upscale_by), int(pp.image.height * upscale_by))

    def process(self, pp, upscale_enabled=True, upscale_mode=1, upscale_by=2.0, max_side_length=0,
                upscaler_1_name=None):
        if upscale_enabled and upscaler_1_name not in (None, "None"):
            pp.image = pp.image.resize(pp.target)


def postprocessing_run(opts, state, runner, images, generation: int):
    """modules.postprocessing.run_postprocessing, batch from a directory as the hosts run it:
    unreadable files are skipped, early Forge hands the scripts RGB, current Forge and Neo RGB or
    RGBA; an image a script skipped is not saved; saved with the section "extras" (early Forge)
    or "postprocessing" and the source's own PNG text. Neo's signature has a video path before
    the scripts' arguments."""

    def run(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args,
            save_output=True):
        if generation == 3:
            args = args[1:]
        assert extras_mode == 2, "the fake runs batch from directory only"
        files = sorted(p for p in Path(input_dir).iterdir() if p.is_file())
        state.begin(job="extras")
        state.job_count = len(files)
        outputs = []
        for path in files:
            state.nextjob()
            state.textinfo, state.skipped = path.name, False
            try:
                source = Image.open(path)
                source.load()
            except Exception:
                continue
            existing = {k: v for k, v in source.info.items() if isinstance(v, str)}
            start = source.convert("RGB") if generation == 1 or source.mode not in ("RGB", "RGBA") else source
            pp = PostprocessedImage(start)
            runner.run(pp, list(args))
            if state.skipped:
                continue
            infotext = ", ".join(f"{k}: {v}" for k, v in pp.info.items())
            images.save_image(pp.image, path=output_dir, basename="", extension=opts.samples_format, info=infotext,
                              pnginfo_section_name="extras" if generation == 1 else "postprocessing",
                              existing_info=existing, forced_filename=path.stem)
            outputs.append(pp.image)
        return outputs, infotext if outputs else "", ""

    if generation == 3:
        def neo_run(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, _, *args,
                    save_output=True):
            return run(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, _, *args,
                       save_output=save_output)
        return neo_run
    return run
