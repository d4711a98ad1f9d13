"""Kept where registered models look for it: every logged pyfunc model's `serving_model.py` (models from code)
runs `from dmat.tracking.serving import DiffusionSampler`, so models registered before the sub-packages still load."""

from dmat.tracking.serving import DiffusionSampler

__all__ = ["DiffusionSampler"]
