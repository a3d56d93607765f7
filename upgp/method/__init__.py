"""UPGP (Li et al., Pattern Recognition 176, 113211, 2026) as implemented here.

``upgp_defend(model, train_set, reserve, config)`` runs the four steps of ``method.md``:
1. unlearning perturbation from the clean reserve (``perturbation.py``);
2. per-sample sensitivity scores on the training set (``sensitivity.py``);
3. detection of insensitive samples (``detection.py``);
4. unlearning of the flagged set from theta_0 along projected gradients (``unlearning.py``,
   ``projection.py``);
5. optionally, repair on the reserve along gradients projected off the flagged set's
   (``repair.py``; off by default, ``UPGPConfig.with_repair`` turns it on), and further rounds
   of removal + repair while the held-out budget is what stops removal (``removal_rounds``).
The paper's exact score, thresholds and hyperparameters are not public: every choice is a field
of ``UPGPConfig``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..presets import Settings, check_choice
from ..train import accuracy
from .detection import RULES, Detection, detect, robust_z
from .perturbation import UNLEARNING_LOSSES, Perturbation, unlearning_perturbation
from .projection import (
    PROJECTIONS,
    gpm_bases,
    orthonormal_basis,
    project_gpm,
    project_out,
    project_out_per_layer,
    project_out_subspace,
)
from .repair import REPAIR_SELECTIONS, TRIGGER_FORMS, projected_repair
from .sensitivity import (
    SCORES,
    calibrate_on_reserve,
    first_order_loss_change,
    flat_delta,
    gradient_inner_products,
    label_median_ratio,
    mean_gradient,
    per_sample_dot,
    per_sample_gradients,
    per_sample_outputs,
    sensitivity_scores,
)
from .unlearning import REMOVAL_LOSSES, RemovalLog, merge_logs, projected_unlearning


@dataclass(frozen=True)
class UPGPConfig(Settings):
    """Every setting of UPGP (defaults: the CPU-scale choices documented in the book)."""

    # 1. unlearning perturbation
    perturb_loss: str = "max_entropy"  # "max_entropy" or "ascent"
    perturb_lr: float = 0.01
    perturb_batch: int = 256
    perturb_max_steps: int = 50
    perturb_stop_accuracy: float = 0.3  # stop once reserve accuracy <= this
    clip_norm: float = 5.0
    # 2. sensitivity score
    score: str = "loss_after"  # "loss_after", "loss_change", "confidence_change"
    # 3. detection
    calibrate: bool = False  # divide each score by its label's median on the held-out reserve
    rule: str = "gmm"  # "gmm", "robust_z" or "reserve_quantile"
    z_threshold: float = 2.5
    per_class: bool = False
    reserve_fpr: float = 0.01  # reserve_quantile: flag below this quantile of held-out reserve scores
    # 4. removal
    projection: str = "vector"  # "none", "vector", "layer", "subspace", "gpm"
    removal_loss: str = "bounded"  # "bounded" (-log(1 - p_y)), "ascent" (-CE), "max_entropy"
    removal_lr: float = 1e-4
    removal_batch: int = 128
    removal_max_steps: int = 300
    stop_flagged_accuracy: float = 0.1
    max_holdout_drop: float = 0.02  # accept at most 2 points lost on the held-out reserve
    removal_backtracks: int = 0  # on a rejected check: undo, halve the step size, go on (this often)
    check_every: int = 5
    subspace_k: int = 4
    gpm_energy: float = 0.97
    # 5. repair (optional): fine-tune on the reserve along g_N projected off g_B (repair.py)
    repair_steps: int = 0  # per round; 0: the four steps of the paper only
    repair_lr: float = 0.003
    repair_project: bool = True  # False: plain fine-tuning, same stopping rule
    repair_max_flagged_rise: float = 0.05  # stop once B's accuracy on its labels rises this much
    repair_trigger_share: float = 0.0  # share of each repair batch stamped with the trigger estimate
    repair_select: str = "holdout"  # check kept: "holdout" or "stamped" (+ stamped held-out acc)
    repair_trigger: str = "shift"  # form of the stamped trigger: "shift" x + c or "affine" s x + c
    removal_rounds: int = 1  # removal + repair rounds, while the held-out budget stops removal
    # the reserve is split: one part makes gradients, the held-out part judges stopping
    holdout_ratio: float = 0.5
    seed: int = 0
    bf16: bool = True

    # added after results were cached: hashed only when set, so cache keys made before hold
    HASHED_ONLY_WHEN_SET: ClassVar[tuple[str, ...]] = (
        "repair_steps", "repair_lr", "repair_project", "repair_max_flagged_rise", "removal_rounds",
        "repair_trigger_share", "repair_select", "repair_trigger", "calibrate", "reserve_fpr")

    def __post_init__(self) -> None:
        for what, value, allowed in (
                ("unlearning loss", self.perturb_loss, UNLEARNING_LOSSES),
                ("sensitivity score", self.score, SCORES), ("detection rule", self.rule, RULES),
                ("projection", self.projection, PROJECTIONS),
                ("removal loss", self.removal_loss, REMOVAL_LOSSES),
                ("repair selection", self.repair_select, REPAIR_SELECTIONS),
                ("trigger form", self.repair_trigger, TRIGGER_FORMS)):
            check_choice(what, value, allowed)
        if self.removal_rounds < 1 or self.repair_steps < 0:
            raise ValueError(f"removal_rounds {self.removal_rounds} / repair_steps "
                             f"{self.repair_steps}: need removal_rounds >= 1, repair_steps >= 0")
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio {self.holdout_ratio} is outside (0, 1)")

    def with_repair(self, steps: int = 60, rounds: int = 3) -> UPGPConfig:
        """This four-step config plus step 5: ``steps`` repair steps per round, ``rounds`` at most.

        The repair may raise the flagged set's accuracy by ``repair_max_flagged_rise``, so removal
        aims that much lower: target_removal = stop_flagged_accuracy - repair_max_flagged_rise,
        and a round whose removal reaches its target ends at or under the four-step target.
        Where the last round's removal stops above its target (held-out or step budget), the end
        may sit up to the allowed rise above where removal stopped (``flagged_accuracy_after``).
        """
        if self.repair_steps:
            raise ValueError(f"with_repair on a config that already repairs "
                             f"(repair_steps {self.repair_steps}); call it on a four-step config")
        if steps < 1:
            raise ValueError(f"repair steps {steps} must be >= 1 (0 is the four-step config)")
        return self.replace(repair_steps=steps, removal_rounds=rounds,
                            stop_flagged_accuracy=round(
                                self.stop_flagged_accuracy - self.repair_max_flagged_rise, 10))

    def without_projection(self) -> UPGPConfig:
        """The ablation of the projection: the same detection and step budgets, with removal
        (and the repair, when there is one) along the raw gradients (``upgp defend
        --no-projection``)."""
        changes: dict[str, Any] = {"projection": "none"}
        if self.repair_steps:  # repair_project is hashed only when set: leave it alone otherwise
            changes["repair_project"] = False
        return self.replace(**changes)


def perturb_from_config(model: nn.Module, x_fit: Tensor, y_fit: Tensor, config: UPGPConfig,
                        **overrides: Any) -> Perturbation:
    """Step 1, ``unlearning_perturbation`` with the ``perturb_*`` fields of ``config``.

    ``overrides`` replace any of its keyword arguments (``max_steps=1`` gives one step).
    """
    kwargs: dict[str, Any] = dict(
        loss=config.perturb_loss, lr=config.perturb_lr, batch_size=config.perturb_batch,
        max_steps=config.perturb_max_steps, stop_accuracy=config.perturb_stop_accuracy,
        clip_norm=config.clip_norm, seed=config.seed, bf16=config.bf16)
    return unlearning_perturbation(model, x_fit, y_fit, **(kwargs | overrides))


def perturb_and_score(model: nn.Module, x: Tensor, y: Tensor, reserve_fit: tuple[Tensor, Tensor],
                      reserve_hold: tuple[Tensor, Tensor], config: UPGPConfig,
                      seconds: dict[str, float] | None = None
                      ) -> tuple[Perturbation, Tensor, Tensor]:
    """Steps 1-2: the perturbation from unlearning ``reserve_fit``, then the scores of (x, y) and
    of ``reserve_hold``, clean images the perturbation never saw (step 3's reference).

    Returns (perturbation, scores, reference scores); ``seconds`` receives each stage's wall time.
    """
    start = time.perf_counter()
    pert = perturb_from_config(model, *reserve_fit, config)
    scored = time.perf_counter()
    scores = sensitivity_scores(model, pert.model, x, y, config.score, bf16=config.bf16)
    reference = sensitivity_scores(model, pert.model, *reserve_hold, config.score,
                                   bf16=config.bf16)
    if seconds is not None:
        seconds.update(perturbation=scored - start, scoring=time.perf_counter() - scored)
    return pert, scores, reference


def detect_from_config(scores: Tensor, labels: Tensor, reference: Tensor,
                       reference_labels: Tensor, config: UPGPConfig) -> tuple[Tensor, Detection]:
    """Step 3 as ``config`` sets it: the scores, divided by each label's held-out reserve median
    when ``calibrate``, then flagged by ``rule``. Returns (the scores detection saw, detection).

    ``reference``: the scores of the held-out reserve images (``reference_labels``) under the
    same perturbation.
    """
    if config.calibrate:
        scores, reference = (calibrate_on_reserve(scores, labels, reference, reference_labels),
                             calibrate_on_reserve(reference, reference_labels, reference,
                                                  reference_labels))
    return scores, detect(scores, labels, config.rule, config.z_threshold, config.per_class,
                          config.seed, reference, config.reserve_fpr)


def split_holdout(x: Tensor, y: Tensor, ratio: float, seed: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the reserve into (x_fit, y_fit, x_holdout, y_holdout), fixed by seed."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"holdout ratio {ratio} is outside (0, 1)")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    n_hold = max(1, round(len(y) * ratio))
    fit, hold = perm[n_hold:], perm[:n_hold]
    return x[fit], y[fit], x[hold], y[hold]


@dataclass
class UPGPReport:
    """What UPGP did: the perturbation, the scores and flagged set, the removal log, timings."""

    config: UPGPConfig
    perturbation_steps: int
    perturbation_reserve_accuracy: list[float]
    scores: Tensor  # as detection saw them (divided by the reserve's medians when calibrated)
    detection: Detection
    removal: RemovalLog  # all rounds together
    repair: RemovalLog
    rounds: int
    seconds: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {"perturbation_steps": self.perturbation_steps,
                "reserve_accuracy_after_perturbation": self.perturbation_reserve_accuracy[-1],
                **{f"detection_{k}": v for k, v in self.detection.summary().items()},
                "removal_steps": self.removal.steps, "removal_stop": self.removal.stop_reason,
                "removal_backtracks": self.removal.backtracks,
                "mean_abs_cosine_gu_n": self.removal.mean_abs_cosine,
                **({"repair_steps": self.repair.steps, "repair_stop": self.repair.stop_reason,
                    "mean_abs_cosine_gn_gb": self.repair.mean_abs_cosine, "rounds": self.rounds}
                   if self.config.repair_steps else {}),
                **({"stamped_holdout_accuracy_after": self.repair.final_stamped_accuracy}
                   if self.config.repair_steps and self.config.repair_select == "stamped" else {}),
                "flagged_accuracy_after": (self.repair if self.config.repair_steps
                                           else self.removal).final_flagged_accuracy,
                "seconds": self.seconds}


def subsample_reserve(x: Tensor, y: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded subset of ``size`` reserve images (``size`` 0: the whole reserve)."""
    if size == 0:
        return x, y
    if not 2 <= size <= len(y):
        raise ValueError(f"reserve_size {size} is outside [2, {len(y)}] (the reserve holds "
                         f"{len(y)} images; 0 uses all of them)")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 2))[:size]
    return x[keep], y[keep]


def upgp_defend(model: nn.Module, train_set: tuple[Tensor, Tensor],
                reserve: tuple[Tensor, Tensor], config: UPGPConfig = UPGPConfig(),
                flagged: Tensor | None = None,
                on_check: Callable[[int, nn.Module], None] | None = None
                ) -> tuple[nn.Module, UPGPReport]:
    """Detect backdoor samples in ``train_set`` by unlearning sensitivity, then unlearn them.

    ``flagged`` replaces step 3 with a given set (the random and oracle ablations);
    ``on_check`` is handed to the removal loop (see ``projected_unlearning``; with several
    rounds, each counts its steps from 0).
    The input model is not modified.
    """
    x, y = train_set
    x_fit, y_fit, x_hold, y_hold = split_holdout(*reserve, config.holdout_ratio, config.seed)
    seconds: dict[str, float] = {}
    pert, scores, reference = perturb_and_score(model, x, y, (x_fit, y_fit), (x_hold, y_hold),
                                                config, seconds)

    start = time.perf_counter()
    scores, detection = detect_from_config(scores, y, reference, y_hold, config)
    if flagged is not None:
        detection = Detection(flagged, detection.suspicion, "given", float("nan"))
    seconds["detection"] = time.perf_counter() - start

    idx = detection.flagged
    cleaned, removals, repairs = model, [], []
    seconds["removal"] = 0.0
    base_holdout = accuracy(model, x_hold, y_hold, bf16=config.bf16)
    for rnd in range(config.removal_rounds):
        start = time.perf_counter()
        cleaned, removal = projected_unlearning(
            cleaned, x[idx], y[idx], x_fit, y_fit, x_hold, y_hold, config.projection,
            config.removal_loss, config.removal_lr, config.removal_batch,
            config.removal_max_steps - sum(r.steps for r in removals),
            config.stop_flagged_accuracy, config.max_holdout_drop, config.check_every,
            config.subspace_k, config.gpm_energy, config.seed + rnd, config.bf16,
            config.removal_backtracks, on_check, base_holdout)
        removals.append(removal)
        seconds["removal"] += time.perf_counter() - start
        if not config.repair_steps:
            break
        start = time.perf_counter()
        cleaned, repair = projected_repair(
            cleaned, x_fit, y_fit, x_hold, y_hold, x[idx], y[idx], config.repair_project,
            config.repair_lr, config.removal_batch, config.repair_steps, config.check_every,
            config.repair_max_flagged_rise, config.seed + rnd, config.bf16,
            config.repair_trigger_share, config.repair_select, config.repair_trigger)
        repairs.append(repair)
        seconds["repair"] = seconds.get("repair", 0.0) + time.perf_counter() - start
        # another round only where the held-out budget stopped removal and repair won some back
        if removal.stop_reason != "held-out reserve accuracy dropped" or repair.steps == 0:
            break
    report = UPGPReport(config, pert.steps, pert.reserve_accuracy, scores, detection,
                        merge_logs(removals), merge_logs(repairs), len(removals), seconds)
    return cleaned, report


__all__ = ["Detection", "Perturbation", "RemovalLog", "UPGPConfig", "UPGPReport",
           "calibrate_on_reserve", "detect", "detect_from_config", "first_order_loss_change",
           "flat_delta", "gpm_bases", "gradient_inner_products", "label_median_ratio",
           "orthonormal_basis", "mean_gradient", "per_sample_dot", "per_sample_gradients",
           "per_sample_outputs", "perturb_and_score", "perturb_from_config", "project_gpm", "project_out",
           "project_out_per_layer", "project_out_subspace", "projected_repair",
           "projected_unlearning", "robust_z", "sensitivity_scores", "split_holdout",
           "subsample_reserve", "unlearning_perturbation", "upgp_defend"]
