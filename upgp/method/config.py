"""``UPGPConfig``: every setting of UPGP as one frozen dataclass, validated on construction.

Flat fields, so that cache keys (a hash of the fields) of configs made before a field existed
still hold: a field is hashed only where it differs from the value that reproduces the code before
it existed (``HASH_OMITS``), whatever its default is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..presets import Settings, check_choice
from .detection import RULES
from .perturbation import UNLEARNING_LOSSES
from .projection import PROJECTIONS
from .sensitivity import SCORES

REMOVAL_LOSSES = ("ascent", "bounded", "max_entropy")
REMOVAL_STEPS = ("sgd", "relative")
REPAIR_SELECTIONS = ("holdout", "stamped")
TRIGGER_FORMS = ("shift", "affine")
# the fields whose defaults issue 23 changed (with rule and removal_backtracks, hashed always)
FIXED_CONSTANTS = ("evidence_z", "removal_step", "removal_growth", "normal_ema", "holdout_z",
                   "holdout_looks", "max_target_rise", "stop_counts_clean", "stop_at_clean_rate")


@dataclass(frozen=True)
class UPGPConfig(Settings):
    """Every setting of UPGP, by step of ``method.md``.

    Detection and removal set themselves from the reserve by default (issue 23): the flagged set
    is what scores under the held-out reserve's ``reserve_fpr`` quantile, "nothing to remove"
    where that tail is no heavier than clean noise, and removal takes trust-region steps that
    grow while held-out checks pass. ``fixed_constants()`` gives the earlier defaults. Fields
    marked *extension* are this book's; those of step 5 (repair) are off by default.
    """

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
    rule: str = "reserve_quantile"  # "reserve_quantile", "gmm" or "robust_z"
    z_threshold: float = 2.5
    per_class: bool = False
    reserve_fpr: float = 0.01  # reserve_quantile: flag below this quantile of held-out reserve scores
    # extension: "nothing to remove" unless the share of training scores under the held-out
    # reserve's reserve_fpr quantile exceeds reserve_fpr by this many standard errors (0: off)
    evidence_z: float = 3.0
    # 4. removal
    # "gpm": each weight's step off the subspace of its inputs on the reserve, the null space of
    # every reserve sample's gradient (issue 23); "vector": off one gradient n, the mean's
    projection: str = "gpm"  # "none", "vector", "layer", "subspace", "gpm"
    removal_loss: str = "bounded"  # "bounded" (-log(1 - p_y)), "ascent" (-CE), "max_entropy"
    removal_lr: float = 1e-4
    removal_batch: int = 128
    removal_max_steps: int = 300
    stop_flagged_accuracy: float = 0.1
    max_holdout_drop: float = 0.02  # accept at most 2 points lost on the held-out reserve
    removal_backtracks: int = 6  # on a rejected check: undo, halve the step size, go on (this often)
    check_every: int = 5
    # extension: step and stopping set by what the step does on the reserve (unlearning.py)
    removal_step: str = "relative"  # a trust region relative to the weights; "sgd": removal_lr x g
    removal_radius: float = 0.01  # "relative": first step's size, relative to the weights
    removal_growth: float = 1.5  # "relative": step size x this after each accepted check
    normal_ema: float = 0.9  # n: moving average of reserve-batch gradients (0: one batch)
    # the held-out rules' margin, in standard errors: each must hold with this many to spare
    # (negative: a check passes when drop + 1 s.e. <= max_holdout_drop), since removal steps on
    # until a check fails and ends where the estimate meets its bound; positive: this much noise
    # allowed beyond the bound instead
    holdout_z: float = -1.0
    # with a negative holdout_z, the margin grows with the checks made on the same held-out
    # images (Bonferroni): the k-th must hold at one-sided level Phi(holdout_z) / k, since the
    # model removal keeps is the one whose checks passed (HoldoutCheck)
    holdout_looks: bool = True
    max_target_rise: float = 0.01  # reject a check raising the share of held-out images sent to
    #                                the flagged set's label by more than this + holdout_z s.e.
    stop_counts_clean: bool = True  # removal's target allows for the clean share of B
    # the poisons' target: at most the rate at which held-out images of other labels are
    # predicted as B's label + holdout_z s.e., instead of stop_flagged_accuracy alone
    stop_at_clean_rate: bool = True
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

    # fields added after results were cached, with the value each had before it existed: hashed
    # only where they differ from it, so cache keys made before hold
    HASH_OMITS: ClassVar[dict[str, Any]] = {
        "repair_steps": 0, "repair_lr": 0.003, "repair_project": True,
        "repair_max_flagged_rise": 0.05, "removal_rounds": 1, "repair_trigger_share": 0.0,
        "repair_select": "holdout", "repair_trigger": "shift", "calibrate": False,
        "reserve_fpr": 0.01, "evidence_z": 0.0, "removal_step": "sgd", "removal_radius": 0.01,
        "removal_growth": 1.0, "normal_ema": 0.0, "holdout_z": 0.0, "holdout_looks": False,
        "max_target_rise": 1.0, "stop_counts_clean": False, "stop_at_clean_rate": False}

    def __post_init__(self) -> None:
        for what, value, allowed in (
                ("unlearning loss", self.perturb_loss, UNLEARNING_LOSSES),
                ("sensitivity score", self.score, SCORES), ("detection rule", self.rule, RULES),
                ("projection", self.projection, PROJECTIONS),
                ("removal loss", self.removal_loss, REMOVAL_LOSSES),
                ("removal step", self.removal_step, REMOVAL_STEPS),
                ("repair selection", self.repair_select, REPAIR_SELECTIONS),
                ("trigger form", self.repair_trigger, TRIGGER_FORMS)):
            check_choice(what, value, allowed)
        if self.removal_rounds < 1 or self.repair_steps < 0:
            raise ValueError(f"removal_rounds {self.removal_rounds} / repair_steps "
                             f"{self.repair_steps}: need removal_rounds >= 1, repair_steps >= 0")
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio {self.holdout_ratio} is outside (0, 1)")
        if not 0.0 <= self.repair_trigger_share <= 1.0:
            raise ValueError(f"repair_trigger_share {self.repair_trigger_share} is outside [0, 1]")
        if not 0.0 <= self.normal_ema < 1.0:
            raise ValueError(f"normal_ema {self.normal_ema} is outside [0, 1)")

    def fixed_constants(self) -> UPGPConfig:
        """This config with removal and detection set by the constants chosen at the cpu preset,
        the defaults before issue 23: a two-component mixture on the scores and no "nothing to
        remove"; plain SGD at ``removal_lr`` off one reserve batch's gradient n ("vector"), a
        fixed held-out drop, no backtracking. Kept to measure the change (``upgp.regimes``)."""
        return self.replace(**{k: v for k, v in self.HASH_OMITS.items() if k in FIXED_CONSTANTS},
                            rule="gmm", removal_backtracks=0, projection="vector")

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
