"""dmat: how does model size change the quality, cost and behaviour of a diffusion model?"""

__version__ = "0.1.0"
