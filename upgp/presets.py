"""Presets: every setting of a run as data, one frozen dataclass per scale, overridden by field.

- ``smoke``: the synthetic dataset, a tiny model, seconds on a CPU (tests and CI).
- ``cpu``: full CIFAR-10 training set, width 16, bf16, 12 epochs; minutes per model on a CPU.
  Results at this preset are CPU-scale and are labelled so. An (attack, architecture) pair whose
  backdoor does not take hold in 12 epochs trains longer (``PAIR_EPOCHS``).
- ``paper``: width 64, 100 epochs, SGD lr 0.01 cosine, batch 128 (BackdoorBench's defaults); GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("cosine", "onecycle")  # learning-rate schedules of upgp.train.fit
DATASETS = ("cifar10", "synthetic")


def check_choice(what: str, value: Any, allowed: Iterable[str]) -> None:
    """The package's one-line error for a name outside ``allowed``:
    ``unknown <what> '<value>'; choose one of: <allowed, in the given order>``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


_SCALARS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
_TYPE_WORDS = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
               str: "a string"}


def checked_value(owner: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` for the field or parameter ``name`` of ``owner`` annotated ``annotation``, or a
    one-line error naming both and the expected type. Checks the scalar annotations (bool, int,
    float, str; an int passes for a float, unconverted, so cache keys made from it hold); other
    annotations pass as is."""
    kind = _SCALARS.get(annotation if isinstance(annotation, str) else
                        getattr(annotation, "__name__", ""))
    if kind is None:
        return value
    accepted = (int, float) if kind is float else kind
    if isinstance(value, accepted) and (kind is bool or not isinstance(value, bool)):
        return value
    given = _TYPE_WORDS.get(type(value), f"a {type(value).__name__}")
    raise ValueError(f"{owner} {name}={value!r} is {given}; {name} takes {_TYPE_WORDS[kind]}")


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass (presets, UPGP and defense configs): validated ``replace``."""

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``; an unknown field name or a value of the wrong type raises a
        one-line error (the valid names, or the field's type)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} field(s) {unknown}; "
                             f"choose from: {', '.join(sorted(fields))}")
        owner = type(self).__name__
        return dataclasses.replace(self, **{k: checked_value(owner, k, v, fields[k].type)
                                            for k, v in changes.items()})


@dataclass(frozen=True)
class Preset(Settings):
    """Settings shared by training, attacks and defenses at one scale."""

    name: str
    dataset: str = "cifar10"  # "cifar10" or "synthetic"
    width: int = 16  # base channels (64 = the standard networks)
    epochs: int = 12
    batch_size: int = 256
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" or "cosine"
    bf16: bool = True  # bfloat16 autocast (CPU and CUDA)
    reserve_ratio: float = 0.05  # clean defense reserve, share of the training set
    poison_ratio: float = 0.1  # share of the (non-reserve) training set that is poisoned
    target: int = 0  # all-to-one target label
    eval_batch: int = 1024

    def __post_init__(self) -> None:
        for field in ("reserve_ratio", "poison_ratio"):
            value = getattr(self, field)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{field.replace('_', ' ')} {value} is outside (0, 1)")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("dataset", self.dataset, DATASETS)
        if self.epochs < 1 or self.batch_size < 1 or self.width < 1:
            raise ValueError("epochs, batch size and width must be positive integers")

    def scale_label(self) -> str:
        """How results at this preset must be described next to the paper's."""
        return {
            "smoke": "smoke test on synthetic data, not a result",
            "cpu": "CPU-scale, not the paper's scale",
            "paper": "paper-scale settings",
        }.get(self.name, f"custom preset {self.name}")


PRESETS: dict[str, Preset] = {
    "smoke": Preset(name="smoke", dataset="synthetic", width=8, epochs=8, batch_size=128, lr=0.05,
                    bf16=True, eval_batch=512),
    "cpu": Preset(name="cpu"),
    "paper": Preset(name="paper", width=64, epochs=100, batch_size=128, lr=0.01,
                    schedule="cosine", bf16=True),
}


# Epochs for (attack, arch) pairs whose backdoor does not take hold (ASR < 90) in the preset's
# epochs at its width, measured with the CLI on the JPEG copy, seed 0: WaNet on a 16-wide
# VGG19-BN reaches ASR 41.7 after 12 epochs, 90.9 after 24 (BackdoorBench trains 100).
PAIR_EPOCHS: dict[str, dict[tuple[str, str], int]] = {"cpu": {("wanet", "vgg19_bn"): 24}}


def get_preset(name: str, attack: str | None = None, arch: str | None = None,
               **overrides: Any) -> Preset:
    """The preset ``name`` with the given fields replaced (``None`` values are ignored).

    With ``attack`` and ``arch``, a pair listed in ``PAIR_EPOCHS`` gets its epochs, unless
    ``epochs`` is among the overrides.
    """
    check_choice("preset", name, PRESETS)
    changes = {k: v for k, v in overrides.items() if v is not None}
    pair_epochs = PAIR_EPOCHS.get(name, {}).get((attack or "", arch or ""))
    if pair_epochs is not None:
        changes.setdefault("epochs", pair_epochs)
    return PRESETS[name].replace(**changes)
