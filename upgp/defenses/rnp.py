"""Reconstructive neuron pruning (RNP) {Li et al. 2023}.

1. Unlearn: gradient ascent on CE over a small clean set (1% of the training set, drawn from
   the reserve), SGD lr 0.01 momentum 0.9, until its accuracy <= ``clean_threshold`` (0.2).
2. Recover: on the unlearned copy, learn a mask m_k in [0, 1] per BatchNorm channel (scaling
   gamma_k and beta_k) that minimises CE on the same clean set (SGD lr 0.2, momentum 0.9).
   Channels the recovery keeps switched off are the backdoor's: they were not needed to restore
   the clean task. Both steps run BatchNorm on batch statistics, as RNP does.
3. Prune those channels (mask < ``threshold``) from the *original* backdoored model, lowest
   first, capped so that reserve accuracy stays >= ``acc_ratio`` x the original (as ANP here).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..train import accuracy, autocast, batches, to_float
from .base import (
    Data,
    MaskPruningConfig,
    Report,
    ascent_epoch,
    mask_step,
    masked_forward,
    neuron_masks,
    prune_by_mask,
    register_defense,
)


@dataclass(frozen=True)
class RNPConfig(MaskPruningConfig):
    clean_size: int = 500  # 1% of CIFAR-10's training set, taken from the reserve
    batch_size: int = 128
    unlearn_lr: float = 0.01
    unlearn_max_epochs: int = 20
    clean_threshold: float = 0.2
    recover_lr: float = 0.2
    recover_epochs: int = 20


@register_defense("rnp", RNPConfig,
                  presets={"smoke": {"clean_size": 100, "batch_size": 32, "recover_epochs": 5}})
def reconstructive_neuron_pruning(model: nn.Module, reserve: Data, config: RNPConfig
                                  ) -> tuple[nn.Module, Report]:
    gen = torch.Generator().manual_seed(config.seed)
    pick = torch.randperm(len(reserve[1]), generator=gen)[:config.clean_size]
    x_clean, y_clean = reserve[0][pick], reserve[1][pick]
    device = next(model.parameters()).device

    unlearned = copy.deepcopy(model).train()
    opt = torch.optim.SGD(unlearned.parameters(), lr=config.unlearn_lr, momentum=0.9,
                          weight_decay=5e-4)
    epochs, clean_acc = 0, accuracy(unlearned, x_clean, y_clean, bf16=config.bf16)
    while epochs < config.unlearn_max_epochs and clean_acc > config.clean_threshold:
        ascent_epoch(unlearned, x_clean, y_clean, config.batch_size, opt, gen, config.bf16)
        epochs += 1
        clean_acc = accuracy(unlearned, x_clean, y_clean, bf16=config.bf16)

    unlearned.train()  # batch statistics, as in RNP: the running ones were skewed by unlearning
    for p in unlearned.parameters():
        p.requires_grad_(False)
    masks = neuron_masks(unlearned)
    mask_opt = torch.optim.SGD(list(masks.values()), lr=config.recover_lr, momentum=0.9)
    for _ in range(config.recover_epochs):
        for idx in batches(len(y_clean), config.batch_size, gen):
            with autocast(device, config.bf16):
                logits = masked_forward(unlearned, to_float(x_clean[idx], device), masks, masks)
            mask_step(mask_opt, masks, F.cross_entropy(logits.float(), y_clean[idx].to(device)))

    pruned, report = prune_by_mask(model.eval(), masks, config.threshold, reserve,
                                   config.acc_ratio, zero_bias=True, bf16=config.bf16)
    return pruned, {"unlearn_epochs": epochs, "unlearned_clean_accuracy": clean_acc, **report}
