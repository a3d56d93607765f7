"""Step 4 of UPGP, the loop: unlearn the flagged set B from theta_0 along projected gradients.

At each step: g_u = grad of the unlearning loss on a batch of B (with B's own, possibly poisoned,
labels), n = grad of the cross-entropy on a batch of the reserve N, then a plain SGD step along
the projection of g_u that removes its component along n (or the chosen variant, see
``projection.py``). Stopping looks only at what a defender has: the accuracy of B on its labels,
and the accuracy on a held-out part of N.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import check_choice
from ..train import accuracy, autocast, endless_batches, to_float
from .perturbation import unlearning_loss
from .projection import (
    PROJECTIONS,
    _dot,
    gpm_bases,
    orthonormal_basis,
    project_gpm,
    project_out,
    project_out_per_layer,
    project_out_subspace,
)

REMOVAL_LOSSES = ("ascent", "bounded", "max_entropy")


def removal_loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Loss whose minimisation unlearns (x, y).

    ``ascent``: -CE(f(x), y); its logit gradient p - onehot(y) vanishes on samples fit with
    p_y ~ 1, so strongly memorised triggers barely move.
    ``bounded``: -log(1 - p_y) = logsumexp(z) - logsumexp(z without y), computed stably; its
    gradient on z_y is p_y (large while the sample is still fit) and it falls to 0 as p_y -> 0,
    so it cannot diverge.
    ``max_entropy``: CE(f(x), uniform), as in step 1 (``unlearning_loss``): pushes B's
    predictions to uniform instead of away from y alone.
    """
    check_choice("removal loss", kind, REMOVAL_LOSSES)
    if kind == "bounded":
        z = logits.float()
        others = z.scatter(1, y[:, None], float("-inf"))
        return (torch.logsumexp(z, 1) - torch.logsumexp(others, 1)).mean()
    return unlearning_loss(logits, y, kind)


@dataclass
class RemovalLog:
    steps: int = 0  # steps kept (undone steps are not counted)
    stop_reason: str = ""
    backtracks: int = 0  # rejected checks, each followed by a halved step size
    final_lr: float = 0.0
    flagged_accuracy: list[float] = field(default_factory=list)
    holdout_accuracy: list[float] = field(default_factory=list)
    mean_abs_cosine: float = 0.0  # mean |cos(g_u, n)| before projection
    steps_taken: int = 0  # every step computed, undone or kept
    final_flagged_accuracy: float = float("nan")  # the flagged set's, for the returned model
    stamped_accuracy: list[float] = field(default_factory=list)  # repair, select="stamped"
    final_stamped_accuracy: float = float("nan")  # that, for the returned model


def merge_logs(logs: list[RemovalLog]) -> RemovalLog:
    """One log for several runs of a loop (rounds): steps and backtracks add up, the accuracy
    curves follow each other, the stop reason and step size are the last run's, and the mean
    |cos| is weighted by the steps each run took."""
    if not logs:
        return RemovalLog(stop_reason="not run")
    taken = sum(log.steps_taken for log in logs)
    return RemovalLog(
        steps=sum(log.steps for log in logs), stop_reason=logs[-1].stop_reason,
        backtracks=sum(log.backtracks for log in logs), final_lr=logs[-1].final_lr,
        flagged_accuracy=[a for log in logs for a in log.flagged_accuracy],
        holdout_accuracy=[a for log in logs for a in log.holdout_accuracy],
        mean_abs_cosine=sum(log.mean_abs_cosine * log.steps_taken for log in logs) / max(1, taken),
        steps_taken=taken, final_flagged_accuracy=logs[-1].final_flagged_accuracy,
        stamped_accuracy=[a for log in logs for a in log.stamped_accuracy],
        final_stamped_accuracy=logs[-1].final_stamped_accuracy)


def _grads(model: nn.Module, loss: Tensor) -> list[Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params))


def _batch_loss(model: nn.Module, x: Tensor, y: Tensor, kind: str | None, bf16: bool) -> Tensor:
    device = next(model.parameters()).device
    with autocast(device, bf16):
        logits = model(to_float(x, device))
    y = y.to(device)
    return F.cross_entropy(logits, y) if kind is None else removal_loss(logits, y, kind)


def projected_unlearning(model: nn.Module, x_flagged: Tensor, y_flagged: Tensor,
                         x_reserve: Tensor, y_reserve: Tensor, x_holdout: Tensor,
                         y_holdout: Tensor, projection: str = "vector", loss: str = "ascent",
                         lr: float = 2e-4, batch_size: int = 128, max_steps: int = 300,
                         stop_flagged_accuracy: float = 0.1, max_holdout_drop: float = 0.03,
                         check_every: int = 10, subspace_k: int = 4, gpm_energy: float = 0.97,
                         seed: int = 0, bf16: bool = True, max_backtracks: int = 0,
                         on_check: Callable[[int, nn.Module], None] | None = None,
                         base_holdout: float | None = None) -> tuple[nn.Module, RemovalLog]:
    """Return a copy of ``model`` with the flagged set unlearned, and the log of the loop.

    Stops when the flagged set's accuracy on its labels is <= ``stop_flagged_accuracy``, or after
    ``max_steps`` kept steps. A check at which the held-out reserve accuracy has dropped by more
    than ``max_holdout_drop`` (from ``base_holdout``, default the input model's held-out accuracy)
    undoes the steps since the last accepted check; the loop then goes on with half the step size
    (backtracking, at most ``max_backtracks`` times) or stops.
    ``on_check(steps, model)`` is called at step 0 and at every accepted check (for
    removal-budget plots; the loop never reads what it computes).
    """
    check_choice("projection", projection, PROJECTIONS)
    if len(x_flagged) == 0:
        return copy.deepcopy(model), RemovalLog(stop_reason="nothing flagged")
    model = copy.deepcopy(model).eval()  # BN in eval mode: flagged batches must not move its stats
    params = [p for p in model.parameters() if p.requires_grad]
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    bases = gpm_bases(model, x_reserve, gpm_energy, seed=seed) if projection == "gpm" else None
    gen = torch.Generator().manual_seed(seed)
    log = RemovalLog()
    holdout = accuracy(model, x_holdout, y_holdout, bf16=bf16)
    base_holdout = holdout if base_holdout is None else base_holdout
    log.holdout_accuracy.append(holdout)
    log.flagged_accuracy.append(accuracy(model, x_flagged, y_flagged, bf16=bf16))
    if on_check is not None:
        on_check(0, model)
    cos_sum, cos_count = 0.0, 0

    normal_iter = endless_batches(len(x_reserve), batch_size, gen, drop_last=True)
    flagged_iter = endless_batches(len(x_flagged), batch_size, gen)
    snapshot, accepted = [p.detach().clone() for p in params], 0
    while log.steps < max_steps:
        idx = next(flagged_iter)
        g = _grads(model, _batch_loss(model, x_flagged[idx], y_flagged[idx], loss, bf16))
        if projection != "none":
            normals = []
            for _ in range(subspace_k if projection == "subspace" else 1):
                jdx = next(normal_iter)
                normals.append(_grads(model, _batch_loss(model, x_reserve[jdx], y_reserve[jdx],
                                                         None, bf16)))
            n = normals[0]
            cos = _cosine(g, n)
            cos_sum, cos_count = cos_sum + abs(cos), cos_count + 1
            if projection == "vector":
                g = project_out(g, n)
            elif projection == "layer":
                g = project_out_per_layer(g, n)
            elif projection == "subspace":
                g = project_out_subspace(g, orthonormal_basis(normals))
            else:
                projected = project_gpm(dict(zip(names, g)), bases)
                g = [projected[k] for k in names]
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.sub_(lr * gi)
        log.steps += 1
        log.steps_taken += 1
        if log.steps % check_every == 0 or log.steps == max_steps:
            holdout = accuracy(model, x_holdout, y_holdout, bf16=bf16)
            if base_holdout - holdout > max_holdout_drop:
                with torch.no_grad():  # undo back to the last accepted check
                    for p, s in zip(params, snapshot):
                        p.copy_(s)
                log.steps = accepted
                if log.backtracks == max_backtracks:
                    log.stop_reason = "held-out reserve accuracy dropped"
                    break
                log.backtracks += 1
                lr /= 2
                continue
            snapshot, accepted = [p.detach().clone() for p in params], log.steps
            flagged = accuracy(model, x_flagged, y_flagged, bf16=bf16)
            log.holdout_accuracy.append(holdout)
            log.flagged_accuracy.append(flagged)
            if on_check is not None:
                on_check(log.steps, model)
            if flagged <= stop_flagged_accuracy:
                log.stop_reason = "flagged set unlearned"
                break
    else:
        log.stop_reason = "step budget"
    if projection != "none":
        log.mean_abs_cosine = cos_sum / max(1, cos_count)  # over every step taken, undone or kept
    log.final_lr = lr
    log.final_flagged_accuracy = log.flagged_accuracy[-1]  # the last accepted check's model
    return model, log


def _cosine(a: list[Tensor], b: list[Tensor]) -> float:
    """cos(a, b) over the whole concatenated parameter vector."""
    return float(_dot(a, b) / (_dot(a, a).sqrt() * _dot(b, b).sqrt()).clamp_min(1e-30))
