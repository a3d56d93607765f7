"""SIG (Barni et al. 2019): a horizontal sinusoid added to the image, clean-label.

x'[i, j] = clip(x[i, j] + delta * sin(2 pi j f / m)), m the image width; BackdoorBench uses
delta = 40 and f = 6 on CIFAR-10. Poisons are drawn from the target class and keep their labels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Attack, register_attack, to_uint8


@register_attack("sig")
class SIG(Attack):
    clean_label = True

    def __init__(self, delta: float = 40.0, frequency: float = 6.0) -> None:
        self.delta = delta
        self.frequency = frequency

    def apply(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        cols = torch.arange(width, dtype=torch.float32)
        signal = self.delta * torch.sin(2 * math.pi * cols * self.frequency / width)
        return to_uint8(x.float() + signal)
