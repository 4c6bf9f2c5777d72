"""Forge glue (adapters for early `ldm_patched` Forge and current `backend` Forge).

Only this package may import Forge modules, and only inside functions.
"""
