"""Step 4 of UPGP, the loop: unlearn the flagged set B from theta_0 along projected gradients.

At each step: g_u = grad of the unlearning loss on a batch of B (with B's own, possibly poisoned,
labels), n = grad of the cross-entropy on a batch of the reserve N, then a step along the
projection of g_u that removes its component along n (or the chosen variant, see
``projection.py``): plain SGD (the paper's), or a relative trust-region step (an extension).
Stopping looks only at what a defender has: the accuracy of B on its labels, and the
predictions on a held-out part of N.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import check_choice
from ..train import accuracy, autocast, endless_batches, predict, to_float
from .config import REMOVAL_LOSSES, UPGPConfig
from .perturbation import unlearning_loss
from .projection import (
    _dot,
    gpm_bases,
    orthonormal_basis,
    project_gpm,
    project_out,
    project_out_per_layer,
    project_out_subspace,
    relative_step,
    scale_to_radius,
)

Data = tuple[Tensor, Tensor]


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


class HoldoutCheck:
    """Judges a removal check on the held-out reserve against a reference model's predictions
    there (the model removal started from): what a defender can see.

    Rejected: a drop of held-out accuracy over ``max_holdout_drop`` + z s.e., or a rise over
    ``max_target_rise`` + z s.e. in the share of held-out images of other labels predicted as
    ``label`` (the flagged set's most common label: removal pushing clean images towards the
    suspected target raises ASR). The standard errors are the paired ones, sqrt(flips) / count.
    z = ``holdout_z``: by default -1, so each rule must hold with one standard error to spare;
    removal steps on until a check fails, so it ends where the estimate meets its bound, and a
    bound without that margin is exceeded about half the time. With ``holdout_looks`` the k-th
    check of this loop on the same images must hold at one-sided level Phi(z) / k (Bonferroni; z_k =
    Phi^-1(Phi(z) / k), -1.0 at the first check, -2.0 at the seventh): the returned model is the
    one whose checks passed, and on a small held-out set a path that passes by the luck of that
    set is otherwise kept. 0: the bounds as they are.
    """

    def __init__(self, reference: nn.Module, x: Tensor, y: Tensor, label: int,
                 config: UPGPConfig) -> None:
        self.x, self.y, self.config = x, y, config
        first = predict(reference, x, bf16=config.bf16)
        self.correct, self.others = first == y, y != label
        self.label, self.sent = label, (first == label) & self.others
        self.looks = 0  # checks made so far

    def clean_rate(self) -> float:
        """The share of held-out images of other labels that the reference model predicts as
        ``label``, plus ``holdout_z`` binomial standard errors (by default minus one): how
        often a model says that label on images without the trigger."""
        m = max(1, int(self.others.sum()))
        rate = float(self.sent.sum()) / m
        return rate + self.config.holdout_z * (rate * (1 - rate) / m) ** 0.5

    def margin(self) -> float:
        """z for the current check: ``holdout_z``, or with ``holdout_looks`` (and z < 0)
        Phi^-1(Phi(z) / k) at the k-th check."""
        z = self.config.holdout_z
        if not self.config.holdout_looks or z >= 0:
            return z
        normal = NormalDist()
        return normal.inv_cdf(normal.cdf(z) / max(1, self.looks))

    def __call__(self, model: nn.Module) -> tuple[float, str]:
        """(held-out accuracy of ``model``, why the check is rejected or "")."""
        self.looks += 1
        pred = predict(model, self.x, bf16=self.config.bf16)
        correct, sent = pred == self.y, (pred == self.label) & self.others
        z, n, m = self.margin(), len(self.y), max(1, int(self.others.sum()))
        holdout = correct.float().mean().item()
        drop = self.correct.float().mean().item() - holdout
        if drop > self.config.max_holdout_drop + z * float((correct != self.correct).sum()) ** 0.5 / n:
            return holdout, "held-out reserve accuracy dropped"
        rise = float(sent.sum() - self.sent.sum()) / m
        if rise > self.config.max_target_rise + z * float((sent != self.sent).sum()) ** 0.5 / m:
            return holdout, "held-out images sent to the flagged label"
        return holdout, ""


def removal_target(config: UPGPConfig, clean_share: float, clean_rate: float = 1.0) -> float:
    """The flagged set's accuracy on its labels at which removal stops: s, or with
    ``stop_counts_clean`` s + (1 - s) c, where c is the estimated clean share of B (clean samples
    stay fit to their labels while the poisons fall to s). s is stop_flagged_accuracy, or with
    ``stop_at_clean_rate`` at most ``clean_rate`` (``HoldoutCheck.clean_rate``): the poisons are
    unlearned once the flagged label is said on them no more often than on clean images."""
    s = config.stop_flagged_accuracy
    if config.stop_at_clean_rate:
        s = min(s, clean_rate)
    return s + (1 - s) * clean_share if config.stop_counts_clean else s


def projected_unlearning(model: nn.Module, flagged: Data, fit: Data, holdout: Data,
                         config: UPGPConfig, *, max_steps: int | None = None,
                         seed: int | None = None, reference: nn.Module | None = None,
                         clean_share: float = 0.0,
                         on_check: Callable[[int, nn.Module], None] | None = None
                         ) -> tuple[nn.Module, RemovalLog]:
    """Return a copy of ``model`` with the flagged set unlearned, and the log of the loop.

    Each step: g_u on a batch of B (``removal_loss``), n on a batch of the reserve's ``fit``
    part (``normal_ema``: a moving average), then a step along g_u projected off n: ``sgd``,
    -removal_lr g_proj; ``relative``, ``relative_step`` of size radius (``removal_radius``,
    times ``removal_growth`` after each accepted check; for GPM, ``relative_step`` of the
    projected gradient, whose per-tensor scaling keeps it off the clean inputs' subspace; for
    the subspace projection, g_proj scaled as a whole, ``scale_to_radius``). Every ``check_every`` steps a
    ``HoldoutCheck`` against ``reference`` (default: ``model``) accepts the steps, or undoes
    them back to the last accepted check and halves the step size (at most
    ``removal_backtracks`` times, then stops). Stops too once B's accuracy on its labels is at
    most ``removal_target`` or after ``max_steps`` kept steps (default removal_max_steps).
    ``on_check(steps, model)`` is called at step 0 and at every accepted check (for plots).
    """
    x_flagged, y_flagged = flagged
    x_fit, y_fit = fit
    max_steps = config.removal_max_steps if max_steps is None else max_steps
    seed = config.seed if seed is None else seed
    if len(x_flagged) == 0:
        return copy.deepcopy(model), RemovalLog(stop_reason="nothing flagged")
    check = HoldoutCheck(reference or model, *holdout, int(y_flagged.mode().values), config)
    model = copy.deepcopy(model).eval()  # BN in eval mode: flagged batches must not move its stats
    params = [p for p in model.parameters() if p.requires_grad]
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    projection, bf16 = config.projection, config.bf16
    bases = gpm_bases(model, x_fit, config.gpm_energy, seed=seed) if projection == "gpm" else None
    gen = torch.Generator().manual_seed(seed)
    log = RemovalLog()
    log.holdout_accuracy.append(accuracy(model, *holdout, bf16=bf16))  # not a check
    log.flagged_accuracy.append(accuracy(model, x_flagged, y_flagged, bf16=bf16))
    if on_check is not None:
        on_check(0, model)
    target = removal_target(config, clean_share, check.clean_rate())
    size = config.removal_lr if config.removal_step == "sgd" else config.removal_radius
    cos_sum, cos_count, n = 0.0, 0, None

    normal_iter = endless_batches(len(x_fit), config.removal_batch, gen, drop_last=True)
    flagged_iter = endless_batches(len(x_flagged), config.removal_batch, gen)
    snapshot, accepted = [p.detach().clone() for p in params], 0
    while log.steps < max_steps:
        idx = next(flagged_iter)
        g = _grads(model, _batch_loss(model, x_flagged[idx], y_flagged[idx], config.removal_loss,
                                      bf16))
        if projection != "none":
            normals = []
            for _ in range(config.subspace_k if projection == "subspace" else 1):
                jdx = next(normal_iter)
                normals.append(_grads(model, _batch_loss(model, x_fit[jdx], y_fit[jdx], None, bf16)))
            ema = config.normal_ema
            n = normals[0] if n is None or ema == 0 else [ema * a + (1 - ema) * b
                                                          for a, b in zip(n, normals[0])]
            cos_sum, cos_count = cos_sum + abs(_cosine(g, n)), cos_count + 1
        if config.removal_step == "relative" and projection in ("none", "vector", "layer"):
            step = relative_step(g, n, params, size, per_layer=projection == "layer")
        else:
            if projection == "vector":
                g = project_out(g, n)
            elif projection == "layer":
                g = project_out_per_layer(g, n)
            elif projection == "subspace":
                g = project_out_subspace(g, orthonormal_basis(normals))
            elif projection == "gpm":
                projected = project_gpm(dict(zip(names, g)), bases)
                g = [projected[k] for k in names]
            if config.removal_step == "sgd":
                step = [-size * gi for gi in g]
            elif projection == "gpm":  # per-tensor scalars keep G U = 0: the weight metric holds
                step = relative_step(g, None, params, size)
            else:  # a per-tensor metric would leave the subspace's orthogonal complement
                step = scale_to_radius(g, params, size)
        with torch.no_grad():
            for p, d in zip(params, step):
                p.add_(d)
        log.steps += 1
        log.steps_taken += 1
        if log.steps % config.check_every == 0 or log.steps == max_steps:
            holdout_accuracy, rejected = check(model)
            if rejected:
                with torch.no_grad():  # undo back to the last accepted check
                    for p, s in zip(params, snapshot):
                        p.copy_(s)
                log.steps = accepted
                if log.backtracks == config.removal_backtracks:
                    log.stop_reason = rejected
                    break
                log.backtracks += 1
                size /= 2
                continue
            snapshot, accepted = [p.detach().clone() for p in params], log.steps
            flagged_accuracy = accuracy(model, x_flagged, y_flagged, bf16=bf16)
            log.holdout_accuracy.append(holdout_accuracy)
            log.flagged_accuracy.append(flagged_accuracy)
            if on_check is not None:
                on_check(log.steps, model)
            if flagged_accuracy <= target:
                log.stop_reason = "flagged set unlearned"
                break
            if config.removal_step == "relative":
                size *= config.removal_growth
    else:
        log.stop_reason = "step budget"
    if projection != "none":
        log.mean_abs_cosine = cos_sum / max(1, cos_count)  # over every step taken, undone or kept
    log.final_lr = size
    log.final_flagged_accuracy = log.flagged_accuracy[-1]  # the last accepted check's model
    return model, log


def _cosine(a: list[Tensor], b: list[Tensor]) -> float:
    """cos(a, b) over the whole concatenated parameter vector."""
    return float(_dot(a, b) / (_dot(a, a).sqrt() * _dot(b, b).sqrt()).clamp_min(1e-30))
