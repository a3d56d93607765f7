"""BppAttack (Wang et al. 2022): colour-depth reduction with dithering as the trigger.

Each channel is quantised to ``squeeze_num`` levels; with ``dithering`` the rounding error is
diffused to the unvisited neighbours (Floyd-Steinberg: 7/16 right, 3/16 below-left, 5/16 below,
1/16 below-right), so the trigger is a fine, image-dependent noise pattern. Negative samples
(``cross_ratio`` x as many as the poisons, labels kept) get the quantisation residual
bpp(x_j) - x_j of *another* image added, so the network learns the exact residual of its own
image rather than any quantisation-like noise. BackdoorBench's CIFAR-10 setting:
squeeze_num 8, dithering on, negative ratio 0.2 (= 2 x the 10% poisons).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, register_attack, to_uint8


@register_attack("bpp")
class BPP(Attack):
    def __init__(self, squeeze_num: int = 8, dithering: bool = True,
                 cross_ratio: float = 2.0, per_batch: bool = False) -> None:
        self.squeeze_num = squeeze_num
        self.dithering = dithering
        self.cross_ratio = cross_ratio
        if per_batch:  # an instance field only when set: keys of models made before it stay valid
            self.per_batch = True

    def _quantise(self, v: Tensor) -> Tensor:
        levels = self.squeeze_num - 1
        return torch.round(v / 255 * levels) / levels * 255

    def apply(self, x: Tensor) -> Tensor:
        img = x.double()
        if not self.dithering:
            return to_uint8(self._quantise(img))
        _, _, h, w = img.shape
        for i in range(h):  # raster order; all images and channels at once
            for j in range(w):
                old = img[:, :, i, j].clone()
                new = self._quantise(old).clamp(0, 255)
                img[:, :, i, j] = new
                err = old - new
                if j + 1 < w:
                    img[:, :, i, j + 1] += err * 7 / 16
                if i + 1 < h:
                    if j > 0:
                        img[:, :, i + 1, j - 1] += err * 3 / 16
                    img[:, :, i + 1, j] += err * 5 / 16
                    if j + 1 < w:
                        img[:, :, i + 1, j + 1] += err * 1 / 16
        return to_uint8(img)

    def cross(self, x: Tensor, generator: torch.Generator) -> Tensor:
        other = x[torch.randperm(len(x), generator=generator)]
        residual = self.apply(other).float() - other.float()
        return to_uint8(x.float() + residual)
