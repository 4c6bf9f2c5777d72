"""SD1.5 attention sharing as published, one step at a time (the yardstick for both the
diffusers processors and the Forge attention modules)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_attention(q, k, v, heads):
    b, n, c = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, c // heads).permute(0, 2, 1, 3)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    return (w @ split(v)).permute(0, 2, 1, 3).reshape(b, n, c)


def published_unit(attn, layer, frames, h, context, cond_mark, overwrites, control):
    """The algorithm as published, one step at a time: per-call LoRA merge, cond_mark mixing."""
    n, d, c = h.shape
    b = n // frames
    x = h.reshape(b, frames, d, c).permute(1, 0, 2, 3)
    if control is not None:
        x = x + torch.stack([layer.control_convs[f](control).flatten(2).transpose(1, 2) for f in range(frames)])
    framed = x if context is None else context.reshape(b, frames, *context.shape[1:]).permute(1, 0, 2, 3)
    mark = cond_mark.reshape(b, frames).T
    outs = []
    for f in range(frames):
        ctx = framed[f]
        if context is not None and overwrites[f] is not None:
            m = mark[f][:, None, None]
            ctx = overwrites[f] * (1.0 - m) + ctx * m

        def project(lora, proj, inp):
            pair = getattr(layer, lora)[f]
            lin = attn.get_submodule(proj)
            return F.linear(inp, lin.weight + pair.up.weight @ pair.down.weight, lin.bias)

        o = naive_attention(project("to_q_lora", "to_q", x[f]), project("to_k_lora", "to_k", ctx),
                            project("to_v_lora", "to_v", ctx), attn.heads)
        outs.append(project("to_out_lora", "to_out.0", o))
    x = (x + torch.stack(outs)).permute(1, 0, 2, 3).reshape(n, d, c)
    t = layer.temporal_i(layer.temporal_n(x))
    t = t.reshape(b, frames, d, c).permute(0, 2, 1, 3).reshape(b * d, frames, c)
    t = naive_attention(layer.temporal_q(t), layer.temporal_k(t), layer.temporal_v(t), attn.heads)
    t = layer.temporal_o(t).reshape(b, d, frames, c).permute(0, 2, 1, 3).reshape(n, d, c)
    return x + t - h
