"""Fine-tuning (FT): train the backdoored model on the clean reserve for a few epochs.

The simplest baseline {Liu et al. 2018}: SGD, lr 0.01, cosine schedule, batch 256
(BackdoorBench's settings); catastrophic forgetting of the trigger is hoped for, not enforced.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from .base import Data, DefenseConfig, Report, fine_tune, register_defense


@dataclass(frozen=True)
class FTConfig(DefenseConfig):
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 256


@register_defense("ft", FTConfig, presets={"smoke": {"epochs": 5, "batch_size": 64}})
def fine_tuning(model: nn.Module, reserve: Data, config: FTConfig) -> tuple[nn.Module, Report]:
    model = copy.deepcopy(model)
    stats = fine_tune(model, reserve, config.epochs, config.lr, config.batch_size, config)
    return model, {"seconds": {"fine-tune": stats["train_seconds"]}}
