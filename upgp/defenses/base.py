"""What every defense shares: the registry, configs scaled per preset, and BatchNorm-neuron tools.

A defense is a function ``(model, reserve, config, train_set=None) -> (model, report)``: it gets
a backdoored model, the clean reserve ``(x, y)`` (uint8 images, labels) and its config, and
returns a new model of the same architecture (the input model is never modified) plus a JSON-able
report. Only training-time defenses (ABL) and UPGP, which score the training set, also receive the
poisoned training set ``(x, y)``: never its poison record, never test data. Adding a defense is
one module with a ``@register_defense`` function plus its import line in ``__init__.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..presets import Preset, Settings, check_choice
from ..train import accuracy, autocast, batches, fit, to_float

Data = tuple[Tensor, Tensor]
Report = dict[str, Any]


@dataclass(frozen=True)
class DefenseConfig(Settings):
    """Fields every defense config has; subclasses add theirs (defaults: the cpu preset)."""

    seed: int = 0
    bf16: bool = True


@dataclass(frozen=True)
class MaskPruningConfig(DefenseConfig):
    """Shared by the defenses that learn a mask per BatchNorm channel and prune by it (ANP, RNP)."""

    threshold: float = 0.2  # prune channels whose mask ends below this (BackdoorBench)
    acc_ratio: float = 0.9  # cap: keep reserve accuracy >= this share of the original


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense: its function, config class and per-preset config changes."""

    name: str
    run: Callable[..., tuple[nn.Module, Report]]
    config: Callable[..., Any]  # a config class, or a function of its fields that builds one
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    needs_train_set: bool = False


DEFENSES: dict[str, DefenseSpec] = {}


def register_defense(name: str, config: Callable[..., Any],
                     presets: dict[str, dict[str, Any]] | None = None,
                     needs_train_set: bool = False) -> Callable:
    """Register ``fn`` under ``name``; ``presets`` maps a preset name to config changes."""
    def wrap(fn: Callable[..., tuple[nn.Module, Report]]) -> Callable:
        DEFENSES[name] = DefenseSpec(name, fn, config, presets or {}, needs_train_set)
        return fn

    return wrap


def get_defense(name: str) -> DefenseSpec:
    check_choice("defense", name, sorted(DEFENSES))
    return DEFENSES[name]


def defense_config(name: str, preset: Preset, seed: int = 0, **changes: Any) -> Any:
    """The config of defense ``name`` at ``preset`` (its precision, seed), with ``changes``."""
    spec = get_defense(name)
    base = spec.config(seed=seed, bf16=preset.bf16)
    return base.replace(**{**spec.presets.get(preset.name, {}), **changes})


def defend(name: str, model: nn.Module, reserve: Data, config: Any = None,
           train_set: Data | None = None) -> tuple[nn.Module, Report]:
    """Run defense ``name``; ``config`` defaults to the cpu-preset config."""
    spec = get_defense(name)
    if spec.needs_train_set and train_set is None:
        raise ValueError(f"defense {name!r} needs the poisoned training set (train_set=...)")
    config = config if config is not None else spec.config()
    if spec.needs_train_set:
        return spec.run(model, reserve, config, train_set)
    return spec.run(model, reserve, config)


def fine_tune(model: nn.Module, reserve: Data, epochs: int, lr: float, batch_size: int,
              config: DefenseConfig, **kwargs: Any) -> dict[str, float]:
    """Fine-tune ``model`` in place on the reserve: SGD, cosine schedule, crop + flip."""
    return fit(model, reserve[0], reserve[1], epochs, batch_size, lr, "cosine", config.bf16,
               config.seed, **kwargs)


def ascent_epoch(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                 opt: torch.optim.Optimizer, gen: torch.Generator, bf16: bool) -> None:
    """One epoch of gradient ascent on CE over (x, y), i.e. SGD on -CE(f(x), y) (ABL, RNP)."""
    device = next(model.parameters()).device
    for idx in batches(len(y), batch_size, gen):
        with autocast(device, bf16):
            logits = model(to_float(x[idx], device))
        loss = -F.cross_entropy(logits.float(), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def mask_step(opt: torch.optim.Optimizer, masks: dict[str, Tensor], loss: Tensor) -> None:
    """One optimiser step on the neuron masks, then clamp them to [0, 1] (ANP, RNP)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for m in masks.values():
            m.clamp_(0.0, 1.0)


def batch_norms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The model's BatchNorm2d layers by name: the "neurons" that ANP and RNP mask and prune."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def neuron_masks(model: nn.Module, value: float = 1.0) -> dict[str, Tensor]:
    """One trainable mask entry per BatchNorm channel, all set to ``value``."""
    device = next(model.parameters()).device
    return {name: torch.full((bn.num_features,), value, device=device, requires_grad=True)
            for name, bn in batch_norms(model).items()}


def masked_forward(model: nn.Module, x: Tensor, weight_scale: dict[str, Tensor],
                   bias_scale: dict[str, Tensor] | None = None) -> Tensor:
    """f(x) with every BatchNorm's gamma_c scaled by ``weight_scale`` and beta_c by ``bias_scale``.

    Uses ``torch.func.functional_call``: the model's own parameters are not touched, and
    gradients flow to the scales.
    """
    params = dict(model.named_parameters())
    changed = {}
    for name, scale in weight_scale.items():
        changed[f"{name}.weight"] = params[f"{name}.weight"].detach() * scale
        if bias_scale is not None:
            changed[f"{name}.bias"] = params[f"{name}.bias"].detach() * bias_scale[name]
    return functional_call(model, changed, (x,))


def _switch_off(model: nn.Module, channels: list[tuple[str, int]], zero_bias: bool) -> nn.Module:
    """A copy of ``model`` with gamma_c = 0 (and beta_c = 0 if ``zero_bias``) for each channel."""
    out = copy.deepcopy(model)
    norms = batch_norms(out)
    with torch.no_grad():
        for name, c in channels:
            norms[name].weight[c] = 0.0
            if zero_bias:
                norms[name].bias[c] = 0.0
    return out


def prune_by_mask(model: nn.Module, masks: dict[str, Tensor], threshold: float, reserve: Data,
                  acc_ratio: float, zero_bias: bool = False, bf16: bool = True
                  ) -> tuple[nn.Module, Report]:
    """Prune the channels whose mask is below ``threshold``, lowest mask first, but no more than
    keeps reserve accuracy >= ``acc_ratio`` x the unpruned model's (largest such count, found by
    bisection). Reads only the reserve. Returns the pruned copy and what was pruned.
    """
    candidates = sorted((float(v), name, c) for name, m in masks.items()
                        for c, v in enumerate(m.detach().cpu().tolist()) if v < threshold)
    channels = [(name, c) for _, name, c in candidates]
    base = accuracy(model, *reserve, bf16=bf16)

    def acc(k: int) -> float:
        return accuracy(_switch_off(model, channels[:k], zero_bias), *reserve, bf16=bf16)

    lo, hi = 0, len(channels)  # invariant: acc(lo) is acceptable
    if acc(hi) >= acc_ratio * base:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if acc(mid) >= acc_ratio * base:
            lo = mid
        else:
            hi = mid
    pruned = _switch_off(model, channels[:lo], zero_bias)
    return pruned, {"below_threshold": len(channels), "pruned_neurons": lo,
                    "neurons": sum(len(m) for m in masks.values()),
                    "reserve_accuracy": [base, accuracy(pruned, *reserve, bf16=bf16)]}


__all__ = ["DEFENSES", "Data", "DefenseConfig", "DefenseSpec", "MaskPruningConfig", "Report",
           "ascent_epoch", "batch_norms", "defend", "defense_config", "fine_tune",
           "get_defense", "mask_step", "masked_forward", "neuron_masks", "prune_by_mask", "register_defense"]
