"""One UNet family for the teacher and every student.

`size_factor` scales every width of the teacher's architecture; 1.0 is the teacher. Widths are
rounded to even numbers with a floor, so 0.01 still builds a working network, which is exactly why
the real parameter count (`num_parameters`) is reported rather than assumed to be size_factor**2.
The network knows nothing about noise schedules: it maps (x_t, t) to the prediction target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmat.errors import DmatError

MIN_WIDTH = 4


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 16
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4,)
    dropout: float = 0.1
    size_factor: float = 1.0

    def width(self, channels: int) -> int:
        return max(MIN_WIDTH, 2 * round(channels * self.size_factor / 2))

    def validate(self) -> "UNetConfig":
        if not 0.01 <= self.size_factor <= 1.0:
            raise DmatError(f"size factor must be between 0.01 and 1.0, got {self.size_factor}")
        if self.base_channels < 1 or self.num_res_blocks < 1:
            raise DmatError(f"base-channels and num-res-blocks must be positive integers, got {self.base_channels} "
                            f"and {self.num_res_blocks}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise DmatError(f"channel-mults must be positive integers, e.g. 1,2,2, got {self.channel_mults}")
        if not 0.0 <= self.dropout < 1.0:
            raise DmatError(f"dropout must be in [0, 1), got {self.dropout}")
        downsamples = len(self.channel_mults) - 1
        if self.image_size <= 0 or self.image_size % (2**downsamples):
            raise DmatError(
                f"image size {self.image_size} cannot be halved {downsamples} times by the UNet: "
                f"use a multiple of {2**downsamples} (e.g. 16, 28 or 32)"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        for key in ("channel_mults", "attention_resolutions"):
            d[key] = tuple(d[key])
        return cls(**d)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al.; as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask on a CPU comes from `torch.rand(...) >= p` rather than `bernoulli_`: the same
    Bernoulli(1 - p) mask per element (to float32's 2^-24) at half the cost. On this CPU bernoulli_ took 14%
    of a bf16 training step (bench/bench_unet.py). Elsewhere, and in eval mode, it is `nn.Dropout` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape) >= self.p
        return x * keep * (1 / (1 - self.p))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """Residual blocks, each followed by attention where the resolution asks for it."""

    def __init__(self, io_channels: list[tuple[int, int]], emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(cin, cout, emb_dim, dropout) for cin, cout in io_channels)
        self.attn = nn.ModuleList(SelfAttention(cout) if attention else nn.Identity() for _, cout in io_channels)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config.validate()
        w = [config.width(config.base_channels * m) for m in config.channel_mults]
        self.time_dim, emb_dim = w[0], 4 * w[0]
        self.time_mlp = nn.Sequential(nn.Linear(w[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(config.in_channels, w[0], 3, padding=1)

        res = config.image_size
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [w[0]], w[0]
        for i, width in enumerate(w):
            attn = res in config.attention_resolutions
            io = [(ch if j == 0 else width, width) for j in range(config.num_res_blocks)]
            self.down.append(Level(io, emb_dim, config.dropout, attn))
            ch = width
            skips += [width] * config.num_res_blocks
            last = i == len(w) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
                res //= 2

        self.mid1 = ResBlock(ch, ch, emb_dim, config.dropout)
        self.mid_attn = SelfAttention(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, config.dropout)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(w))):
            attn = res in config.attention_resolutions
            io = []
            for _ in range(config.num_res_blocks + 1):
                io.append((ch + skips.pop(), width))
                ch = width
            self.up.append(Level(io, emb_dim, config.dropout, attn))
            self.upsample.append(
                nn.Identity() if i == 0 else nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1))
            )
            if i > 0:
                res *= 2
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, config.in_channels, 3, padding=1))
        self.feature_channels = [w[-1]] + [w[i] for i in reversed(range(len(w)))]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor, return_features: bool = False):
        """Predict the target (eps or v, see `DiffusionConfig.prediction`) for noisy images.

        x: (B, in_channels, image_size, image_size), the noisy images x_t, in about [-1, 1] at t=0.
        t: (B,) integer timesteps in [0, T).
        Returns (B, in_channels, image_size, image_size). With `return_features`, also a list of
        (B, C_i, H_i, W_i) maps: the middle block's output, then each decoder level's output from the
        coarsest to the finest (C_i = `feature_channels[i]`), for feature-level distillation.
        """
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))
        h = self.stem(x)
        hs = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(h, emb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        features = [h]
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            features.append(h)
            h = up(h)
        out = self.out(h)
        return (out, features) if return_features else out
