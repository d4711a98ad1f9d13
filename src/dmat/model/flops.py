"""What a model is, measured rather than assumed: the FLOPs of one forward pass.

Training logs it when a run starts and evaluation reports it, so it lives apart from both.
(The parameter count is `UNet.num_parameters`.)
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from dmat.model.unet import UNet


def flops_per_forward(model: UNet) -> int:
    """FLOPs of one forward pass on one image at the model's own resolution (torch's flop counter)."""
    c = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops()
