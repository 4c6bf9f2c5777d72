"""SD1.5 attention sharing inside Forge: a stand-in for each of the 32 attention modules.

Forge swaps modules in through `add_object_patch`; the stand-in takes the LDM attention
signature, reads Forge's per-sample `cond_mark` (0 = positive prompt) from
`transformer_options`, and computes the same thing as the diffusers processor.

Forge applies object patches first and user LoRAs after, by parameter path
(`...attn1.to_q.weight`): current Forge's LoRA loader restores and merges weights with
`set_attr_raw` on that path, early Forge looks the path up in the state dict. So the stand-in
carries the original's own projection modules under their own names: every parameter path of
the UNet is the same while LayerDiffuse is active, and a LoRA merged into `to_q.weight` lands in
the very module the original (and the sharing processor, built at the first call, after Forge
has merged the LoRAs) reads. The original module and the sharing weights themselves are held
outside the module tree, so no path is added and Forge loads the sharing weights on its own.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..engine.sharing import SharingLayer, SharingProcessor, SharingState, WeightsOf


class SharedAttention(nn.Module):
    def __init__(self, original: nn.Module, layer: SharingLayer, state: SharingState,
                 weights_of: Optional[WeightsOf] = None):
        super().__init__()
        own = [name for name, _ in original.named_parameters(recurse=False)]
        if own:
            raise ValueError(f"{type(original).__name__} holds parameters of its own ({', '.join(own)}) that "
                             "attention sharing could not keep under their names; this UNet is not supported")
        for name, child in original.named_children():
            self.add_module(name, child)  # the same modules: one path each, shared with the original
        self._held = (original, layer)
        self._weights_of = weights_of
        self.state = state
        self._processor: Optional[SharingProcessor] = None
        self._key: Optional[tuple] = None

    @property
    def original(self) -> nn.Module:
        return self._held[0]

    def _processor_for(self, x: torch.Tensor) -> SharingProcessor:
        """Projections merged where the UNet runs now, in its compute dtype (Forge moves models
        between devices, and in low-VRAM modes keeps weights elsewhere than the activations)."""
        key = (x.device, x.dtype)
        if self._key != key:
            layer = self._held[1]
            probe = next(layer.parameters())
            if (probe.device, probe.dtype) != key:
                layer.to(*key)
            self._processor = SharingProcessor(self.original, layer, self.state, fallback=None,
                                               weights_of=self._weights_of)
            self._key = key
        return self._processor

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, value=None, mask=None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        if not self.state.active:
            return self.original(x, context=context, value=value, mask=mask, transformer_options=options)
        if mask is not None:
            raise ValueError("attention masks are not supported together with SD1.5 attention sharing")
        cond_mark = options.get("cond_mark")

        def positive(n: int, device: torch.device) -> torch.Tensor:
            if cond_mark is None:
                raise RuntimeError("this Forge does not pass transformer_options to attention modules, "
                                   "which per-layer prompts need; update Forge (2024-03-08 or later)")
            return cond_mark.to(device).flatten()[:n] == 0

        return self._processor_for(x).shared_attention(self.original, x, context, positive)


def unwrap(module: nn.Module) -> nn.Module:
    """The UNet's own attention module, also when a previous generation's stand-in is still
    patched into the model (Forge restores object patches only when it unloads a clone)."""
    while isinstance(module, SharedAttention):
        module = module.original
    return module
