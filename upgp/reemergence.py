"""Re-emergence: does a removed backdoor come back when the defended model is trained further?

A low ASR after a defense can be superficial: the backdoor's features may survive and be relearnt
within a few epochs. Min et al. (NeurIPS 2024, "Uncovering, Explaining, and Mitigating the
Superficial Safety of Backdoor Defense") probe this with a *retuning attack*: fine-tune the
defended model with a very small number of poisoned samples and see whether the backdoor comes
back. ``retune`` runs such a probe (and, with no poisons, plain clean fine-tuning, as a user of
the defended model might do), evaluating along the way; the book sets the ASR it regains beside
what a clean model learns from the same set. Our own settings, not theirs: see ``RetuneConfig``.
``endpoints`` sums a probe's curve up: where ASR started, its peak and where it ended.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .attacks import Attack, PoisonedSet, per_batch_poisoning, poison_dataset
from .presets import Preset, Settings
from .train import fit


@dataclass(frozen=True)
class RetuneConfig(Settings):
    """Fine-tuning of the re-emergence probe: SGD (Nesterov, momentum 0.9, weight decay 5e-4),
    cosine schedule from ``lr``, crop + flip, on the clean reserve plus ``poisons`` triggered
    reserve images; ACC/ASR/RA every ``every`` epochs."""

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128
    poisons: int = 0  # reserve images given the trigger and the backdoor label (0: clean)
    every: int = 2
    seed: int = 0
    bf16: bool = True


PRESET_CHANGES = {"smoke": {"epochs": 2, "every": 1, "batch_size": 64}}


def retune_config(preset: Preset, seed: int = 0, **changes: Any) -> RetuneConfig:
    """The probe's settings at ``preset`` (fewer epochs at smoke), with ``changes``."""
    return RetuneConfig(seed=seed, bf16=preset.bf16).replace(
        **{**PRESET_CHANGES.get(preset.name, {}), **changes})


def retuning_set(attack: Attack, x: Tensor, y: Tensor, poisons: int, target: int,
                 seed: int) -> PoisonedSet:
    """The reserve ``(x, y)`` with ``poisons`` of its images poisoned by the attack's own rule
    (``poison_dataset``: drawn outside the target class and relabelled, or from it for
    clean-label attacks); ``poisons=0`` leaves it clean."""
    if poisons < 0 or poisons >= len(y):
        raise ValueError(f"retuning poisons {poisons} is outside 0..{len(y) - 1} "
                         f"(the reserve holds {len(y)} images)")
    if poisons == 0:
        empty = torch.empty(0, dtype=torch.long)
        return PoisonedSet(x, y, empty, empty, target)
    return poison_dataset(attack, x, y, poisons / len(y), target, seed)


def retune(model: nn.Module, data: PoisonedSet, attack: Attack, config: RetuneConfig,
           evaluate: Callable[[nn.Module], dict[str, float]]) -> list[dict[str, float]]:
    """Fine-tune a copy of ``model`` on ``data`` and return ``evaluate`` of it at epoch 0 and
    every ``config.every`` epochs (and at the end), each row with its ``epoch``.

    Attacks that trigger each augmented batch (WaNet, BPP with ``per_batch``) get their poisons
    the same way here as in training (``per_batch_poisoning``).
    """
    model = copy.deepcopy(model)
    per_batch = data.clean_x is not None and len(data.poison_idx) > 0
    x = data.clean_x if per_batch else data.x
    steps_per_epoch = max(1, len(x) // min(config.batch_size, len(x)))
    rows = [{"epoch": 0, **evaluate(model)}]
    step = 0

    def after_step(m: nn.Module) -> None:
        nonlocal step
        step += 1
        if step % (config.every * steps_per_epoch) == 0 or step == config.epochs * steps_per_epoch:
            rows.append({"epoch": step // steps_per_epoch, **evaluate(m)})

    fit(model, x, data.y, config.epochs, config.batch_size, config.lr, "cosine", config.bf16,
        config.seed, after_step=after_step,
        batch_transform=per_batch_poisoning(attack, data) if per_batch else None)
    return rows


ENDPOINTS = ["asr_start", "asr_max", "asr_end", "acc_end", "ra_end"]


def endpoints(curves: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per probe run (the rows of ``curves`` sharing ``by``, in epoch order): ASR at
    the start, its maximum and at the end, and ACC and RA at the end (``ENDPOINTS``)."""
    runs = curves.groupby(by, sort=False)
    return runs.agg(asr_start=("asr", "first"), asr_max=("asr", "max"), asr_end=("asr", "last"),
                    acc_end=("acc", "last"), ra_end=("ra", "last"))[ENDPOINTS]
