"""A backdoor scenario and its models, with the model cache.

``backdoored_model(attack, arch, preset, seed)`` builds a whole scenario: the data, the clean
defense reserve, the poisoned training set, the triggered test set, and a model trained on the
poisoned set (cached under a hash of everything that determines it). ``clean_reference`` gives
the backdoor-free model of the same architecture, preset and seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import (
    Attack,
    PoisonedSet,
    create_attack,
    per_batch_poisoning,
    poison_dataset,
    triggered_test_set,
)
from .data import ImageData, load_dataset, split_reserve
from .io import cache_dir, config_hash, load_tensors, save_tensors
from .metrics import backdoor_rates
from .models import create_model
from .presets import Preset, get_preset
from .train import BatchTransform, default_device, predict, train

_DATA_MEMO: dict[tuple, tuple[ImageData, str]] = {}


def load_data_cached(preset: Preset, data: str | Path | None, seed: int) -> tuple[ImageData, str]:
    """The preset's dataset and a content fingerprint of it (memoised in this process)."""
    key = (preset.dataset, str(data), seed if preset.dataset == "synthetic" else None)
    if key not in _DATA_MEMO:
        images = load_dataset(preset.dataset, data, seed=0)
        digest = hashlib.sha256()
        for t in (images.x_train, images.y_train, images.x_test, images.y_test):
            digest.update(t.numpy().tobytes())
        _DATA_MEMO[key] = (images, digest.hexdigest()[:16])
    return _DATA_MEMO[key]


@dataclass
class Scenario:
    """One backdoor setting: what the defender holds and what only the evaluator may see.

    Defender: ``model`` (trained on ``train``), ``train.x``/``train.y`` (poisoned training set,
    without its poison record) and the clean ``reserve_x``/``reserve_y``.
    Evaluator only: ``train.poison_idx``, the test sets.
    """

    attack: Attack
    arch: str
    preset: Preset
    seed: int
    data_source: str
    classes: tuple[str, ...]  # class names, by label
    train: PoisonedSet
    reserve_x: Tensor
    reserve_y: Tensor
    x_test: Tensor
    y_test: Tensor
    x_triggered: Tensor
    y_triggered: Tensor
    t_triggered: Tensor  # backdoor label of each triggered test image
    model: nn.Module | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """ACC / ASR / RA (in %) of ``model`` (default: the backdoored model)."""
        return self.evaluate_with_counts(model)[0]

    def triggered_predictions(self, model: nn.Module | None = None) -> list[int]:
        """How many triggered test images ``model`` (default: the backdoored one) puts in each
        class: where the images go that a defense turned away from the backdoor label."""
        pred = predict(model or self.model, self.x_triggered, self.preset.eval_batch,
                       self.preset.bf16)
        return torch.bincount(pred, minlength=self.num_classes).tolist()

    def evaluate_with_counts(self, model: nn.Module | None = None
                             ) -> tuple[dict[str, float], list[int]]:
        """``evaluate`` and ``triggered_predictions`` from one pass over each test set."""
        model = model or self.model
        trig = predict(model, self.x_triggered, self.preset.eval_batch, self.preset.bf16)
        pred = predict(model, self.x_test, self.preset.eval_batch, self.preset.bf16)
        return (backdoor_rates(pred, self.y_test, trig, self.y_triggered, self.t_triggered),
                torch.bincount(trig, minlength=self.num_classes).tolist())

    def describe(self) -> dict[str, Any]:
        """Everything that identifies this run, for reports next to its numbers."""
        return {"attack": self.attack.name, "attack_params": self.attack.params(),
                "arch": self.arch, "preset": self.preset.name, "scale": self.preset.scale_label(),
                "width": self.preset.width, "epochs": self.preset.epochs, "seed": self.seed,
                "data": self.data_source, "data_fingerprint": self.info.get("data_fingerprint"),
                "poison_ratio": self.preset.poison_ratio, "target": self.preset.target,
                "label_mode": self.attack.label_mode,
                "reserve_size": len(self.reserve_y), "train_size": len(self.train.y),
                "poisoned": len(self.train.poison_idx)}


SURROGATE_ARCH = "preact_resnet18"
SURROGATE_UNUSED = ("poison_ratio", "target")  # preset fields a clean surrogate's training ignores


def machine() -> str:
    """Where a model was trained, for its training info: 'x86_64 2 threads, cpu'."""
    return f"{platform.machine()} {torch.get_num_threads()} threads, {default_device().type}"


def cached_training(path: Path, arch: str, num_classes: int, x: Tensor, y: Tensor,
                    preset: Preset, seed: int, progress: bool = True,
                    batch_transform: BatchTransform | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """A model of ``arch`` trained on (x, y) at the preset: loaded from ``path``, or trained and
    saved there. Returns the model (eval mode) and its training info (with ``cache_hit``).

    A freshly trained model is returned as it would be loaded from the cache (a new module from
    the saved weights), so what follows gives the same numbers on a cache hit and a miss: the
    trained module itself is channels-last, which picks other CPU kernels than a loaded one.
    """
    record = os.environ.get("UPGP_RECORD_MODELS")  # upgp.plan's check: which models ran
    if record:
        with open(record, "a") as log:
            log.write(path.name + "\n")
    torch.manual_seed(seed)  # the initial weights are part of what the seed fixes
    model = create_model(arch, num_classes, preset.width)
    cached = load_tensors(path)
    hit = cached is not None
    if not hit:
        start = time.perf_counter()
        info = train(model, x, y, preset, seed, progress=progress, batch_transform=batch_transform)
        info["wall_seconds"] = time.perf_counter() - start
        info["machine"] = machine()
        cached = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "info": info}
        save_tensors(path, cached)
        model = create_model(arch, num_classes, preset.width)
    model.load_state_dict(cached["state_dict"])
    return model.to(default_device()).eval(), {**cached["info"], "cache_hit": hit}


def clean_model_path(arch: str, preset: Preset, seed: int, fingerprint: str) -> Path:
    """Where ``clean_model`` caches a model of ``arch`` trained without poison at ``preset``
    (its poisoning fields left out, so that every poisoning ratio shares one clean model)."""
    training = {k: v for k, v in dataclasses.asdict(preset).items() if k not in SURROGATE_UNUSED}
    key = config_hash("clean-surrogate", arch, training, seed, fingerprint)
    return cache_dir() / "models" / f"clean-{arch}-{key}.pt"


def clean_model(x: Tensor, y: Tensor, preset: Preset, seed: int, fingerprint: str,
                num_classes: int, arch: str = SURROGATE_ARCH, progress: bool = True
                ) -> tuple[nn.Module, str, dict]:
    """A model of ``arch`` trained on clean data at the preset: the surrogate that some attacks
    craft their poisons against (LC), and the backdoor-free reference of ``clean_reference``.

    Cached like the backdoored models; returns (model, cache name, training info).
    """
    path = clean_model_path(arch, preset, seed, fingerprint)
    model, info = cached_training(path, arch, num_classes, x, y, preset, seed, progress)
    return model, path.name, info


def clean_reference(scenario: Scenario, data: str | Path | None = None,
                    progress: bool = True) -> dict[str, float]:
    """ACC / ASR / RA of a backdoor-free model: the scenario's architecture and preset trained on
    the same (non-reserve) training images without poisoning.

    Its RA, the accuracy of a model that never learnt the backdoor on the triggered test images,
    is about the most a defense can restore: full-image triggers (Blended, SIG) cost accuracy by
    themselves.
    """
    return scenario.evaluate(clean_reference_model(scenario, data, progress))


def clean_reference_model(scenario: Scenario, data: str | Path | None = None,
                          progress: bool = True) -> nn.Module:
    """The backdoor-free model of ``clean_reference`` (cached)."""
    return _clean_reference(scenario, data, progress)[0]


def _clean_reference(scenario: Scenario, data: str | Path | None, progress: bool
                     ) -> tuple[nn.Module, str, dict]:
    """The backdoor-free reference model, its file name in the model cache and its training
    info."""
    images, fingerprint = load_data_cached(scenario.preset, data, scenario.seed)
    if fingerprint != scenario.info["data_fingerprint"]:
        raise ValueError(f"data {images.source!r} is not the copy this scenario was built from "
                         f"(fingerprint {fingerprint}, expected {scenario.info['data_fingerprint']})")
    train_idx, _ = split_reserve(len(images.y_train), scenario.preset.reserve_ratio, scenario.seed)
    return clean_model(images.x_train[train_idx], images.y_train[train_idx], scenario.preset,
                       scenario.seed, fingerprint, images.num_classes, scenario.arch, progress)


def clean_scenario(scenario: Scenario, data: str | Path | None = None,
                   progress: bool = True) -> Scenario:
    """The scenario with nothing to remove: its backdoor-free reference model (``clean_reference``)
    and the clean training set it was trained on, with the same reserve and test sets (ASR and
    RA still measured with the scenario's trigger). What a defense must leave as it was."""
    images, _ = load_data_cached(scenario.preset, data, scenario.seed)
    train_idx, _ = split_reserve(len(images.y_train), scenario.preset.reserve_ratio, scenario.seed)
    none = torch.empty(0, dtype=torch.long)
    train = PoisonedSet(images.x_train[train_idx], images.y_train[train_idx], none, none,
                        scenario.preset.target)
    model, name, training = _clean_reference(scenario, data, progress)
    # its own model file names what is cached for it, apart from the backdoored model's runs;
    # its own training info (time, final loss) replaces the backdoored model's
    clean = dataclasses.replace(scenario, train=train, model=model,
                                info={**scenario.info, **training, "model_cache": name})
    clean.metrics = clean.evaluate()
    return clean


def learned_trigger(attack: Attack, arch: str, preset: Preset, seed: int, fingerprint: str,
                    x: Tensor, y: Tensor, num_classes: int, progress: bool = True
                    ) -> dict[str, Any]:
    """For attacks whose trigger is trained with the classifier (IAD): load both from the model
    cache, or train them together on the clean (x, y) and cache them. Returns the trigger's
    training info (its cost is reported apart from the classifier's)."""
    path = backdoored_model_path(attack, arch, preset, seed, fingerprint)
    cached = load_tensors(path)
    if cached is not None and "trigger" in cached:
        attack.load_trigger_state(cached["trigger"])
        return {**cached["info"].get("trigger", {}), "cache_hit": True}
    torch.manual_seed(seed)
    model = create_model(arch, num_classes, preset.width)
    info = {**attack.train_with(model, x, y, preset, seed, num_classes, progress),
            "machine": machine()}
    save_tensors(path, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                        "info": {**info, "trigger": {"mask_seconds": info["mask_seconds"]}},
                        "trigger": attack.trigger_state()})
    return {"mask_seconds": info["mask_seconds"], "cache_hit": False}


def build_scenario(attack: str | Attack = "badnets", arch: str = "preact_resnet18",
                   preset: str | Preset = "cpu", seed: int = 0, data: str | Path | None = None,
                   attack_params: dict[str, Any] | None = None, progress: bool = True,
                   **overrides: Any) -> Scenario:
    """Data, reserve split, poisoned training set and triggered test set (no model yet).

    Attacks whose trigger is learnt with the classifier (IAD) are the exception: their trigger
    networks come from the model cache, so building the scenario trains (or loads) the model too.
    """
    attack = attack if isinstance(attack, Attack) else create_attack(attack, **(attack_params or {}))
    preset = (preset if isinstance(preset, Preset)
              else get_preset(preset, attack.name, arch, **overrides))
    create_model(arch)  # fail early on an unknown architecture
    images, fingerprint = load_data_cached(preset, data, seed)
    if not 0 <= preset.target < images.num_classes:
        raise ValueError(f"target label {preset.target} is outside 0..{images.num_classes - 1} "
                         f"(the {images.num_classes} classes of {images.source})")
    train_idx, reserve_idx = split_reserve(len(images.y_train), preset.reserve_ratio, seed)
    attack_info = {}
    if attack.needs_surrogate:
        surrogate, name, info = clean_model(images.x_train[train_idx], images.y_train[train_idx],
                                            preset, seed, fingerprint, images.num_classes,
                                            progress=progress)
        attack.set_surrogate(surrogate, name)
        attack_info["surrogate"] = {"model": name, "train_seconds": info["train_seconds"],
                                    "cache_hit": info["cache_hit"]}
    if attack.learned and not attack.ready:
        attack_info["trigger"] = learned_trigger(attack, arch, preset, seed, fingerprint,
                                                 images.x_train[train_idx],
                                                 images.y_train[train_idx], images.num_classes,
                                                 progress)
    start = time.perf_counter()
    poisoned = poison_dataset(attack, images.x_train[train_idx], images.y_train[train_idx],
                              preset.poison_ratio, preset.target, seed)
    x_trig, y_trig, t_trig = triggered_test_set(attack, images.x_test, images.y_test,
                                                preset.target, images.num_classes)
    scenario = Scenario(attack, arch, preset, seed, images.source, images.classes, poisoned,
                        images.x_train[reserve_idx], images.y_train[reserve_idx],
                        images.x_test, images.y_test, x_trig, y_trig, t_trig)
    attack_info["poisoning_seconds"] = time.perf_counter() - start
    scenario.info.update(data_fingerprint=fingerprint, attack_cost=attack_info)
    return scenario


def backdoored_model_path(attack: Attack, arch: str, preset: Preset, seed: int,
                          fingerprint: str) -> Path:
    """Where a model of ``arch`` backdoored by ``attack`` at ``preset`` and ``seed`` on the data
    copy ``fingerprint`` is cached (a hash of all of it)."""
    key = config_hash(arch, preset, seed, attack.name, attack.params(), fingerprint)
    return cache_dir() / "models" / f"{attack.name}-{arch}-{key}.pt"


def model_cache_path(scenario: Scenario) -> Path:
    """Where the scenario's model is cached (a hash of all that determines it): the backdoored
    model, or for a ``clean_scenario`` the backdoor-free one, so that runs cached under it
    never mix."""
    if "model_cache" in scenario.info:
        return cache_dir() / "models" / scenario.info["model_cache"]
    return backdoored_model_path(scenario.attack, scenario.arch, scenario.preset, scenario.seed,
                       scenario.info["data_fingerprint"])


def backdoored_model(attack: str | Attack = "badnets", arch: str = "preact_resnet18",
                     preset: str | Preset = "cpu", seed: int = 0, data: str | Path | None = None,
                     attack_params: dict[str, Any] | None = None, progress: bool = True,
                     **overrides: Any) -> Scenario:
    """A scenario with its backdoored model: loaded from the cache, or trained and cached."""
    scenario = build_scenario(attack, arch, preset, seed, data, attack_params, progress,
                              **overrides)
    train_set = scenario.train
    per_batch = train_set.clean_x is not None  # WaNet/BPP with per_batch=True
    model, info = cached_training(model_cache_path(scenario), arch, scenario.num_classes,
                                  train_set.clean_x if per_batch else train_set.x, train_set.y,
                                  scenario.preset, seed, progress,
                                  per_batch_poisoning(scenario.attack, train_set) if per_batch
                                  else None)
    scenario.info.update(info)
    if scenario.info["attack_cost"].get("trigger", {}).get("cache_hit") is False:
        scenario.info["cache_hit"] = False  # trained just now, with its trigger (IAD)
    scenario.model = model
    scenario.metrics = scenario.evaluate()
    return scenario


