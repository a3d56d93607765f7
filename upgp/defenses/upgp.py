"""UPGP under the common defense interface (the method itself lives in ``upgp.method``).

Three names: ``upgp``, the paper's four steps; ``upgp_repair``, the same plus the optional
projected repair in rounds (step 5, ``UPGPConfig.with_repair``: 60 steps a round, 3 rounds); and
``upgp_trigger_repair``, whose repair also stamps half of each reserve batch with the estimated
trigger mean(B) - mean(N) under the true labels (``repair_trigger_share``, ``method.repair``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..method import UPGPConfig, upgp_defend
from .base import Data, Report, register_defense

UPGP_DEFENSES = ("upgp", "upgp_repair", "upgp_trigger_repair")  # configs that are UPGPConfigs
TRIGGER_SHARE = 0.5  # upgp_trigger_repair's share of stamped images in each repair batch


def repaired_config(**fields: Any) -> UPGPConfig:
    """``UPGPConfig(**fields).with_repair()``: the config of ``upgp_repair``."""
    return UPGPConfig(**fields).with_repair()


def trigger_repaired_config(**fields: Any) -> UPGPConfig:
    """``upgp_repair``'s config with ``repair_trigger_share`` = TRIGGER_SHARE unless ``fields``
    set it: the config of ``upgp_trigger_repair``."""
    return repaired_config(**{"repair_trigger_share": TRIGGER_SHARE, **fields})


@register_defense("upgp", UPGPConfig, needs_train_set=True)
def upgp(model: nn.Module, reserve: Data, config: UPGPConfig, train_set: Data
         ) -> tuple[nn.Module, Report]:
    """Detect insensitive training samples, unlearn them along null-space-projected gradients."""
    cleaned, report = upgp_defend(model, train_set, reserve, config)
    return cleaned, {**report.summary(), "flagged": report.detection.flagged.tolist()}


register_defense("upgp_repair", repaired_config, needs_train_set=True)(upgp)
register_defense("upgp_trigger_repair", trigger_repaired_config, needs_train_set=True)(upgp)
