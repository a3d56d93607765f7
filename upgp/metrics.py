"""Backdoor metrics (ACC, ASR, RA, DER) and detection metrics (AUROC, TPR, FPR, precision...).

ACC: accuracy on the clean test set. ASR: share of triggered test images (those whose backdoor
label differs from their class) predicted as their backdoor label (the target, or (y+1) mod C
all-to-all). RA: share of the same images predicted as their true class.
DER = (max(0, ASR_before - ASR_after) - max(0, ACC_before - ACC_after) + 1) / 2 (BackdoorBench).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .train import predict

TOOK_HOLD = 80.0  # no-defense ASR (%) from which an attack counts as having taken hold


def backdoor_metrics(model: nn.Module, x_test: Tensor, y_test: Tensor, x_triggered: Tensor,
                     y_triggered: Tensor, target: int | Tensor, bf16: bool = True,
                     batch_size: int = 1024) -> dict[str, float]:
    """ACC on the clean test set; ASR and RA on the triggered test images (in %).

    ``target``: the backdoor label, one for all or one per triggered image.
    """
    return backdoor_rates(predict(model, x_test, batch_size, bf16), y_test,
                          predict(model, x_triggered, batch_size, bf16), y_triggered, target)


def backdoor_rates(clean_pred: Tensor, y_test: Tensor, triggered_pred: Tensor,
                   y_triggered: Tensor, target: int | Tensor) -> dict[str, float]:
    """ACC, ASR and RA (in %) from predicted labels (see ``backdoor_metrics``)."""
    return {
        "acc": 100 * (clean_pred == y_test).float().mean().item(),
        "asr": 100 * (triggered_pred == target).float().mean().item(),
        "ra": 100 * (triggered_pred == y_triggered).float().mean().item(),
    }


def struck_out_ra(model: nn.Module, x_triggered: Tensor, y_triggered: Tensor, target: Tensor,
                  bf16: bool = True, batch_size: int = 1024) -> float:
    """RA (%) with the backdoor label struck out: the share of triggered images whose best label
    other than their backdoor label ``target`` is their own class. Low where the trigger, not the
    image, decides the runner-up too (full-image triggers): a removal that only turns predictions
    away from the target then finds no better label for them."""
    pred = predict(model, x_triggered, batch_size, bf16, exclude=target)
    return 100 * (pred == y_triggered).float().mean().item()


def target_class_accuracy(model: nn.Module, x_test: Tensor, y_test: Tensor, target: int,
                          bf16: bool = True, batch_size: int = 1024) -> dict[str, float]:
    """Clean-test accuracy (in %) on the target class's images and on those of all other classes.

    A clean-label attack that poisons every target-class training image (SIG, LC at 10%) can teach
    "target class <=> trigger": clean target-class images are then missed, and ACC is at most
    (C-1)/C times the other classes' accuracy.
    """
    pred = predict(model, x_test, batch_size, bf16)
    is_target = y_test == target
    return {"acc_target_class": 100 * (pred[is_target] == target).float().mean().item(),
            "acc_other_classes": 100 * (pred[~is_target] == y_test[~is_target]).float().mean().item()}


def redirection(counts: list[int], target: int) -> tuple[int, float]:
    """The class other than ``target`` that gets most triggered test images, and its share (%).

    After a defense that unlearns "trigger -> target", a large share means the trigger now sends
    images to that class instead (low ASR and low RA together); a clean model spreads them.
    """
    others = [(n, c) for c, n in enumerate(counts) if c != target]
    n, c = max(others)
    return c, 100 * n / sum(counts)


def der(before: dict[str, float], after: dict[str, float]) -> float:
    """Defense effectiveness rating in % (BackdoorBench): (max(0, dASR) - max(0, dACC) + 1) / 2."""
    d_asr = max(0.0, before["asr"] - after["asr"]) / 100
    d_acc = max(0.0, before["acc"] - after["acc"]) / 100
    return 100 * (d_asr - d_acc + 1) / 2


def detection_metrics(is_poisoned: Tensor | np.ndarray, flagged: Tensor | np.ndarray,
                      suspicion: Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Detection quality of a flagged set against the recorded poison mask.

    ``suspicion``: higher = more likely poisoned; gives AUROC when both classes are present.
    """
    truth = np.asarray(is_poisoned, dtype=bool)
    flag = np.zeros_like(truth)
    flag[np.asarray(flagged, dtype=np.int64)] = True
    tp = int((flag & truth).sum())
    fp = int((flag & ~truth).sum())
    fn = int((~flag & truth).sum())
    tn = int((~flag & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "flagged": int(flag.sum()),
        "true_poisoned": int(truth.sum()),
        "tpr": recall,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
    if suspicion is not None:
        out["auroc"] = auroc(truth, suspicion)
    return out


def auroc(is_poisoned: Tensor | np.ndarray, suspicion: Tensor | np.ndarray) -> float:
    """Area under the ROC curve of ``suspicion`` for the poison mask (nan if one class only):
    the Mann-Whitney statistic P(s_poison > s_clean) + P(s_poison = s_clean) / 2, from average
    ranks (written here, not imported from scikit-learn, whose import costs each kernel 1.3 s)."""
    truth = np.asarray(is_poisoned, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    values = _numpy(suspicion).astype(np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based, ties share their mean rank
    positives, negatives = int(truth.sum()), int((~truth).sum())
    rank_sum = average_rank[inverse][truth].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def roc(is_poisoned: Tensor | np.ndarray, suspicion: Tensor | np.ndarray
        ) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) points of the ROC curve, for plotting: one point per distinct suspicion value,
    flagging every sample at or above it, from (0, 0) to (1, 1)."""
    truth = np.asarray(is_poisoned, dtype=bool)
    values = _numpy(suspicion).astype(np.float64)
    order = np.argsort(-values, kind="stable")
    values, truth = values[order], truth[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]
    tp = np.cumsum(truth)[last_of_value]
    fp = np.cumsum(~truth)[last_of_value]
    return (np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)])


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
