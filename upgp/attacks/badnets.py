"""BadNets (Gu et al. 2017): a small white square stamped in the bottom-right corner.

BackdoorBench's CIFAR-10 setting: a 3x3 white patch at the bottom-right corner.
"""

from __future__ import annotations

from torch import Tensor

from .base import Attack, register_attack


@register_attack("badnets")
class BadNets(Attack):
    def __init__(self, patch_size: int = 3, value: int = 255) -> None:
        self.patch_size = patch_size
        self.value = value

    def apply(self, x: Tensor) -> Tensor:
        out = x.clone()
        out[..., -self.patch_size:, -self.patch_size:] = self.value
        return out
