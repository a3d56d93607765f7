"""What every attack shares: the registry, the all-to-one label rule and dataset poisoning.

An attack is a pure transform of uint8 images ``(N, 3, H, W) -> (N, 3, H, W)`` (``apply``) plus
two flags: ``clean_label`` (poisons are drawn from the target class and keep their label) and
``cross_ratio`` (WaNet's noise mode: extra samples transformed by ``cross`` that keep their
label). Adding an attack is one module with a ``@register_attack`` class plus its import line
in ``upgp/attacks/__init__.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..presets import check_choice, checked_value

ATTACKS: dict[str, Callable[..., Attack]] = {}


def register_attack(name: str) -> Callable:
    def wrap(cls: type[Attack]) -> type[Attack]:
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return wrap


LABEL_MODES = ("all2one", "all2all")


def create_attack(name: str, label_mode: str = "all2one", **params) -> Attack:
    """Instantiate the registered attack ``name`` (see ``ATTACKS``) with its parameters.

    ``label_mode``: ``all2one`` (every poison labelled ``target``) or ``all2all``
    (y -> (y + 1) mod C; dirty-label attacks only).
    """
    check_choice("attack", name, sorted(ATTACKS))
    check_choice("label mode", label_mode, LABEL_MODES)
    signature = inspect.signature(ATTACKS[name]).parameters
    allowed = [k for k in signature if k != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for attack {name!r}; "
                         f"allowed: {', '.join(allowed) or 'none'}")
    attack = ATTACKS[name](**{k: checked_value(f"attack {name!r} parameter", k, v,
                                               signature[k].annotation)
                              for k, v in params.items()})
    if label_mode != "all2one":
        if attack.clean_label:
            raise ValueError(f"label mode {label_mode!r} needs a dirty-label attack; {name!r} "
                             "keeps its poisons' labels")
        attack.label_mode = label_mode  # an instance field: part of params() and cache keys
    return attack


def to_uint8(x: Tensor) -> Tensor:
    """Round and clamp float pixel values (0..255 scale) back to uint8."""
    return x.round().clamp_(0, 255).to(torch.uint8)


class Attack:
    """Base class: subclasses set their trigger parameters and implement ``apply``."""

    name = "attack"
    clean_label = False
    cross_ratio = 0.0
    label_mode = "all2one"
    needs_surrogate = False  # LC: poisons are crafted against a clean model (``set_surrogate``)
    learned = False  # IAD: the trigger is trained with the classifier (``train_with``)
    per_batch = False  # WaNet/BPP option: trigger each augmented batch (``per_batch_poisoning``)

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the trigger on uint8 images; returns a new uint8 tensor."""
        raise NotImplementedError

    def poison(self, x: Tensor, y: Tensor) -> Tensor:
        """The training-time transform of the poisons (default: the trigger alone, ``apply``)."""
        return self.apply(x)

    def cross(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Noise-mode transform for ``cross_ratio`` samples (labels kept); only WaNet has one."""
        raise NotImplementedError(f"{self.name} has no noise mode")

    def backdoor_labels(self, y: Tensor, target: int, num_classes: int) -> Tensor:
        """The label a triggered input of true class ``y`` should get: ``target``, or (y+1) mod C."""
        if self.label_mode == "all2all":
            return (y + 1) % num_classes
        return torch.full_like(y, target)

    def params(self) -> dict:
        """The attack's parameters (for cache keys and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class PoisonedSet:
    """A poisoned copy of a training set. The indices are for evaluation only, never for defenses.

    ``poison_idx``: samples carrying the trigger (with the target label, except clean-label
    attacks); ``cross_idx``: noise-mode samples (transformed, label kept, not backdoor samples).
    ``clean_x``: the images before poisoning, kept for attacks that poison per batch (the model
    trains on them through ``per_batch_poisoning``; ``x`` is still what the defender holds).
    """

    x: Tensor
    y: Tensor
    poison_idx: Tensor
    cross_idx: Tensor
    target: int
    clean_x: Tensor | None = None

    @property
    def is_poisoned(self) -> Tensor:
        return self._mask(self.poison_idx)

    @property
    def is_cross(self) -> Tensor:
        return self._mask(self.cross_idx)

    def _mask(self, idx: Tensor) -> Tensor:
        mask = torch.zeros(len(self.y), dtype=torch.bool)
        mask[idx] = True
        return mask


def poison_dataset(attack: Attack, x: Tensor, y: Tensor, ratio: float, target: int,
                   seed: int) -> PoisonedSet:
    """Poison ``round(ratio * len(x))`` samples towards the attack's backdoor labels.

    All-to-one dirty-label attacks draw them from non-target samples and relabel them ``target``;
    all-to-all ones draw them from every class and relabel y -> (y + 1) mod C; clean-label
    attacks draw them from the target class (at most all of it) and keep labels.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"poisoning ratio {ratio} is outside (0, 1)")
    num_classes = int(y.max()) + 1
    if not 0 <= target < num_classes:
        raise ValueError(f"target label {target} is outside 0..{num_classes - 1}")
    gen = torch.Generator().manual_seed(seed)
    if attack.clean_label:
        pool = (y == target).nonzero().flatten()
    elif attack.label_mode == "all2all":
        pool = torch.arange(len(y))
    else:
        pool = (y != target).nonzero().flatten()
    pool = pool[torch.randperm(len(pool), generator=gen)]
    n_poison = min(round(ratio * len(x)), len(pool))
    if n_poison < 1:
        raise ValueError(f"poisoning ratio {ratio} selects no sample of {len(x)}")
    poison_idx = pool[:n_poison].sort().values
    x_out, y_out = x.clone(), y.clone()
    x_out[poison_idx] = attack.poison(x[poison_idx], y[poison_idx])
    y_out[poison_idx] = attack.backdoor_labels(y[poison_idx], target, num_classes)
    cross_idx = torch.empty(0, dtype=torch.long)
    if attack.cross_ratio > 0:
        rest = torch.ones(len(x), dtype=torch.bool)
        rest[poison_idx] = False
        rest = rest.nonzero().flatten()
        rest = rest[torch.randperm(len(rest), generator=gen)]
        cross_idx = rest[: min(round(attack.cross_ratio * n_poison), len(rest))].sort().values
        x_out[cross_idx] = attack.cross(x[cross_idx], gen)
    return PoisonedSet(x_out, y_out, poison_idx, cross_idx, target,
                       x if attack.per_batch else None)


def per_batch_poisoning(attack: Attack, poisoned: PoisonedSet
                        ) -> Callable[[Tensor, Tensor, torch.Generator], Tensor]:
    """The batch transform of ``upgp.train.fit`` for training-controllable attacks (WaNet, BPP):
    the model sees ``clean_x``, and in every augmented batch the poisons get the trigger and the
    noise-mode samples a fresh ``cross`` transform.

    Closer to how BackdoorBench trains these attacks (trigger and noise made anew for each batch)
    than a poisoned set made once, with two differences: there the poisoned images are redrawn
    in each batch and augmentation is applied both before and after the warp; here the poison
    indices stay fixed (so detection can be scored against them) and the trigger follows the
    augmentation, so the model learns exactly the trigger it is tested with. Stamped once before
    augmentation, a warp or dither pattern is shifted and mirrored from epoch to epoch.
    """
    is_poison, is_cross = poisoned.is_poisoned, poisoned.is_cross

    def transform(idx: Tensor, xb: Tensor, generator: torch.Generator) -> Tensor:
        out = xb.clone()
        p, c = is_poison[idx], is_cross[idx]
        if p.any():
            out[p] = attack.poison(xb[p], poisoned.y[idx][p])
        if c.any():
            out[c] = attack.cross(xb[c], generator)
        return out

    return transform


def triggered_test_set(attack: Attack, x: Tensor, y: Tensor, target: int, num_classes: int = 10
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Trigger the test images whose backdoor label differs from their class.

    Returns (triggered images, true labels, backdoor labels): all-to-one keeps the non-target
    images; all-to-all keeps all.
    """
    backdoor = attack.backdoor_labels(y, target, num_classes)
    keep = backdoor != y
    return attack.apply(x[keep]), y[keep], backdoor[keep]
