"""Structured channel pruning of a teacher UNet down to a student's widths (the `init=pruned` start).

A student built by `UNet(student_config)` has every width of the teacher scaled down; here its
initial weights are the teacher's, keeping for every channel space the teacher's most important
channels (Diff-Pruning, Fang et al. 2023, prunes a DDPM by structure and fine-tunes it). A channel's
importance sums a per-weight saliency over the weights that produce it: by default the weight's
magnitude |w| (Li et al. 2017, "Pruning Filters for Efficient ConvNets"), or its first-order Taylor
score |w * dL/dw| (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"): the
loss change a first-order expansion predicts when the weight is removed, with the gradient of the
DDPM loss on a few held-out batches (`taylor_saliency`), as Diff-Pruning does. Magnitude ignores what
the network computes with a weight; Taylor keeps what the loss depends on.

A *channel space* is one set of channels that several tensors index the same way: a block's output
is read by the next block, by an attention layer, by a skip concatenation in the decoder, and a
residual addition with an identity skip ties its input and output spaces into one. `channel_map`
walks the UNet in forward order and says, for every parameter, which spaces its output and input
dimensions run over; each space keeps one selection, so the pruned network is consistent.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import ResBlock, SelfAttention, UNet

IMAGE = -1  # the image channels: never pruned
TAYLOR_BATCHES = 4  # held-out batches whose DDPM-loss gradient the Taylor score uses


@dataclass
class ChannelMap:
    """Spaces (id -> width), each parameter's (output spaces, input spaces), and identity ties."""

    widths: list[int] = field(default_factory=list)
    params: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    ties: list[tuple[int, int]] = field(default_factory=list)

    def new(self, width: int) -> int:
        self.widths.append(width)
        return len(self.widths) - 1

    def add(self, name: str, out: list[int], into: list[int] | None = None) -> None:
        self.params[name] = (out, into or [])

    def norm(self, name: str, spaces: list[int]) -> None:
        self.add(f"{name}.weight", spaces)
        self.add(f"{name}.bias", spaces)

    def layer(self, name: str, out: list[int], into: list[int]) -> None:
        """A convolution or linear layer: weight (out, in, ...), bias (out)."""
        self.add(f"{name}.weight", out, into)
        self.add(f"{name}.bias", out)


def _res_block(m: ChannelMap, name: str, block: ResBlock, into: list[int], emb: int) -> int:
    out = m.new(block.conv1.out_channels)
    m.norm(f"{name}.norm1", into)
    m.layer(f"{name}.conv1", [out], into)
    m.layer(f"{name}.emb", [out], [emb])
    m.norm(f"{name}.norm2", [out])
    m.layer(f"{name}.conv2", [out], [out])
    if isinstance(block.skip, nn.Identity):
        m.ties.append((into[0], out))  # x + h: the input and output channels are the same channels
    else:
        m.layer(f"{name}.skip", [out], into)
    return out


def _attention(m: ChannelMap, name: str, attn: nn.Module, space: int) -> None:
    if isinstance(attn, SelfAttention):  # q, k and v all keep the stream's selection, so q.k pairs stay paired
        m.norm(f"{name}.norm", [space])
        m.layer(f"{name}.qkv", [space, space, space], [space])
        m.layer(f"{name}.proj", [space], [space])


def channel_map(model: UNet) -> ChannelMap:
    """Every parameter of `model` with the channel spaces of its dimensions, in forward order."""
    m = ChannelMap()
    sinusoid, emb = m.new(model.time_mlp[0].in_features), m.new(model.time_mlp[0].out_features)
    m.layer("time_mlp.0", [emb], [sinusoid])
    m.layer("time_mlp.2", [emb], [emb])
    stream = m.new(model.stem.out_channels)
    m.layer("stem", [stream], [IMAGE])
    skips = [stream]
    for i, (level, down) in enumerate(zip(model.down, model.downsample)):
        for j, (block, attn) in enumerate(zip(level.blocks, level.attn)):
            stream = _res_block(m, f"down.{i}.blocks.{j}", block, [stream], emb)
            _attention(m, f"down.{i}.attn.{j}", attn, stream)
            skips.append(stream)
        if isinstance(down, nn.Conv2d):
            m.layer(f"downsample.{i}", [new := m.new(down.out_channels)], [stream])
            stream = new
            skips.append(stream)
    stream = _res_block(m, "mid1", model.mid1, [stream], emb)
    _attention(m, "mid_attn", model.mid_attn, stream)
    stream = _res_block(m, "mid2", model.mid2, [stream], emb)
    for i, (level, up) in enumerate(zip(model.up, model.upsample)):
        for j, (block, attn) in enumerate(zip(level.blocks, level.attn)):
            stream = _res_block(m, f"up.{i}.blocks.{j}", block, [stream, skips.pop()], emb)
            _attention(m, f"up.{i}.attn.{j}", attn, stream)
        if isinstance(up, nn.Sequential):
            m.layer(f"upsample.{i}.1", [new := m.new(up[1].out_channels)], [stream])
            stream = new
    m.norm("out.0", [stream])
    m.layer("out.2", [IMAGE], [stream])
    return m


def _groups(n: int, ties: list[tuple[int, int]]) -> list[int]:
    """Union-find: the representative space of every space, after the identity ties."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in ties:
        parent[root(a)] = root(b)
    return [root(a) for a in range(n)]


def taylor_saliency(teacher: UNet, diffusion: GaussianDiffusion, images: Dataset, batch_size: int,
                    batches: int = TAYLOR_BATCHES, seed: int = 0) -> dict[str, torch.Tensor]:
    """|w * dL/dw| for every parameter of `teacher`, dL/dw the gradient of the DDPM loss summed over the first
    `batches` batches of `images` (held-out data: the score should say what generalises, not what was fit),
    at timesteps and noise from a generator seeded with `seed`. The teacher itself is left untouched
    (a copy, in eval mode: no dropout, takes the gradients)."""
    model = copy.deepcopy(teacher).eval().requires_grad_(True)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    for x0 in itertools.islice(DataLoader(images, batch_size=batch_size, shuffle=False), batches):
        diffusion.training_loss(model, x0.to(device), generator).backward()
    return {name: (p.detach() * p.grad).abs() if p.grad is not None else torch.zeros_like(p)
            for name, p in model.named_parameters()}


def _importance(saliency: dict[str, torch.Tensor], m: ChannelMap, group: list[int]) -> dict[int, torch.Tensor]:
    """Per group, the summed saliency of every weight that produces each of its channels (summed over producers);
    a space nothing produces (the timestep sinusoid) is scored by the weights that read it.

    Spaces tied only in the student (where both widths round to the same small number) may differ in
    teacher width: their scores are summed over the channels they all have."""
    produced: dict[int, list[torch.Tensor]] = {}
    read: dict[int, list[torch.Tensor]] = {}
    for name, (out, into) in m.params.items():
        weight = saliency[name]
        if not name.endswith(".weight") or weight.dim() < 2:
            continue
        for spaces, dim, found in ((out, 0, produced), (into, 1, read)):
            if IMAGE in spaces:
                continue
            norms = weight.transpose(0, dim).flatten(1).sum(1).split([m.widths[s] for s in spaces])
            for space, norm in zip(spaces, norms):
                found.setdefault(group[space], []).append(norm)
    scores = {**read, **produced}
    return {g: sum(p[: min(len(q) for q in ps)] for p in ps) for g, ps in scores.items()}


def _index(spaces: list[int], keep: dict[int, torch.Tensor], widths: list[int], group: list[int]) -> torch.Tensor:
    """Indices into a dimension that concatenates `spaces`, keeping each space's selected channels."""
    parts, offset = [], 0
    for space in spaces:
        parts.append(keep[group[space]] + offset)
        offset += widths[space]
    return torch.cat(parts)


def prune_weights(teacher: UNet, student: UNet, saliency: dict[str, torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """The teacher's weights cut down to `student`'s shapes by structured channel pruning.

    Both must be the same architecture at different widths (the student's config is the teacher's
    with a smaller size factor). Every space keeps its most important channels, in their original
    order; a space tied by an identity residual in either network keeps one selection throughout.
    `saliency` scores each teacher weight (`taylor_saliency`); by default its magnitude.
    """
    t_map, s_map = channel_map(teacher), channel_map(student)
    if not set(s_map.params) <= set(t_map.params):  # a skip the student's equal widths make an identity is dropped
        raise ValueError("the student is not the teacher's architecture at other widths")
    group = _groups(len(t_map.widths), t_map.ties + s_map.ties)
    weights = {k: v.detach() for k, v in teacher.state_dict().items()}
    scores = _importance(saliency or {k: v.abs() for k, v in weights.items()}, t_map, group)
    keep = {}
    for space, g in enumerate(group):
        if g not in keep:
            keep[g] = scores[g].topk(s_map.widths[space]).indices.sort().values
    pruned = {}
    for name in s_map.params:
        out, into = t_map.params[name]
        value = weights[name]
        if IMAGE not in out:
            value = value.index_select(0, _index(out, keep, t_map.widths, group))
        if into and IMAGE not in into:
            value = value.index_select(1, _index(into, keep, t_map.widths, group))
        pruned[name] = value.clone()
    return pruned
