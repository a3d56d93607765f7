"""Input-aware dynamic backdoor (IAD, Nguyen & Tran 2020): a trigger generated per input.

Two small encoder-decoder networks map an image x in [0, 1] to a pattern p(x) in [0, 1]^3 and a
mask m(x) in (0, 1) (m = tanh(20 z - 10) / 2 + 1/2, nearly binary); the triggered image is
x' = (1 - m(x)) x + m(x) p(x). Training has two stages (BackdoorBench's CIFAR-10 settings):
1. the mask network alone, for ``mask_epochs``: lambda_norm * relu(mean m - density)
   (density 0.032, lambda_norm 100) plus the diversity loss below;
2. the classifier and the pattern generator together: in each batch a share ``p_attack`` is
   triggered with its own pattern and relabelled, a share ``p_cross`` gets the pattern and mask
   of *another* image and keeps its label (cross-trigger samples: a trigger only works on the
   input it was made for), and the generator also minimises the diversity loss
   lambda_div * ||x1 - x2|| / ||g(x1) - g(x2)|| (lambda_div 1) so that different inputs get
   different triggers.
The defender then holds a static poisoned training set made with the final generator (as in
BackdoorBench): ``poison_idx`` carry their own trigger, ``cross_idx`` another image's. The
generator and mask network are cached with the classifier (``trigger_state``).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..presets import Preset
from ..train import (
    autocast,
    batches,
    default_device,
    make_optimizer,
    random_crop_flip,
    to_float,
)
from .base import Attack, register_attack, to_uint8


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class TriggerNet(nn.Module):
    """Encoder-decoder (three 2x poolings, three 2x upsamplings) from an image to ``out`` maps."""

    def __init__(self, out: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_conv(3, w), *_conv(w, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w), *_conv(4 * w, 4 * w), nn.MaxPool2d(2),
            nn.Upsample(scale_factor=2), *_conv(4 * w, 4 * w), *_conv(4 * w, 2 * w),
            nn.Upsample(scale_factor=2), *_conv(2 * w, 2 * w), *_conv(2 * w, w),
            nn.Upsample(scale_factor=2), *_conv(w, w), nn.Conv2d(w, out, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def diversity_loss(x1: Tensor, x2: Tensor, g1: Tensor, g2: Tensor, eps: float = 1e-7) -> Tensor:
    """mean_i ||x1_i - x2_i|| / ||g1_i - g2_i||: small when different inputs get different outputs.

    (RMS distances; 1e-12 under the square roots keeps the gradient finite when two outputs
    coincide, e.g. two masks saturated at 0.)
    """
    d_x = ((x1 - x2).pow(2).mean((1, 2, 3)) + 1e-12).sqrt()
    d_g = ((g1 - g2).pow(2).mean((1, 2, 3)) + 1e-12).sqrt()
    return (d_x / (d_g + eps)).mean()


@register_attack("iad")
class InputAware(Attack):
    learned = True

    def __init__(self, p_cross: float = 0.1, lambda_div: float = 1.0, lambda_norm: float = 100.0,
                 mask_density: float = 0.032, mask_epochs: int = 2, generator_lr: float = 0.01,
                 net_width: int = 16, cross_ratio: float = 1.0) -> None:
        self.p_cross = p_cross
        self.lambda_div = lambda_div
        self.lambda_norm = lambda_norm
        self.mask_density = mask_density
        self.mask_epochs = mask_epochs
        self.generator_lr = generator_lr
        self.net_width = net_width
        self.cross_ratio = cross_ratio  # static set: as many cross-trigger samples as poisons
        self._pattern = TriggerNet(3, net_width)
        self._mask = TriggerNet(1, net_width)
        self._ready = False

    # the trigger ---------------------------------------------------------------------------
    def pattern_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """p(x) in [0, 1]^3 and m(x) in (0, 1) for float images x in [0, 1]."""
        pattern = (torch.tanh(self._pattern(x)) + 1) / 2
        mask = torch.tanh(20 * self._mask(x) - 10) / 2 + 0.5
        return pattern, mask

    @staticmethod
    def blend(x: Tensor, pattern: Tensor, mask: Tensor) -> Tensor:
        return x + mask * (pattern - x)

    @torch.no_grad()
    def _triggered(self, x: Tensor, partner: Tensor | None = None, batch_size: int = 500) -> Tensor:
        if not self._ready:
            raise ValueError("the iad attack has no trained generator yet: build it through "
                             "upgp.scenarios.backdoored_model (it trains with the classifier)")
        self._pattern.eval()
        self._mask.eval()
        device = next(self._pattern.parameters()).device
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device).float() / 255
            src = xb if partner is None else partner[start:start + batch_size].to(device).float() / 255
            pattern, mask = self.pattern_and_mask(src)
            out.append(to_uint8(self.blend(xb, pattern, mask) * 255).cpu())
        return torch.cat(out) if out else x.clone()

    def apply(self, x: Tensor) -> Tensor:
        return self._triggered(x)

    def cross(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._triggered(x, x[torch.randperm(len(x), generator=generator)])

    def trigger_state(self) -> dict[str, dict[str, Tensor]]:
        return {"pattern": {k: v.cpu() for k, v in self._pattern.state_dict().items()},
                "mask": {k: v.cpu() for k, v in self._mask.state_dict().items()}}

    def load_trigger_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        self._pattern.load_state_dict(state["pattern"])
        self._mask.load_state_dict(state["mask"])
        self._ready = True

    # training ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the trigger networks are trained (or loaded)."""
        return self._ready

    def train_with(self, model: nn.Module, x: Tensor, y: Tensor, preset: Preset, seed: int,
                   num_classes: int = 10, progress: bool = True) -> dict[str, float]:
        """Train the mask network, then the classifier ``model`` with the pattern generator, on
        clean uint8 images ``x, y`` (poisoning happens on the fly); returns timing stats."""
        device = default_device()
        model.to(device)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self._pattern = TriggerNet(3, self.net_width).to(device)  # initialised under the seed
        self._mask = TriggerNet(1, self.net_width).to(device)
        n_bd = max(1, round(preset.poison_ratio * preset.batch_size))
        n_cross = max(1, round(self.p_cross * preset.batch_size))
        steps = max(1, len(x) // preset.batch_size)
        start = time.perf_counter()

        def pairs():
            for idx in batches(len(x), preset.batch_size, gen, drop_last=True):
                other = torch.randint(0, len(x), (len(idx),), generator=gen)
                x1 = random_crop_flip(to_float(x[idx], device), gen)
                yield x1, y[idx].to(device), random_crop_flip(to_float(x[other], device), gen)

        mask_opt = torch.optim.Adam(self._mask.parameters(), lr=self.generator_lr,
                                    betas=(0.5, 0.9))
        self._mask.train()
        for _ in range(self.mask_epochs):
            for x1, _, x2 in pairs():
                m1, m2 = self._mask(x1), self._mask(x2)
                m1, m2 = (torch.tanh(20 * m - 10) / 2 + 0.5 for m in (m1, m2))
                loss = (self.lambda_norm * F.relu(m1.mean() - self.mask_density)
                        + self.lambda_div * diversity_loss(x1, x2, m1, m2))
                mask_opt.zero_grad(set_to_none=True)
                loss.backward()
                mask_opt.step()
        mask_seconds = time.perf_counter() - start
        self._mask.eval().requires_grad_(False)

        model.to(memory_format=torch.channels_last).train()
        self._pattern.train()
        opt, sched = make_optimizer(model, preset.lr, preset.momentum, preset.weight_decay,
                                    preset.schedule, preset.epochs * steps)
        gen_opt = torch.optim.Adam(self._pattern.parameters(), lr=self.generator_lr,
                                   betas=(0.5, 0.9))
        bar = tqdm(total=preset.epochs * steps, disable=not progress, desc="train iad",
                   leave=False)
        for _ in range(preset.epochs):
            for x1, y1, x2 in pairs():
                bd, cr = x1[:n_bd], x1[n_bd:n_bd + n_cross]
                p_bd, m_bd = self.pattern_and_mask(bd)
                p_cr, m_cr = self.pattern_and_mask(x2[n_bd:n_bd + n_cross])
                p_other, _ = self.pattern_and_mask(x2[:n_bd])
                inputs = torch.cat([self.blend(bd, p_bd, m_bd), self.blend(cr, p_cr, m_cr),
                                    x1[n_bd + n_cross:]])
                labels = torch.cat([self.backdoor_labels(y1[:n_bd], preset.target, num_classes),
                                    y1[n_bd:]])
                with autocast(device, preset.bf16):
                    ce = F.cross_entropy(model(inputs.contiguous(memory_format=torch.channels_last)),
                                         labels)
                loss = ce + self.lambda_div * diversity_loss(bd, x2[:n_bd], p_bd, p_other)
                opt.zero_grad(set_to_none=True)
                gen_opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                gen_opt.step()
                sched.step()
                bar.update()
        bar.close()
        model.eval()
        self._pattern.eval().requires_grad_(False)
        self._ready = True
        seconds = time.perf_counter() - start
        return {"train_seconds": seconds - mask_seconds, "mask_seconds": mask_seconds,
                "images_per_second": preset.epochs * steps * preset.batch_size
                / (seconds - mask_seconds)}
