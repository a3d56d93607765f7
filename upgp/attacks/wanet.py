"""WaNet (Nguyen & Tran 2021): an imperceptible smooth warp of the image as the trigger.

A random k x k flow field (normalised by its mean absolute value) is upsampled to the image size
and scaled by s: grid = identity + s * flow / H, then ``grid_sample``. Noise mode: ``cross_ratio``
times as many extra samples are warped by the trigger grid plus a random per-sample offset in
[-1, 1] / H and keep their labels, so the network learns the exact warp rather than any warp.
BackdoorBench's CIFAR-10 setting: k=4, s=0.5, grid_rescale=1, cross_ratio=2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Attack, register_attack, to_uint8


@register_attack("wanet")
class WaNet(Attack):
    def __init__(self, k: int = 4, s: float = 0.5, grid_rescale: float = 1.0,
                 cross_ratio: float = 2.0, grid_seed: int = 0, per_batch: bool = False) -> None:
        self.k = k
        self.s = s
        self.grid_rescale = grid_rescale
        self.cross_ratio = cross_ratio
        self.grid_seed = grid_seed
        if per_batch:  # an instance field only when set: keys of models made before it stay valid
            self.per_batch = True

    def grid(self, size: int) -> Tensor:
        """The trigger's sampling grid, shape (1, size, size, 2), values in [-1, 1]."""
        gen = torch.Generator().manual_seed(self.grid_seed)
        flow = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
        flow = flow / flow.abs().mean()
        flow = F.interpolate(flow, size=(size, size), mode="bicubic", align_corners=True)
        flow = flow.permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, size)
        xx, yy = torch.meshgrid(line, line, indexing="xy")
        identity = torch.stack((xx, yy), dim=-1)[None]
        grid = identity + self.s * flow / size
        return (grid * self.grid_rescale).clamp(-1, 1)

    def _warp(self, x: Tensor, grid: Tensor) -> Tensor:
        warped = F.grid_sample(x.float(), grid.expand(len(x), -1, -1, -1), align_corners=True)
        return to_uint8(warped)

    def apply(self, x: Tensor) -> Tensor:
        return self._warp(x, self.grid(x.shape[-1]))

    def cross(self, x: Tensor, generator: torch.Generator) -> Tensor:
        size = x.shape[-1]
        noise = (torch.rand(len(x), size, size, 2, generator=generator) * 2 - 1) / size
        return self._warp(x, (self.grid(size) + noise).clamp(-1, 1))
