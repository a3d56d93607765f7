"""Step 2 of UPGP: per-sample unlearning sensitivity, and the gradient inner products behind it.

s_i = l_i(theta_0 + dtheta_N) - l_i(theta_0) ~ <g_i, dtheta_N> ~ eta * <g_i, g_N> (method.md, eq. 2).
Clean samples share features with N, so their loss rises; backdoor samples lean on the trigger,
whose gradient is nearly orthogonal to g_N, so their loss barely moves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..presets import check_choice
from ..train import autocast, batches, to_float

SCORES = ("loss_after", "loss_change", "confidence_change")


@torch.no_grad()
def per_sample_outputs(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024,
                       bf16: bool = True) -> tuple[Tensor, Tensor]:
    """(cross-entropy, softmax probability of the label) for every sample, eval mode, on CPU."""
    device = next(model.parameters()).device
    model.eval()
    losses, probs = [], []
    for idx in batches(len(x), batch_size):
        with autocast(device, bf16):
            logits = model(to_float(x[idx], device))
        logp = F.log_softmax(logits.float(), 1).gather(1, y[idx].to(device)[:, None])[:, 0]
        losses.append(-logp.cpu())
        probs.append(logp.exp().cpu())
    return torch.cat(losses), torch.cat(probs)


def sensitivity_scores(model: nn.Module, perturbed: nn.Module, x: Tensor, y: Tensor,
                       score: str = "loss_after", batch_size: int = 1024,
                       bf16: bool = True) -> Tensor:
    """One score per sample; *low* means insensitive to the unlearning perturbation.

    ``loss_after``: l_i(theta_0 + dtheta_N). ``loss_change``: l_i(theta_0 + dtheta_N) - l_i(theta_0).
    ``confidence_change``: p_y(theta_0) - p_y(theta_0 + dtheta_N) (the drop in confidence).
    """
    check_choice("sensitivity score", score, SCORES)
    loss_after, prob_after = per_sample_outputs(perturbed, x, y, batch_size, bf16)
    if score == "loss_after":
        return loss_after
    loss_before, prob_before = per_sample_outputs(model, x, y, batch_size, bf16)
    if score == "loss_change":
        return loss_after - loss_before
    return prob_before - prob_after


def label_medians(scores: Tensor, labels: Tensor) -> dict[int, Tensor]:
    """{c: median{s_j : y_j = c}} for every label c present (torch's median: the lower middle)."""
    return {c: scores[labels == c].median() for c in labels.unique().tolist()}


def calibrate_on_reserve(scores: Tensor, labels: Tensor, reference: Tensor,
                         reference_labels: Tensor) -> Tensor:
    """s_i / median{r_j : y_j = y_i}: each score over the median score of its label's reserve images.

    The reserve is clean, so each label gets a clean reference, the target label included; a
    per-label median over the training set instead fails where an attack poisons most of a label
    (SIG at 10% poisons all of it). Scores must be positive (``loss_after``); the ratio keeps them so.
    """
    if float(scores.min()) < 0 or float(reference.min()) < 0:
        raise ValueError("calibration on the reserve needs positive scores (score 'loss_after'); "
                         f"got a minimum of {min(float(scores.min()), float(reference.min())):.3g}")
    medians = label_medians(reference, reference_labels)
    calibrated = torch.empty_like(scores)
    for label in labels.unique().tolist():
        if label not in medians:
            raise ValueError(f"no reserve image of label {label} to calibrate its scores against")
        rows = labels == label
        calibrated[rows] = scores[rows] / medians[label].clamp_min(1e-12)
    return calibrated


def label_median_ratio(reference: Tensor, reference_labels: Tensor, label: int) -> float:
    """m_label / median_{c != label} m_c, with m_c the median reserve score of label c.

    Against a sample of label c, calibration (``calibrate_on_reserve``) scales a ``label`` sample's
    score by m_c / m_label: a ratio under 1 (the perturbation disturbs ``label`` less than a
    typical label) moves the poisons of an all-to-one attack with target ``label`` up, towards
    the clean samples; a ratio over 1 moves them down.
    """
    medians = label_medians(reference, reference_labels)
    if label not in medians or len(medians) < 2:
        raise ValueError(f"label {label} needs reserve images of its own and of another label; "
                         f"the reserve has labels {sorted(medians)}")
    others = torch.stack([m for c, m in medians.items() if c != label])
    return float(medians[label] / others.median().clamp_min(1e-12))


def _per_sample_grad_fn(model: nn.Module):
    """vmap(grad(loss of one sample)) over a batch, with the model's current parameters."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi[None],))
        return F.cross_entropy(logits, yi[None])

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    return lambda xb, yb: torch.cat([g.flatten(1) for g in per_sample(params, xb, yb).values()], 1)


def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 64) -> Tensor:
    """Flattened per-sample cross-entropy gradients g_i, shape (N, P), float32, eval-mode BN.

    Uses ``torch.func``: vmap over ``grad`` of a functional call on one sample.
    """
    return per_sample_dot(model, x, y, None, batch_size)


def per_sample_dot(model: nn.Module, x: Tensor, y: Tensor, vectors: Tensor | None,
                   batch_size: int = 64) -> Tensor:
    """G V: each sample's gradient g_i dotted with the columns of ``vectors`` (P x k), batch by
    batch so that the (N x P) gradient matrix is never held; ``None`` returns G itself."""
    device = next(model.parameters()).device
    model.eval()
    fn = _per_sample_grad_fn(model)
    out = []
    for idx in batches(len(x), batch_size):
        g = fn(to_float(x[idx], device).contiguous(), y[idx].to(device))
        out.append((g if vectors is None else g @ vectors.to(device)).cpu())
    return torch.cat(out)


def mean_gradient(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """g_S: the flattened gradient of the mean cross-entropy over (x, y), eval-mode BN."""
    device = next(model.parameters()).device
    model.eval()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for idx in batches(len(x), batch_size):
        loss = F.cross_entropy(model(to_float(x[idx], device)), y[idx].to(device),
                               reduction="sum") / len(x)
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g
    return torch.cat([t.flatten() for t in total]).cpu()


def flat_delta(model: nn.Module, delta: dict[str, Tensor]) -> Tensor:
    """A parameter-change dict flattened in ``model.named_parameters()`` order."""
    return torch.cat([delta[k].flatten().cpu() for k, _ in model.named_parameters()])


def gradient_inner_products(model: nn.Module, x_reserve: Tensor, y_reserve: Tensor,
                            x: Tensor, y: Tensor, batch_size: int = 64) -> Tensor:
    """<g_N, g_i> for each sample i, with g_N the mean gradient over the reserve (method.md §2)."""
    g_normal = mean_gradient(model, x_reserve, y_reserve)
    return per_sample_dot(model, x, y, g_normal[:, None], batch_size)[:, 0]


def first_order_loss_change(model: nn.Module, delta: dict[str, Tensor], x: Tensor, y: Tensor,
                            batch_size: int = 64) -> Tensor:
    """Predicted loss change <g_i, dtheta> for each sample (first-order Taylor expansion)."""
    return per_sample_dot(model, x, y, flat_delta(model, delta)[:, None], batch_size)[:, 0]
