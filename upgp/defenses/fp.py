"""Fine-pruning (FP) {Liu et al. 2018}: prune dormant last-layer channels, then fine-tune.

Channels of the last convolutional stage are ranked by their mean activation on the clean reserve
(after global pooling, i.e. the penultimate features phi_c). The least active are pruned one by
one, as long as reserve accuracy stays >= ``acc_ratio`` x the original (and at most
``max_ratio`` of the channels). A pruned channel c is removed by zeroing column c of the linear
head (phi_c feeds nothing else), kept at zero while the model is then fine-tuned as in FT.
All choices read only the reserve.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..detectors import penultimate_features
from .base import Data, DefenseConfig, Report, fine_tune, register_defense


@dataclass(frozen=True)
class FPConfig(DefenseConfig):
    acc_ratio: float = 0.9  # keep reserve accuracy >= this share of the original
    max_ratio: float = 0.9  # prune at most this share of the channels
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 256


def pruning_order(model: nn.Module, reserve: Data) -> tuple[Tensor, Tensor]:
    """(channels by increasing mean activation on the reserve, the reserve's features)."""
    feats = penultimate_features(model, reserve[0])
    return feats.mean(0).argsort(), feats


def prune_count(model: nn.Module, reserve: Data, order: Tensor, feats: Tensor, acc_ratio: float,
                max_ratio: float) -> tuple[int, list[float]]:
    """Prune ``order`` one channel at a time; stop before reserve accuracy < acc_ratio x original.

    Returns the number pruned and the reserve-accuracy curve over the count.
    """
    weight = model.linear.weight.detach().float().cpu()
    bias = model.linear.bias.detach().float().cpu()
    y = reserve[1]
    curve = []
    keep = torch.ones(len(order))
    for k in range(int(max_ratio * len(order)) + 1):
        if k > 0:
            keep[order[k - 1]] = 0.0
        curve.append(((feats * keep) @ weight.T + bias).argmax(1).eq(y).float().mean().item())
    below = [k for k, acc in enumerate(curve) if acc < acc_ratio * curve[0]]
    return (below[0] - 1 if below else len(curve) - 1), curve


@register_defense("fp", FPConfig, presets={"smoke": {"epochs": 5, "batch_size": 64}})
def fine_pruning(model: nn.Module, reserve: Data, config: FPConfig) -> tuple[nn.Module, Report]:
    model = copy.deepcopy(model).eval()
    order, feats = pruning_order(model, reserve)
    k, curve = prune_count(model, reserve, order, feats, config.acc_ratio, config.max_ratio)
    pruned = order[:k].to(model.linear.weight.device)

    def keep_pruned(m: nn.Module) -> None:
        with torch.no_grad():
            m.linear.weight[:, pruned] = 0.0

    keep_pruned(model)
    stats = fine_tune(model, reserve, config.epochs, config.lr, config.batch_size, config,
                      after_step=keep_pruned)
    return model, {"pruned_channels": k, "channels": len(order),
                   "reserve_accuracy_after_pruning": curve[k],
                   "seconds": {"fine-tune": stats["train_seconds"]}}
