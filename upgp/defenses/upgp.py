"""UPGP under the common defense interface (the method itself lives in ``upgp.method``)."""

from __future__ import annotations

from torch import nn

from ..method import UPGPConfig, upgp_defend
from .base import Data, Report, register_defense


@register_defense("upgp", UPGPConfig, needs_train_set=True)
def upgp(model: nn.Module, reserve: Data, config: UPGPConfig, train_set: Data
         ) -> tuple[nn.Module, Report]:
    """Detect insensitive training samples, unlearn them along null-space-projected gradients."""
    cleaned, report = upgp_defend(model, train_set, reserve, config)
    return cleaned, {**report.summary(), "flagged": report.detection.flagged.tolist()}
