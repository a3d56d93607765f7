"""Poisoned-sample detection baselines on the training set, by name (``DETECTORS``).

Each detector is ``(model, x, y) -> suspicion`` (one float per sample, higher = more likely
poisoned), so the same detection metrics (``upgp.metrics``) evaluate them all:
- ``loss``: ABL-style loss ranking {Li et al. 2021}: suspicion = -l_i(theta_0).
- ``spectral``: spectral signatures {Tran et al. 2018}: within each label, the squared projection of
  the centred penultimate features on their top singular vector, divided by the label's median.
- ``activation_clustering``: {Chen et al. 2018}: within each label, features reduced to 10
  principal components and split by 2-means; samples of the smaller cluster are suspicious when
  it holds less than 35% of the label, with suspicion (1 - its share); all others score 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .method import per_sample_outputs
from .presets import check_choice
from .train import autocast, batches, to_float

DETECTORS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {}


def register_detector(name: str) -> Callable:
    def wrap(fn: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> Callable:
        DETECTORS[name] = fn
        return fn

    return wrap


def detector_scores(name: str, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Suspicion scores of detector ``name`` (see ``DETECTORS``) for every sample."""
    check_choice("detector", name, sorted(DETECTORS))
    return DETECTORS[name](model, x, y)


@torch.no_grad()
def penultimate_features(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """``model.features(x)`` for every image, float32 on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for idx in batches(len(x), batch_size):
        with autocast(device, True):
            out.append(model.features(to_float(x[idx], device)).float().cpu())
    return torch.cat(out)


@register_detector("loss")
def loss_ranking(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    loss, _ = per_sample_outputs(model, x, y)
    return -loss


@register_detector("spectral")
def spectral_signature(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    feats = penultimate_features(model, x).double()
    suspicion = torch.zeros(len(y), dtype=torch.float64)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        centred = feats[idx] - feats[idx].mean(0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        score = (centred @ vh[0]) ** 2
        suspicion[idx] = score / score.median().clamp_min(1e-12)
    return suspicion.float()


@register_detector("activation_clustering")
def activation_clustering(model: nn.Module, x: Tensor, y: Tensor, components: int = 10,
                          max_share: float = 0.35) -> Tensor:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    feats = penultimate_features(model, x).numpy()
    suspicion = np.zeros(len(y))
    labels = y.numpy()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        reduced = PCA(min(components, len(idx), feats.shape[1]), random_state=0).fit_transform(
            feats[idx])
        assign = KMeans(2, n_init=5, random_state=0).fit_predict(reduced)
        small = int(np.bincount(assign, minlength=2).argmin())
        share = float((assign == small).mean())
        if share < max_share:
            suspicion[idx[assign == small]] = 1 - share
    return torch.from_numpy(suspicion).float()
