"""Step 3 of UPGP: flag the samples whose sensitivity is abnormally low.

Neither rule knows the poisoning ratio:
- ``robust_z``: z_i = (s_i - median(s)) / (1.4826 MAD(s)); flag z_i < -threshold. With
  ``per_class=True`` the median and MAD are taken over the samples of each label.
- ``gmm``: a two-component Gaussian mixture on log(s - min(s) + eps); flag the samples whose
  posterior for the low-mean component exceeds 0.5.
- ``reserve_quantile``: flag s_i < q_fpr(r), the ``fpr`` quantile of the scores r of clean
  reserve images that made no part of the perturbation: a threshold set on clean data alone, for
  a false-positive rate of about ``fpr`` on images the model has not memorised.

Whatever the rule, ``backdoor_evidence`` (an extension of this book) asks first whether there is
anything to flag: under the null that the training set is clean, about ``fpr`` of it scores
below q_fpr(r); a share clearly above that is the evidence of a backdoor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..metrics import detection_metrics
from ..presets import check_choice

RULES = ("robust_z", "gmm", "reserve_quantile")


def robust_z(scores: Tensor, labels: Tensor | None = None) -> Tensor:
    """(s - median) / (1.4826 * MAD), over all samples or, given labels, within each label."""
    scores = scores.double()
    groups = [torch.arange(len(scores))] if labels is None else [
        (labels == c).nonzero().flatten() for c in labels.unique()]
    z = torch.empty_like(scores)
    for idx in groups:
        s = scores[idx]
        med = s.median()
        mad = (s - med).abs().median().clamp_min(1e-12)
        z[idx] = (s - med) / (1.4826 * mad)
    return z.float()


@dataclass
class Detection:
    """Flagged sample indices, a suspicion score (higher = more suspicious) and the rule used."""

    flagged: Tensor
    suspicion: Tensor
    rule: str
    threshold: float
    found: bool = True  # False: "nothing to remove", the flagged set is only the null's tail
    evidence: dict[str, float] | None = None  # backdoor_evidence, when it was asked

    def evaluate(self, is_poisoned: Tensor) -> dict[str, float]:
        """Detection metrics against the recorded poison mask (evaluation only)."""
        return detection_metrics(is_poisoned, self.flagged, self.suspicion)

    def summary(self) -> dict[str, Any]:
        return {"rule": self.rule, "threshold": self.threshold, "flagged": len(self.flagged),
                **({"backdoor_found": self.found, **self.evidence} if self.evidence else {})}


def backdoor_evidence(scores: Tensor, reference: Tensor, fpr: float, z: float
                      ) -> tuple[bool, Tensor, dict[str, float]]:
    """Is the training set's low tail heavier than clean images give?

    With q = q_fpr(r) on the held-out reserve's scores r, the share p = mean(s < q) of training
    scores is about fpr when the training set is clean; the evidence is p > fpr + z se, with
    se^2 = fpr (1 - fpr) / |r| + p (1 - p) / |s| (the two sets' binomial noise). Returns
    (found, indices with s < q, {share, bound}).
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"reserve false-positive rate {fpr} is outside (0, 1)")
    cut = torch.quantile(reference.double(), fpr)
    below = (scores.double() < cut).nonzero().flatten()
    share = len(below) / len(scores)
    se = (fpr * (1 - fpr) / len(reference) + share * (1 - share) / len(scores)) ** 0.5
    bound = fpr + z * se
    return share > bound, below, {"evidence_share": share, "evidence_bound": bound}


def clean_share_estimate(scores: Tensor, flagged: Tensor, reference: Tensor) -> float:
    """Estimated share of clean samples in the flagged set: the held-out reserve's share at or
    below the highest flagged score, times the training-set size, over the flagged count."""
    if len(flagged) == 0:
        return 0.0
    top = scores[flagged].max()
    return min(1.0, float((reference <= top).double().mean()) * len(scores) / len(flagged))


def detect(scores: Tensor, labels: Tensor | None = None, rule: str = "robust_z",
           threshold: float = 2.5, per_class: bool = False, seed: int = 0,
           reference: Tensor | None = None, fpr: float = 0.01) -> Detection:
    """Flag insensitive samples (low ``scores``) by ``rule``; see the module docstring.

    ``reference``: the held-out reserve's scores, which ``reserve_quantile`` needs.
    """
    check_choice("detection rule", rule, RULES)
    z = robust_z(scores, labels if per_class else None)
    suspicion = -z
    if rule == "robust_z":
        flagged = (z < -threshold).nonzero().flatten()
        return Detection(flagged, suspicion, rule, threshold)
    if rule == "reserve_quantile":
        if reference is None or len(reference) == 0:
            raise ValueError("rule 'reserve_quantile' needs the reserve's scores (reference)")
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"reserve false-positive rate {fpr} is outside (0, 1)")
        cut = torch.quantile(reference.double(), fpr)
        return Detection((scores.double() < cut).nonzero().flatten(), suspicion, rule, fpr)
    from sklearn.mixture import GaussianMixture

    values = scores.double().numpy()
    feature = np.log(values - values.min() + 1e-6)[:, None]
    gmm = GaussianMixture(2, random_state=seed).fit(feature)
    low = int(np.argmin(gmm.means_[:, 0]))
    posterior = gmm.predict_proba(feature)[:, low]
    flagged = torch.from_numpy(np.flatnonzero(posterior > 0.5))
    return Detection(flagged, suspicion, rule, 0.5)
