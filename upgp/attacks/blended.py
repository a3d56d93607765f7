"""Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha k for a fixed key pattern k.

BackdoorBench blends a cartoon image at alpha 0.2. Nothing is downloaded here: the key is a
uniform random-noise image generated from ``pattern_seed`` (Chen et al.'s "random pattern"
variant), so every run rebuilds the same trigger.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, register_attack, to_uint8


@register_attack("blended")
class Blended(Attack):
    def __init__(self, alpha: float = 0.2, pattern_seed: int = 0) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"blend alpha {alpha} is outside (0, 1)")
        self.alpha = alpha
        self.pattern_seed = pattern_seed

    def pattern(self, shape: tuple[int, ...]) -> Tensor:
        gen = torch.Generator().manual_seed(self.pattern_seed)
        return torch.randint(0, 256, shape, generator=gen).float()

    def apply(self, x: Tensor) -> Tensor:
        key = self.pattern(tuple(x.shape[-3:]))
        return to_uint8((1 - self.alpha) * x.float() + self.alpha * key)
