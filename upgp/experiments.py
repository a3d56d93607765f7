"""The few high-level calls that the CLI and the notebooks make.

``backdoored_model(attack, arch, preset, seed)`` builds a whole scenario: the data, the clean
defense reserve, the poisoned training set, the triggered test set, and a model trained on the
poisoned set (cached under a hash of everything that determines it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
from .defenses import defend, defense_config, get_defense
from .defenses.upgp import UPGP_DEFENSES
from .io import cache_dir, config_hash, load_json, load_tensors, save_tensors, write_json
from .method import (
    UPGPConfig,
    detect_from_config,
    flat_delta,
    label_median_ratio,
    mean_gradient,
    per_sample_dot,
    per_sample_outputs,
    perturb_and_score,
    perturb_from_config,
    split_holdout,
    subsample_reserve,
    upgp_defend,
)
from .metrics import auroc, backdoor_rates, der, detection_metrics
from .models import create_model
from .presets import Preset, get_preset
from .reemergence import RetuneConfig, retune, retuning_set
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


def clean_model(x: Tensor, y: Tensor, preset: Preset, seed: int, fingerprint: str,
                num_classes: int, arch: str = SURROGATE_ARCH, progress: bool = True
                ) -> tuple[nn.Module, str, dict]:
    """A model of ``arch`` trained on clean data at the preset: the surrogate that some attacks
    craft their poisons against (LC), and the backdoor-free reference of ``clean_reference``.

    Cached like the backdoored models; returns (model, cache name, training info).
    """
    training = {k: v for k, v in dataclasses.asdict(preset).items()
                if k not in SURROGATE_UNUSED}  # so every poisoning ratio shares one clean model
    key = config_hash("clean-surrogate", arch, training, seed, fingerprint)
    path = cache_dir() / "models" / f"clean-{arch}-{key}.pt"
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
    images, fingerprint = load_data_cached(scenario.preset, data, scenario.seed)
    if fingerprint != scenario.info["data_fingerprint"]:
        raise ValueError(f"data {images.source!r} is not the copy this scenario was built from "
                         f"(fingerprint {fingerprint}, expected {scenario.info['data_fingerprint']})")
    train_idx, _ = split_reserve(len(images.y_train), scenario.preset.reserve_ratio, scenario.seed)
    model, _, _ = clean_model(images.x_train[train_idx], images.y_train[train_idx], scenario.preset,
                              scenario.seed, fingerprint, images.num_classes, scenario.arch, progress)
    return model


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
    clean = dataclasses.replace(scenario, train=train,
                                model=clean_reference_model(scenario, data, progress))
    clean.metrics = clean.evaluate()
    return clean


def learned_trigger(attack: Attack, arch: str, preset: Preset, seed: int, fingerprint: str,
                    x: Tensor, y: Tensor, num_classes: int, progress: bool = True
                    ) -> dict[str, Any]:
    """For attacks whose trigger is trained with the classifier (IAD): load both from the model
    cache, or train them together on the clean (x, y) and cache them. Returns the trigger's
    training info (its cost is reported apart from the classifier's)."""
    path = _model_path(attack, arch, preset, seed, fingerprint)
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


def _model_path(attack: Attack, arch: str, preset: Preset, seed: int, fingerprint: str) -> Path:
    key = config_hash(arch, preset, seed, attack.name, attack.params(), fingerprint)
    return cache_dir() / "models" / f"{attack.name}-{arch}-{key}.pt"


def model_cache_path(scenario: Scenario) -> Path:
    """Where the scenario's backdoored model is cached (a hash of all that determines it)."""
    return _model_path(scenario.attack, scenario.arch, scenario.preset, scenario.seed,
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


@dataclass
class DefenseRun:
    """A defense's JSON-able result row, plus what a fresh (uncached) run also returns.

    ``scores``/``flagged``/``suspicion``: the training-set sensitivity scores, the flagged indices
    and the suspicion ranking (kept in the cache, for plots). ``model`` and ``report`` are None
    when the result came from the cache.
    """

    result: dict[str, Any]
    scores: Tensor
    flagged: Tensor
    suspicion: Tensor
    model: nn.Module | None = None
    report: Any = None


def defense_result(scenario: Scenario, defense: str, config: Any, model: nn.Module,
                   wall_seconds: float) -> dict[str, Any]:
    """The evaluation row every defense run gets: the run, its config, ACC/ASR/RA before and
    after, DER, wall time and one training epoch's time (for scale)."""
    after, counts = scenario.evaluate_with_counts(model)
    return {"run": scenario.describe(), "defense": defense, "config": dataclasses.asdict(config),
            "before": scenario.metrics, "after": after, "der": der(scenario.metrics, after),
            "triggered_predictions": counts,
            "wall_seconds": wall_seconds,
            "train_epoch_seconds": scenario.info.get("train_seconds", float("nan"))
            / scenario.preset.epochs}


def run_upgp(scenario: Scenario, config: UPGPConfig | None = None,
             flagged: Tensor | None = None, use_cache: bool = True,
             reserve_size: int = 0) -> DefenseRun:
    """Run UPGP on a scenario's backdoored model and evaluate it (ACC/ASR/RA, DER, detection).

    ``reserve_size`` > 0 gives the defense a seeded subset of that many reserve images (the
    reserve-size ablation). Results are cached under the backdoored model, the config, the given
    flagged set and the reserve size, so notebooks and the CLI share finished runs.
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    key = config_hash(model_cache_path(scenario).name, config,
                      None if flagged is None else flagged.tolist(),
                      *((reserve_size,) if reserve_size else ()))  # keys made before it stay valid
    path = cache_dir() / "defenses" / f"upgp-{scenario.attack.name}-{scenario.arch}-{key}.pt"
    cached = load_tensors(path) if use_cache else None
    if cached is not None:  # the key fixes the scenario; its description follows the code's
        return DefenseRun({**json.loads(cached["result"]), "run": scenario.describe()},
                          cached["scores"], cached["flagged"], cached["suspicion"])
    reserve = subsample_reserve(scenario.reserve_x, scenario.reserve_y, reserve_size,
                                scenario.seed)
    start = time.perf_counter()
    model, report = upgp_defend(scenario.model, (scenario.train.x, scenario.train.y), reserve,
                                config, flagged=flagged)
    result = defense_result(scenario, "upgp", config, model, time.perf_counter() - start)
    result.update(detection=report.detection.evaluate(scenario.train.is_poisoned),
                  upgp=report.summary(), reserve_size=len(reserve[1]))
    run = DefenseRun(result, report.scores, report.detection.flagged, report.detection.suspicion,
                     model, report)
    save_tensors(path, {"result": json.dumps(result, default=str), "scores": run.scores,
                        "flagged": run.flagged, "suspicion": run.suspicion})
    return run


def upgp_with_predictions(scenario: Scenario, config: UPGPConfig | None = None) -> DefenseRun:
    """``run_upgp``, rerun (and recached) when its cached result predates the count of the
    defended model's predictions on the triggered test images (``triggered_predictions``)."""
    run = run_upgp(scenario, config)
    return run if "triggered_predictions" in run.result else run_upgp(scenario, config,
                                                                        use_cache=False)


TRAJECTORY_COLUMNS = ("steps", "acc", "asr", "ra", "flagged_accuracy", "holdout_accuracy")


def removal_trajectory(scenario: Scenario, config: UPGPConfig | None = None,
                       max_steps: int = 200, every: int = 10) -> list[dict[str, Any]]:
    """ACC/ASR/RA of the model along UPGP's removal loop, every ``every`` steps up to
    ``max_steps``, with the stopping rules switched off (the removal-budget ablation).

    Each row also holds what the defender sees at that step (flagged-set accuracy, held-out
    reserve accuracy), so the default stopping rule can be placed on the curve; no rows where
    detection finds nothing to remove. Cached as JSON.
    """
    config = (config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)).replace(
        removal_max_steps=max_steps, check_every=every, stop_flagged_accuracy=-1.0,
        max_holdout_drop=1.0)
    key = config_hash(model_cache_path(scenario).name, "trajectory", config)
    path = (cache_dir() / "defenses"
            / f"trajectory-{scenario.attack.name}-{scenario.arch}-{key}.json")
    cached = load_json(path)
    if cached is not None:  # in the order of a fresh run (the JSON file sorts its keys)
        return [{k: row[k] for k in TRAJECTORY_COLUMNS} for row in cached]
    rows: list[dict[str, Any]] = []
    _, report = upgp_defend(scenario.model, (scenario.train.x, scenario.train.y),
                            (scenario.reserve_x, scenario.reserve_y), config,
                            on_check=lambda step, m: rows.append(
                                {"steps": step, **scenario.evaluate(m)}))
    for row, flagged, holdout in zip(rows, report.removal.flagged_accuracy,
                                     report.removal.holdout_accuracy, strict=True):
        row.update(flagged_accuracy=flagged, holdout_accuracy=holdout)
    write_json(path, rows)
    return rows


def run_defense(scenario: Scenario, defense: str = "upgp", config: Any = None,
                use_cache: bool = True) -> dict[str, Any]:
    """Run a registered defense on the scenario's backdoored model; the JSON-able result row.

    The defense sees the model, the clean reserve and (ABL, UPGP only) the poisoned training set;
    the evaluation (ACC/ASR/RA before and after, DER, detection metrics of any flagged set) is
    done here, after it returns. Results are cached like the models, by everything that
    determines them.
    """
    spec = get_defense(defense)
    config = config if config is not None else defense_config(defense, scenario.preset,
                                                              scenario.seed)
    if defense in UPGP_DEFENSES:  # shares run_upgp's cache (scores and flagged set kept)
        return {**run_upgp(scenario, config, use_cache=use_cache).result, "defense": defense}
    key = config_hash(model_cache_path(scenario).name, defense, config)
    path = cache_dir() / "defenses" / f"{defense}-{scenario.attack.name}-{scenario.arch}-{key}.json"
    cached = load_json(path) if use_cache else None
    if cached is not None:
        return {**cached, "run": scenario.describe()}
    train_set = (scenario.train.x, scenario.train.y) if spec.needs_train_set else None
    start = time.perf_counter()
    model, report = defend(defense, scenario.model, (scenario.reserve_x, scenario.reserve_y),
                           config, train_set)
    result = defense_result(scenario, defense, config, model, time.perf_counter() - start)
    result["report"] = {k: v for k, v in report.items() if k != "flagged"}
    if "flagged" in report:  # the samples a training-set defense isolated
        result["detection"] = detection_metrics(scenario.train.is_poisoned, report["flagged"])
    write_json(path, result)
    return result


def sensitivity_analysis(scenario: Scenario, config: UPGPConfig | None = None
                         ) -> dict[str, Any]:
    """Steps 1-2 of UPGP only: the perturbation and every sample's score, with AUROC.

    Returns scores (one per training sample), the poison mask (evaluation only), the reserve
    accuracy trajectory and the detection AUROC of the score (low score = suspicious).
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    x_fit, y_fit, x_hold, y_hold = split_holdout(scenario.reserve_x, scenario.reserve_y,
                                                 config.holdout_ratio, config.seed)
    pert, scores, _ = perturb_and_score(scenario.model, scenario.train.x, scenario.train.y,
                                        (x_fit, y_fit), (x_hold, y_hold), config)
    truth = scenario.train.is_poisoned
    return {"scores": scores, "is_poisoned": truth, "steps": pert.steps,
            "reserve_accuracy": pert.reserve_accuracy, "auroc": auroc(truth, -scores),
            "perturbation": pert}


DETECTION_FIELDS = ("calibrate", "rule", "z_threshold", "per_class", "reserve_fpr")


def detection_variants(scenario: Scenario, variants: dict[str, dict[str, Any]],
                       config: UPGPConfig | None = None) -> list[dict[str, Any]]:
    """Steps 1-3 of UPGP once per scenario, then step 3 under each variant of ``config``.

    ``variants`` maps a name to changes of the detection fields (DETECTION_FIELDS) only, so every
    variant sees the same perturbation and scores. One row per variant: its name, the flagged
    count and the detection metrics against the poison mask (evaluation only), and the
    perturbation's ``target_median_ratio`` (``label_median_ratio`` of the attack's target label on
    the held-out reserve; the same in every row), which says which way calibration moves poisons.
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    for name, changes in variants.items():
        other = sorted(set(changes) - set(DETECTION_FIELDS))
        if other:
            raise ValueError(f"detection variant {name!r} changes {other}; a variant may change "
                             f"only: {', '.join(DETECTION_FIELDS)}")
    x_fit, y_fit, x_hold, y_hold = split_holdout(scenario.reserve_x, scenario.reserve_y,
                                                 config.holdout_ratio, config.seed)
    _, scores, reference = perturb_and_score(scenario.model, scenario.train.x, scenario.train.y,
                                             (x_fit, y_fit), (x_hold, y_hold), config)
    ratio = label_median_ratio(reference, y_hold, scenario.preset.target)
    rows = []
    for name, changes in variants.items():
        _, detection = detect_from_config(scores, scenario.train.y, reference, y_hold,
                                          config.replace(**changes))
        rows.append({"variant": name, **detection.evaluate(scenario.train.is_poisoned),
                     "target_median_ratio": ratio})
    return rows


def learning_dynamics(scenario: Scenario, n_samples: int = 256,
                      config: UPGPConfig | None = None) -> dict[str, Any]:
    """The gradient geometry behind the sensitivity gap (method.md §2), on a sample of D.

    For ``n_samples`` clean and ``n_samples`` poisoned training samples: <g_N, g_i> and
    cos(g_N, g_i) with g_N the mean reserve gradient, the first-order predicted loss change
    <g_i, dtheta> for a one-step and for the full unlearning perturbation, and the measured change.
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    gen = torch.Generator().manual_seed(scenario.seed)
    truth = scenario.train.is_poisoned
    pick = []
    for mask in (~truth, truth):
        idx = mask.nonzero().flatten()
        pick.append(idx[torch.randperm(len(idx), generator=gen)[:n_samples]])
    idx = torch.cat(pick)
    x, y, poisoned = scenario.train.x[idx], scenario.train.y[idx], truth[idx]
    x_fit, y_fit, _, _ = split_holdout(scenario.reserve_x, scenario.reserve_y,
                                       config.holdout_ratio, config.seed)
    model = scenario.model
    g_normal = mean_gradient(model, x_fit, y_fit)
    perts = {"one step": perturb_from_config(model, x_fit, y_fit, config, max_steps=1,
                                             stop_accuracy=0.0, bf16=False),
             "full": perturb_from_config(model, x_fit, y_fit, config, bf16=False)}
    deltas = [flat_delta(model, p.delta(model)) for p in perts.values()]
    dots = per_sample_dot(model, x, y, torch.stack([g_normal, *deltas], 1))
    norms = per_sample_dot(model, x, y, None).norm(dim=1)  # holds 2n x P floats at once
    loss_before, _ = per_sample_outputs(model, x, y, bf16=False)
    out = {"poisoned": poisoned, "inner_product": dots[:, 0],
           "cosine": dots[:, 0] / (norms * g_normal.norm()),
           "g_normal_norm": float(g_normal.norm())}
    for i, (name, pert) in enumerate(perts.items()):
        loss_after, _ = per_sample_outputs(pert.model, x, y, bf16=False)
        out[f"predicted {name}"] = dots[:, 1 + i]
        out[f"measured {name}"] = loss_after - loss_before
    return out


REEMERGENCE_REFERENCES = ("backdoored", "clean model")  # probed models that are no defense's


def reemergence(scenario: Scenario, model: str, probe: RetuneConfig,
                config: Any = None, data: str | Path | None = None) -> list[dict[str, float]]:
    """ACC/ASR/RA along the re-emergence probe (``upgp.reemergence.retune``) of one model of the
    scenario: ``backdoored``, ``clean model`` (``clean_reference_model``) or the output of the
    registered defense ``model`` (``config``: default, the preset's).

    Cached as JSON under the backdoored model, the probed model and its config, and the probe's
    settings. Defended weights are not cached: on a miss the defense runs again.
    """
    spec = None if model in REEMERGENCE_REFERENCES else get_defense(model)  # errs if unknown
    if spec is not None and config is None:
        config = defense_config(model, scenario.preset, scenario.seed)
    key = config_hash(model_cache_path(scenario).name, "reemergence", model, config, probe)
    path = (cache_dir() / "defenses"
            / f"reemergence-{scenario.attack.name}-{scenario.arch}-{key}.json")
    cached = load_json(path)
    if cached is not None:  # in the order of a fresh run (the JSON file sorts its keys)
        return [{k: row[k] for k in ("epoch", "acc", "asr", "ra")} for row in cached]
    if spec is not None:
        train_set = (scenario.train.x, scenario.train.y) if spec.needs_train_set else None
        probed, _ = defend(model, scenario.model, (scenario.reserve_x, scenario.reserve_y),
                           config, train_set)
    elif model == "backdoored":
        probed = scenario.model
    else:
        probed = clean_reference_model(scenario, data, progress=False)
    retuning = retuning_set(scenario.attack, scenario.reserve_x, scenario.reserve_y,
                            probe.poisons, scenario.preset.target, probe.seed)
    rows = retune(probed, retuning, scenario.attack, probe, scenario.evaluate)
    write_json(path, rows)
    return rows
