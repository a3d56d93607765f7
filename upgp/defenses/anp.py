"""Adversarial neuron pruning (ANP) {Wu & Wang 2021}.

Each BatchNorm channel k gets a mask m_k in [0, 1] and bounded multiplicative noise
delta_k, xi_k in [-eps, eps]: gamma_k -> (m_k + delta_k) gamma_k, beta_k -> (1 + xi_k) beta_k.
Per reserve batch: the noise is drawn uniformly, takes one gradient-ascent step (learning rate
eps) on the loss (the adversarial neuron perturbation), and the masks take an SGD step on
alpha * L(m) + (1 - alpha) * L(m, delta, xi). Channels whose mask ends below a fixed threshold
are pruned (gamma_k = 0), lowest first, but never so many that reserve accuracy falls below
``acc_ratio`` x the original (our cap: on narrow models the fixed threshold alone switched off
half the network). eps 0.4, alpha 0.2, mask lr 0.2, threshold 0.2 (BackdoorBench);
iterations scaled per preset (2,000 at the paper preset). BatchNorm stays in eval mode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..train import autocast, batches, to_float
from .base import (
    Data,
    MaskPruningConfig,
    Report,
    mask_step,
    masked_forward,
    neuron_masks,
    prune_by_mask,
    register_defense,
)


@dataclass(frozen=True)
class ANPConfig(MaskPruningConfig):
    iterations: int = 500
    batch_size: int = 128
    eps: float = 0.4
    alpha: float = 0.2
    mask_lr: float = 0.2


@register_defense("anp", ANPConfig,
                  presets={"smoke": {"iterations": 40, "batch_size": 64},
                           "paper": {"iterations": 2000}})
def adversarial_neuron_pruning(model: nn.Module, reserve: Data, config: ANPConfig
                               ) -> tuple[nn.Module, Report]:
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    device = next(work.parameters()).device
    masks = neuron_masks(work)
    noise_w = {k: torch.zeros_like(m, requires_grad=True) for k, m in masks.items()}
    noise_b = {k: torch.zeros_like(m, requires_grad=True) for k, m in masks.items()}
    mask_opt = torch.optim.SGD(list(masks.values()), lr=config.mask_lr, momentum=0.9)
    torch.manual_seed(config.seed)  # the noise draws
    gen = torch.Generator().manual_seed(config.seed)
    x_res, y_res = reserve

    def loss(x: Tensor, y: Tensor, noisy: bool) -> Tensor:
        scale_w = {k: m + noise_w[k] if noisy else m for k, m in masks.items()}
        scale_b = {k: 1 + noise_b[k] for k in masks} if noisy else None
        with autocast(device, config.bf16):
            logits = masked_forward(work, x, scale_w, scale_b)
        return F.cross_entropy(logits.float(), y)

    step = 0
    while step < config.iterations:
        for idx in batches(len(x_res), config.batch_size, gen, drop_last=True):
            x, y = to_float(x_res[idx], device), y_res[idx].to(device)
            noise = list(noise_w.values()) + list(noise_b.values())
            with torch.no_grad():  # random start, then one ascent step
                for t in noise:
                    t.uniform_(-config.eps, config.eps)
            grads = torch.autograd.grad(loss(x, y, True), noise)
            with torch.no_grad():
                for t, g in zip(noise, grads):
                    t.add_(config.eps * g).clamp_(-config.eps, config.eps)
            objective = config.alpha * loss(x, y, False) + (1 - config.alpha) * loss(x, y, True)
            mask_step(mask_opt, masks, objective)
            step += 1
            if step >= config.iterations:
                break
    pruned, report = prune_by_mask(model, masks, config.threshold, reserve, config.acc_ratio,
                                   bf16=config.bf16)
    return pruned, report
