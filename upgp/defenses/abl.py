"""Anti-backdoor learning (ABL) {Li et al. 2021}: a *training-time* defense.

ABL cannot clean a finished model: it needs the poisoned training set and trains a fresh model
of the same architecture (the given model supplies only the architecture).
1. Isolation: train with the local gradient ascent (LGA) loss sign(CE - gamma) * CE (gamma 0.5),
   which stops fitting a batch once its loss falls below gamma; backdoor samples are learnt
   faster and end with the lowest losses. The ``isolation_ratio`` (1%) lowest-loss samples are
   isolated.
2. Training on the other 99% with the usual recipe.
3. Unlearning: gradient ascent on CE over the isolated samples (SGD lr 5e-4, momentum 0.9,
   5 epochs), BatchNorm in training mode as in the authors' code.
Epoch counts are scaled per preset (20 isolation epochs at the paper preset, as in anchors.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..method import per_sample_outputs
from ..train import fit
from .base import Data, DefenseConfig, Report, ascent_epoch, register_defense


@dataclass(frozen=True)
class ABLConfig(DefenseConfig):
    isolation_epochs: int = 4
    train_epochs: int = 12
    batch_size: int = 256
    lr: float = 0.1
    schedule: str = "onecycle"
    gamma: float = 0.5
    isolation_ratio: float = 0.01
    unlearn_epochs: int = 5
    unlearn_lr: float = 5e-4
    unlearn_batch: int = 64


def lga_loss(model: nn.Module, x: Tensor, y: Tensor, gamma: float = 0.5) -> Tensor:
    """Local gradient ascent: sign(CE - gamma) * CE (descends above gamma, ascends below)."""
    loss = F.cross_entropy(model(x), y)
    return torch.sign(loss.detach() - gamma) * loss


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly initialised weights (same architecture)."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


@register_defense("abl", ABLConfig, needs_train_set=True,
                  presets={"smoke": {"isolation_epochs": 3, "train_epochs": 8, "batch_size": 128,
                                     "lr": 0.05, "unlearn_epochs": 2},
                           "paper": {"isolation_epochs": 20, "train_epochs": 80,
                                     "batch_size": 128, "lr": 0.01, "schedule": "cosine"}})
def anti_backdoor_learning(model: nn.Module, reserve: Data, config: ABLConfig,
                           train_set: Data) -> tuple[nn.Module, Report]:
    x, y = train_set
    net = reinitialised(model, config.seed)
    iso = fit(net, x, y, config.isolation_epochs, config.batch_size, config.lr, config.schedule,
              config.bf16, config.seed, loss_fn=lambda m, xb, yb: lga_loss(m, xb, yb, config.gamma))
    loss, _ = per_sample_outputs(net, x, y, bf16=config.bf16)
    n_iso = max(1, round(config.isolation_ratio * len(y)))
    isolated = loss.argsort()[:n_iso].sort().values
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[isolated] = False
    main = fit(net, x[rest], y[rest], config.train_epochs, config.batch_size, config.lr,
               config.schedule, config.bf16, config.seed + 1)
    opt = torch.optim.SGD(net.parameters(), lr=config.unlearn_lr, momentum=0.9,
                          weight_decay=5e-4)
    gen = torch.Generator().manual_seed(config.seed)
    net.train()
    for _ in range(config.unlearn_epochs):
        ascent_epoch(net, x[isolated], y[isolated], config.unlearn_batch, opt, gen, config.bf16)
    net.eval()
    return net, {"flagged": isolated.tolist(),
                 "seconds": {"isolation": iso["train_seconds"], "training": main["train_seconds"]}}
