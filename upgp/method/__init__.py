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

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import UPGPConfig
from .detection import (
    Detection,
    backdoor_evidence,
    clean_share_estimate,
    detect,
    robust_z,
)
from .perturbation import Perturbation, unlearning_perturbation
from .projection import (
    gpm_bases,
    orthonormal_basis,
    project_gpm,
    project_out,
    project_out_per_layer,
    project_out_subspace,
)
from .repair import projected_repair, remove_and_repair
from .sensitivity import (
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
from .unlearning import RemovalLog, projected_unlearning


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
    when ``calibrate``, then flagged by ``rule``; with ``evidence_z``, a training set whose low
    tail is no heavier than clean images give is "nothing to remove" and only that tail (about
    ``reserve_fpr`` of it) is flagged. Returns (the scores detection saw, detection).

    ``reference``: the scores of the held-out reserve images (``reference_labels``) under the
    same perturbation.
    """
    if config.calibrate:
        scores, reference = (calibrate_on_reserve(scores, labels, reference, reference_labels),
                             calibrate_on_reserve(reference, reference_labels, reference,
                                                  reference_labels))
    detection = detect(scores, labels, config.rule, config.z_threshold, config.per_class,
                       config.seed, reference, config.reserve_fpr)
    if config.evidence_z > 0:  # extension: "nothing to remove" unless the low tail says otherwise
        found, below, evidence = backdoor_evidence(scores, reference, config.reserve_fpr,
                                                   config.evidence_z)
        detection = (Detection(detection.flagged, detection.suspicion, detection.rule,
                               detection.threshold, True, evidence) if found else
                     Detection(below, detection.suspicion, "nothing to remove",
                               config.reserve_fpr, False, evidence))
    return scores, detection


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
                reserve: tuple[Tensor, Tensor], config: UPGPConfig | None = None, *,
                flagged: Tensor | None = None,
                on_check: Callable[[int, nn.Module], None] | None = None
                ) -> tuple[nn.Module, UPGPReport]:
    """Detect backdoor samples in ``train_set`` by unlearning sensitivity, then unlearn them.

    ``flagged`` replaces step 3 with a given set (the random and oracle ablations), taken as all
    poisons: it is no cut on the scores, so the reserve cannot estimate its clean share, and
    removal aims at ``stop_flagged_accuracy`` itself;
    ``on_check`` is handed to the removal loop (see ``projected_unlearning``; with several
    rounds, each counts its steps from 0).
    The input model is not modified.
    """
    config = UPGPConfig() if config is None else config
    x, y = train_set
    x_fit, y_fit, x_hold, y_hold = split_holdout(*reserve, config.holdout_ratio, config.seed)
    seconds: dict[str, float] = {}
    pert, scores, reference = perturb_and_score(model, x, y, (x_fit, y_fit), (x_hold, y_hold),
                                                config, seconds)  # steps 1-2
    start = time.perf_counter()
    scores, detection = detect_from_config(scores, y, reference, y_hold, config)  # step 3
    if flagged is not None:
        detection = Detection(flagged, detection.suspicion, "given", float("nan"))
    seconds["detection"] = time.perf_counter() - start
    idx = detection.flagged
    clean_share = 0.0 if flagged is not None else clean_share_estimate(scores, idx, reference)
    if detection.found:  # step 4 (and the optional step 5)
        cleaned, removal, repair, rounds = remove_and_repair(
            model, (x[idx], y[idx]), (x_fit, y_fit), (x_hold, y_hold), config,
            clean_share=clean_share, on_check=on_check, seconds=seconds)
    else:
        cleaned, rounds = copy.deepcopy(model), 0
        removal = repair = RemovalLog(stop_reason="nothing to remove")
        seconds["removal"] = 0.0
    report = UPGPReport(config, pert.steps, pert.reserve_accuracy, scores, detection, removal,
                        repair, rounds, seconds)
    return cleaned, report

__all__ = ["Detection", "Perturbation", "RemovalLog", "UPGPConfig", "UPGPReport",
           "calibrate_on_reserve", "detect", "detect_from_config", "first_order_loss_change",
           "flat_delta", "gpm_bases", "gradient_inner_products", "label_median_ratio",
           "orthonormal_basis", "mean_gradient", "per_sample_dot", "per_sample_gradients",
           "per_sample_outputs", "perturb_and_score", "perturb_from_config", "project_gpm", "project_out",
           "project_out_per_layer", "project_out_subspace", "projected_repair",
           "projected_unlearning", "robust_z", "sensitivity_scores", "split_holdout",
           "subsample_reserve", "unlearning_perturbation", "upgp_defend"]
