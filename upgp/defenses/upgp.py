"""UPGP under the common defense interface (the method itself lives in ``upgp.method``).

Two names: ``upgp``, the paper's four steps, and ``upgp_repair``, the same plus the optional
projected repair in rounds (step 5, ``UPGPConfig.with_repair``: 60 steps a round, 3 rounds).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..method import UPGPConfig, upgp_defend
from .base import Data, Report, register_defense

UPGP_DEFENSES = ("upgp", "upgp_repair")  # names whose config is a UPGPConfig


def repaired_config(**fields: Any) -> UPGPConfig:
    """``UPGPConfig(**fields).with_repair()``: the config of ``upgp_repair``."""
    return UPGPConfig(**fields).with_repair()


@register_defense("upgp", UPGPConfig, needs_train_set=True)
def upgp(model: nn.Module, reserve: Data, config: UPGPConfig, train_set: Data
         ) -> tuple[nn.Module, Report]:
    """Detect insensitive training samples, unlearn them along null-space-projected gradients."""
    cleaned, report = upgp_defend(model, train_set, reserve, config)
    return cleaned, {**report.summary(), "flagged": report.detection.flagged.tolist()}


register_defense("upgp_repair", repaired_config, needs_train_set=True)(upgp)
