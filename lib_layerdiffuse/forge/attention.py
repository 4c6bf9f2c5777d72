"""SD1.5 attention sharing inside Forge: a stand-in for each of the 32 attention modules.

Forge swaps modules in through `add_object_patch`; the stand-in takes the LDM attention
signature, reads Forge's per-sample `cond_mark` (0 = positive prompt) from
`transformer_options`, and computes the same thing as the diffusers processor. The original
module and the sharing weights are held outside the module tree so the UNet's parameter names
stay the same (user LoRAs still find their keys) and Forge loads the weights on its own.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..engine.sharing import SharingLayer, SharingProcessor, SharingState


class SharedAttention(nn.Module):
    def __init__(self, original: nn.Module, layer: SharingLayer, state: SharingState):
        super().__init__()
        self._held = (original, layer)
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
            self._processor = SharingProcessor(self.original, layer, self.state, fallback=None)
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
