"""Backdoor defenses under one interface, by name (``DEFENSES``, ``defend``).

``defend(name, model, reserve, config, train_set=None) -> (model, report)``; configs per preset
from ``defense_config(name, preset)``. Adding a defense: one module plus one import line here.
"""

from . import abl, anp, fp, ft, ibau, nad, rnp, upgp  # noqa: F401  (registers the defenses)
from .base import DEFENSES, DefenseConfig, defend, defense_config, get_defense, register_defense

__all__ = ["DEFENSES", "DefenseConfig", "defend", "defense_config", "get_defense",
           "register_defense"]
