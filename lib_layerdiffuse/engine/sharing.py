"""SD1.5 attention sharing (the layer_sd15_* files) as diffusers attention processors.

The files hold, for each of the 32 attention modules of SD1.5, one rank-256 LoRA per frame
on q/k/v/out, a cross-frame ("temporal") attention, and for the conditional models control
convolutions fed by a small image encoder. Each processor works on a batch of interleaved
frames (sample index = b * frames + f): per-frame attention with the merged projections, the
frame's own text context on the positive branch only, then attention of every token across
the frames, added residually. The per-frame projections are merged once per generation and the
control features computed once per generation, not at every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..methods import Family
from ..patches.names import ldm_to_diffusers
from ..unet_blocks import attention_modules
from ..vae.frontends import load_strict
from ..weights.errors import WeightFormatError

PROJECTIONS = (("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"), ("to_out_lora", "to_out.0"))

# A linear layer's weight and bias as its forward would use them (hosts may keep weights
# quantised, scaled or with LoRAs applied on the fly)
WeightsOf = Callable[[nn.Module], tuple[torch.Tensor, Optional[torch.Tensor]]]


def stored_weights(linear: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    return linear.weight, linear.bias


class LoRAPair(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)


class SharingLayer(nn.Module):
    """The weights for one attention module (`hookers.layers.{i}` in the files)."""

    def __init__(self, attn: nn.Module, frames: int, rank: int, control_width: Optional[int]):
        super().__init__()
        for name, proj in PROJECTIONS:
            lin = attn.get_submodule(proj)
            setattr(self, name, nn.ModuleList(LoRAPair(lin.in_features, lin.out_features, rank)
                                              for _ in range(frames)))
        hidden = attn.to_k.out_features
        for name in ("temporal_i", "temporal_q", "temporal_k", "temporal_v", "temporal_o"):
            setattr(self, name, nn.Linear(hidden, hidden))
        self.temporal_n = nn.LayerNorm(hidden, eps=1e-6)
        self.control_convs = None
        if control_width:
            self.control_convs = nn.ModuleList(nn.Sequential(
                nn.Conv2d(control_width, control_width, 3, padding=1), nn.SiLU(),
                nn.Conv2d(control_width, hidden, 1)) for _ in range(frames))


class ControlEncoder(nn.Module):
    """`kwargs_encoder`: image in [-1, 1] -> feature maps at /8, /16, /32, /64, keyed by h*w."""

    def __init__(self, width: int = 256):
        super().__init__()
        stem = [3, 32, 32, 64, 64, 128, 128, width, width]
        strides = [1, 1, 2, 1, 2, 1, 2, 1]
        layers: list[nn.Module] = []
        for cin, cout, s in zip(stem[:-1], stem[1:], strides):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=s), nn.SiLU()]
        self.blocks_0 = nn.Sequential(*layers)
        for i in (1, 2, 3):
            setattr(self, f"blocks_{i}", nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.SiLU()))

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        out, h = {}, image
        for i in range(4):
            h = getattr(self, f"blocks_{i}")(h)
            out[h.shape[2] * h.shape[3]] = h
        return out


class _Layers(nn.Module):
    def __init__(self, layers: list[SharingLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


def sharing_module_names(family: Family = Family.SD15) -> list[str]:
    """Diffusers names of the attention modules, in the order of the files' layer index."""
    return [ldm_to_diffusers(name, family) for name in attention_modules(family)]


class AttentionSharingWeights(nn.Module):
    """The state dict of a layer_sd15_* file, shaped after the UNet it is used with."""

    def __init__(self, unet: Optional[nn.Module], frames: int, rank: int, control_width: Optional[int],
                 modules: Optional[Sequence[nn.Module]] = None):
        super().__init__()
        self.frames = frames
        if modules is None:
            modules = [unet.get_submodule(n) for n in sharing_module_names()]
        self.hookers = _Layers([SharingLayer(m, frames, rank, control_width) for m in modules])
        self.kwargs_encoder = ControlEncoder(control_width) if control_width else None

    @property
    def uses_control(self) -> bool:
        return self.kwargs_encoder is not None

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], unet: Optional[nn.Module],
                        source: str = "attention-sharing weights",
                        modules: Optional[Sequence[nn.Module]] = None) -> "AttentionSharingWeights":
        """Build the modules the file describes (frames, rank, control) and load it strictly.

        The layers are shaped after the 32 attention modules of a diffusers `unet`, or after
        `modules` given in file order (Forge's LDM UNet)."""
        frames = 0
        while f"hookers.layers.0.to_q_lora.{frames}.down.weight" in state_dict:
            frames += 1
        if not frames:
            raise WeightFormatError(f"{source} is not an SD1.5 attention-sharing file "
                                    "(no 'hookers.layers.0.to_q_lora.0.down.weight')")
        rank = int(state_dict["hookers.layers.0.to_q_lora.0.down.weight"].shape[0])
        ctrl = state_dict.get("kwargs_encoder.blocks_1.0.weight")
        model = cls(unet, frames, rank, int(ctrl.shape[0]) if ctrl is not None else None, modules)
        load_strict(model, state_dict, source)
        return model


@dataclass
class SharingState:
    """What the processors of one generation share."""

    frames: int
    images: int = 0
    active: bool = True
    frame_contexts: list[Optional[torch.Tensor]] = field(default_factory=list)
    control: Optional[dict[int, torch.Tensor]] = None
    calls: int = 0
    encoder: Optional[nn.Module] = None
    control_image: Optional[torch.Tensor] = None

    @torch.no_grad()
    def control_features(self) -> dict[int, torch.Tensor]:
        """The control encoder's feature maps, computed on first use where the encoder is
        (Forge moves it to the GPU only when sampling starts)."""
        if self.control is None:
            if self.encoder is None or self.control_image is None:
                raise ValueError("this SD1.5 method needs a condition image for its control encoder")
            p = next(self.encoder.parameters())
            self.control = self.encoder(self.control_image.to(p.device, p.dtype))
        return self.control

    def positive_mask(self, n: int, device) -> torch.Tensor:
        """Which of the `n` UNet batch entries belong to the positive prompt: the pipelines stack
        [negative, positive] copies of the images under classifier-free guidance."""
        if n == self.images:
            return torch.ones(n, dtype=torch.bool, device=device)
        if n == 2 * self.images:
            return torch.arange(n, device=device) >= self.images
        raise ValueError(f"attention sharing expected a UNet batch of {self.images} or {2 * self.images} "
                         f"images, got {n}")


def _match_tokens(context: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A frame's prompt context with as many tokens as the main prompt's (long prompts come in
    chunks of 77): cut, or padded by repeating its last token."""
    context = context.to(like.device, like.dtype)
    n = like.shape[1]
    if context.shape[1] >= n:
        return context[:, :n]
    return torch.cat([context, context[:, -1:].expand(-1, n - context.shape[1], -1)], dim=1)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """`[..., tokens, c]` as `[..., heads, tokens, c / heads]` (a view)."""
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    out = F.scaled_dot_product_attention(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads))
    return out.transpose(-3, -2).flatten(-2)


def _cross_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention of every token across the frames: `q`, `k`, `v` `[frames, b, tokens, c]`; each
    (image, token, head) attends over the frames' copies of itself. The frame axis becomes the
    sequence axis by a strided view, not a copy."""
    frames, b, d, c = q.shape
    split = lambda t: t.reshape(frames, b * d, heads, -1).permute(1, 2, 0, 3)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.permute(2, 0, 1, 3).reshape(frames, b, d, c)


def _joined(*pairs: tuple[torch.Tensor, Optional[torch.Tensor]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Projections applied to the same input, joined along their outputs (one product)."""
    weight = torch.cat([w for w, _ in pairs])
    if all(b is None for _, b in pairs):
        return weight, None
    return weight, torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs])


class SharingProcessor:
    """Diffusers attention processor for one attention module in attention-sharing mode;
    falls back to the module's own processor once "Stop At" has switched sharing off."""

    def __init__(self, attn: nn.Module, layer: SharingLayer, state: SharingState, fallback,
                 weights_of: Optional[WeightsOf] = None):
        self.layer = layer
        self.state = state
        self.fallback = fallback
        self.heads = attn.heads
        self._merge(attn, weights_of or stored_weights)
        self._merge_temporal()
        self._control: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def _merge(self, attn: nn.Module, weights_of: WeightsOf) -> None:
        """Per frame, the four projections `W + up @ down` (fp32 math), on the device and in the
        dtype of the sharing layer (which is moved to where the UNet runs); q, k and v also
        joined for self-attention, k and v for cross-attention (one product each). `W` and the
        bias are what `weights_of` says the layer's forward uses (with a host's LoRAs)."""
        merged = {}
        for name, proj in PROJECTIONS:
            weight, bias = weights_of(attn.get_submodule(proj))
            per_frame = []
            for pair in getattr(self.layer, name):
                up = pair.up.weight
                w = weight.to(up.device).float() + up.float() @ pair.down.weight.float()
                per_frame.append((w.to(up.dtype), bias.to(up.device, up.dtype) if bias is not None else None))
            merged[proj] = per_frame
        self.q, k, v, self.out = (merged[proj] for _, proj in PROJECTIONS)
        self.kv = [_joined(*p) for p in zip(k, v)]
        self_attention = self.q[0][0].shape[1] == k[0][0].shape[1]
        self.qkv = [_joined(*p) for p in zip(self.q, k, v)] if self_attention else None

    @torch.no_grad()
    def _merge_temporal(self) -> None:
        """The cross-frame attention's input map `i` composed (fp32 math) into the maps that
        follow it. With one frame the softmax is over a single score, whose weight is exactly 1,
        so the whole module is `o(v(i(n(x))))`, one linear map after the norm: q, k and the
        attention are skipped. With more frames, q, k and v are joined into one product that
        also applies `i`."""
        lay = self.layer
        follow = [lay.temporal_v] if self.state.frames == 1 else [lay.temporal_q, lay.temporal_k, lay.temporal_v]
        weight, bias = _joined(*((t.weight.float(), t.bias.float()) for t in follow))
        weight, bias = weight @ lay.temporal_i.weight.float(), weight @ lay.temporal_i.bias.float() + bias
        if self.state.frames == 1:
            out = lay.temporal_o
            weight, bias = out.weight.float() @ weight, out.weight.float() @ bias + out.bias.float()
        dtype = lay.temporal_i.weight.dtype
        self.temporal = (weight.to(dtype), bias.to(dtype))

    def _control_features(self, f: int, tokens: int) -> torch.Tensor:
        key = (f, tokens)
        if key not in self._control:
            signal = self.state.control_features().get(tokens)
            if signal is None:
                raise ValueError(f"no control features for {tokens} tokens; the control image must "
                                 "have the generation size")
            conv = self.layer.control_convs[f]
            out = conv(signal.to(conv[0].weight.device, conv[0].weight.dtype))
            self._control[key] = out.flatten(2).transpose(1, 2)
        return self._control[key]

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, **kwargs) -> torch.Tensor:
        if not self.state.active:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if attention_mask is not None:
            raise ValueError("attention masks are not supported together with SD1.5 attention sharing")
        return self.shared_attention(attn, hidden_states, encoder_hidden_states, self.state.positive_mask)

    def _frame_contexts(self, ctx: torch.Tensor, b: int, n: int,
                        positive_mask: Callable[[int, torch.device], torch.Tensor]) -> torch.Tensor:
        """The text context of every frame `[frames, b, tokens, c]`, with the frames' own prompts
        on the positive branch."""
        frames = self.state.frames
        contexts = ctx.view(b, frames, *ctx.shape[1:]).transpose(0, 1)
        overwrites = self.state.frame_contexts
        if not any(o is not None for o in overwrites):
            return contexts
        positive = positive_mask(n, ctx.device).view(b, frames).transpose(0, 1)
        return torch.stack([
            torch.where(positive[f][:, None, None], _match_tokens(overwrites[f], ctx), contexts[f])
            if f < len(overwrites) and overwrites[f] is not None else contexts[f]
            for f in range(frames)])

    def shared_attention(self, attn: nn.Module, h: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
                         positive_mask: Callable[[int, torch.device], torch.Tensor]) -> torch.Tensor:
        """The attention-sharing output for hidden states `h` `[frames*b, tokens, c]`, returned
        as the change to add to `h` (the transformer block adds it residually).
        `positive_mask(n, device)` tells which batch entries carry the positive prompt."""
        self.state.calls += 1
        frames = self.state.frames
        n, d, c = h.shape
        if n % frames:
            raise ValueError(f"a UNet batch of {n} is not a multiple of {frames} frames")
        b = n // frames
        x = h.view(b, frames, d, c).transpose(0, 1)
        if self.layer.control_convs is not None:
            x = x + torch.stack([self._control_features(f, d) for f in range(frames)]).to(x.dtype)
        x = x.contiguous()  # frame-major: each frame's tokens in one block for its own projections
        contexts = None if encoder_hidden_states is None else \
            self._frame_contexts(encoder_hidden_states, b, n, positive_mask)
        outs = []
        for f in range(frames):
            if contexts is None and self.qkv is not None:
                q, k, v = F.linear(x[f], *self.qkv[f]).chunk(3, dim=-1)
            else:
                q = F.linear(x[f], *self.q[f])
                k, v = F.linear(x[f] if contexts is None else contexts[f], *self.kv[f]).chunk(2, dim=-1)
            outs.append(F.linear(_attention(q, k, v, self.heads), *self.out[f]))
        x = x + attn.to_out[1](torch.stack(outs))
        lay = self.layer
        if frames == 1:
            t = F.linear(lay.temporal_n(x), *self.temporal)
        else:
            tq, tk, tv = F.linear(lay.temporal_n(x), *self.temporal).chunk(3, dim=-1)
            t = lay.temporal_o(_cross_frame_attention(tq, tk, tv, self.heads))
        return (x + t).transpose(0, 1).reshape(n, d, c) - h


@dataclass
class InstalledSharing:
    """Attention sharing installed on a UNet for one generation; `remove()` restores the UNet's
    own processors."""

    unet: nn.Module
    state: SharingState
    originals: dict[str, object]

    def remove(self) -> None:
        for name, processor in self.originals.items():
            self.unet.get_submodule(name).set_processor(processor)
        self.originals = {}


@torch.no_grad()
def install_attention_sharing(unet: nn.Module, weights: AttentionSharingWeights, state: SharingState,
                              control_image: Optional[torch.Tensor] = None) -> InstalledSharing:
    """Move the weights next to the UNet, compute the control features, merge the per-frame
    projections and swap in the processors."""
    p = next(unet.parameters())
    weights.to(p.device, p.dtype)
    if weights.uses_control:
        state.encoder, state.control_image = weights.kwargs_encoder, control_image
        state.control_features()
    originals = {}
    try:
        for name, layer in zip(sharing_module_names(), weights.hookers.layers):
            attn = unet.get_submodule(name)
            originals[name] = attn.processor
            attn.set_processor(SharingProcessor(attn, layer, state, attn.processor))
    except BaseException:
        InstalledSharing(unet, state, originals).remove()
        raise
    return InstalledSharing(unet, state, originals)
