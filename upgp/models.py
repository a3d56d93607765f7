"""CIFAR-sized classifiers with a width multiplier, created by name (``create_model``).

``width`` is the number of channels of the first stage (64 in the standard networks, so
``width=16`` is a quarter-width model). Every model takes images in [0, 1] and normalises them
itself, so attacks and defenses only ever handle pixel values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .presets import check_choice

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = builder
        return builder

    return wrap


def create_model(name: str, num_classes: int = 10, width: int = 64) -> nn.Module:
    """Build the registered architecture ``name`` (see ``MODELS``) with ``width`` base channels."""
    check_choice("model", name, sorted(MODELS))
    if width < 1:
        raise ValueError(f"model width {width} must be a positive integer")
    return MODELS[name](num_classes=num_classes, width=width)


class Normalize(nn.Module):
    """(x - mean) / std with CIFAR-10 statistics; inputs are images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Pointwise(nn.Conv2d):
    """1x1 convolution with stride s, computed as subsampling x[..., ::s, ::s] then a 1x1 conv.

    The same function and parameters as ``nn.Conv2d(c_in, c_out, 1, s, bias=False)``; written
    this way because torch 2.14.1's oneDNN weight-gradient kernel for strided 1x1 convolutions
    corrupts the heap on CPU (channels-last, fewer than 16 input channels, odd batch sizes, two
    threads), which the narrow smoke-preset models hit.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, 1, 1, bias=False)
        self.step = stride

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv2d(x[:, :, ::self.step, ::self.step], self.weight)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): BN-ReLU-conv twice, identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            Pointwise(c_in, c_out, stride) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    """Post-activation residual block of the original ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                Pointwise(c_in, c_out, stride), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 layout for 32x32 inputs (3x3 stem, four stages of two blocks)."""

    def __init__(self, block: type[nn.Module], num_classes: int, width: int, preact: bool) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(width)
        stages, c_in = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2**i
            stages.append(nn.Sequential(block(c_in, c_out, stride), block(c_out, c_out, 1)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_final = nn.BatchNorm2d(c_in) if preact else nn.Identity()
        self.linear = nn.Linear(c_in, num_classes)
        self.preact = preact

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (after global average pooling)."""
        out = self.conv1(self.normalize(x))
        out = out if self.preact else torch.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = torch.relu(self.bn_final(out))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))

    def stages(self) -> list[nn.Module]:
        """The modules whose outputs are the last three feature stages (NAD's attention maps)."""
        return [self.layer2, self.layer3, self.layer4]


_VGG_CFG = {
    16: (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    19: (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"),
}


class VGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs; a linear classifier on the 1x1 feature map."""

    def __init__(self, depth: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.normalize = Normalize()
        layers: list[nn.Module] = []
        c_in = 3
        for item in _VGG_CFG[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = width * int(item)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                           nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (flattened 1x1 map)."""
        return torch.flatten(self.body(self.normalize(x)), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))

    def stages(self) -> list[nn.Module]:
        """The modules whose outputs are the last three feature stages (NAD's attention maps)."""
        return [m for m in self.body if isinstance(m, nn.MaxPool2d)][-3:]


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int = 10, width: int = 64) -> nn.Module:
    return ResNet(PreActBlock, num_classes, width, preact=True)


@register_model("resnet18")
def resnet18(num_classes: int = 10, width: int = 64) -> nn.Module:
    return ResNet(BasicBlock, num_classes, width, preact=False)


@register_model("vgg19_bn")
def vgg19_bn(num_classes: int = 10, width: int = 64) -> nn.Module:
    return VGG(19, num_classes, width)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10, width: int = 64) -> nn.Module:
    return VGG(16, num_classes, width)
