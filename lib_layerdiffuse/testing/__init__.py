"""Builders for tests and benchmarks: tiny models, real-size layouts on the meta device,
LayerDiffuse weight files in the official formats, and a loopback-only network guard.

Nothing here downloads anything; importing it needs torch, diffusers and safetensors only.
"""
