"""Backdoor attacks, created by name: ``create_attack("badnets")``. One module per attack."""

from . import badnets, blended, bpp, iad, lc, sig, wanet  # noqa: F401  (each import registers its attack)
from .base import (
                   ATTACKS,
                   Attack,
                   PoisonedSet,
                   create_attack,
                   per_batch_poisoning,
                   poison_dataset,
                   register_attack,
                   triggered_test_set,
)

__all__ = ["ATTACKS", "Attack", "PoisonedSet", "create_attack", "per_batch_poisoning",
           "poison_dataset", "register_attack", "triggered_test_set"]
