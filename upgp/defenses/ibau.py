"""Implicit backdoor adversarial unlearning (I-BAU) {Zeng et al. 2022}.

The minimax min_theta max_{||delta||_2 <= C} L(f_theta(x + delta), y) on the reserve, with one
universal perturbation delta per round. Each round: (1) delta ascends the reserve loss (SGD,
L2 penalty, then projected on the ball); (2) theta takes Adam steps (lr 1e-4) along the implicit
hypergradient of the outer loss through the fixed point delta* = Phi(delta*, theta),
Phi = delta - eta grad_delta L_inner:
  dL/dtheta = d_theta L_out + (d_theta Phi)^T v,  v = sum_{k<K} (d_delta Phi^T)^k d_delta L_out
(K fixed-point iterations). 5 rounds, K = 5 (BackdoorBench). The outer loss is the CE of a
reserve batch in which ``perturbed_share`` (1%, at least one image) carries delta, as in the
authors' code. BatchNorm stays in eval mode, as there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..train import autocast, batches, to_float
from .base import Data, DefenseConfig, Report, register_defense


@dataclass(frozen=True)
class IBAUConfig(DefenseConfig):
    rounds: int = 5
    fixed_point_steps: int = 5  # K
    batch_size: int = 100
    outer_lr: float = 1e-4
    inner_lr: float = 0.1  # eta of the fixed-point map
    delta_lr: float = 10.0  # step of the perturbation search
    delta_norm: float = 2.5  # L2 radius in [0, 1] pixel units (10 in normalised-input units)
    delta_penalty: float = 1e-3
    perturbed_share: float = 0.01


def _logits(model: nn.Module, x: Tensor, delta: Tensor, bf16: bool) -> Tensor:
    with autocast(x.device, bf16):
        return model((x + delta).clamp(0.0, 1.0)).float()


def inner_loss(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, config: IBAUConfig) -> Tensor:
    """-CE(f(x + delta), y) + lambda ||delta||^2: minimised by the adversary."""
    return (-F.cross_entropy(_logits(model, x, delta, config.bf16), y)
            + config.delta_penalty * delta.pow(2).sum())


def universal_perturbation(model: nn.Module, reserve: Data, config: IBAUConfig,
                           gen: torch.Generator) -> Tensor:
    """One pass of SGD on ``inner_loss`` over the reserve (labels: the model's own predictions)."""
    device = next(model.parameters()).device
    delta = torch.zeros(1, *reserve[0].shape[1:], device=device, requires_grad=True)
    opt = torch.optim.SGD([delta], lr=config.delta_lr)
    for idx in batches(len(reserve[1]), config.batch_size, gen):
        x = to_float(reserve[0][idx], device)
        with torch.no_grad():
            y_pred = _logits(model, x, torch.zeros_like(delta), config.bf16).argmax(1)
        loss = inner_loss(model, x, y_pred, delta, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        delta.mul_(min(1.0, config.delta_norm / float(delta.norm().clamp_min(1e-12))))
    return delta.detach()


def implicit_hypergradient(model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor,
                           delta: Tensor, config: IBAUConfig) -> list[Tensor]:
    """dL_out/dtheta through the fixed point of Phi (see the module docstring)."""
    d = delta.detach().requires_grad_(True)
    n_pert = max(1, round(config.perturbed_share * len(y)))
    mask = torch.zeros(len(y), 1, 1, 1, device=x.device)
    mask[:n_pert] = 1.0
    out = F.cross_entropy(_logits(model, x, mask * d, config.bf16), y)
    *g_theta, g_delta = torch.autograd.grad(out, [*params, d])
    grad_inner = torch.autograd.grad(inner_loss(model, x, y, d, config), d, create_graph=True)[0]
    phi = d - config.inner_lr * grad_inner
    v = g_delta
    for _ in range(config.fixed_point_steps):
        v = torch.autograd.grad(phi, d, grad_outputs=v, retain_graph=True)[0] + g_delta
    extra = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
    return [g if e is None else g + e for g, e in zip(g_theta, extra)]


@register_defense("ibau", IBAUConfig, presets={"smoke": {"rounds": 2, "batch_size": 32}})
def implicit_backdoor_adversarial_unlearning(model: nn.Module, reserve: Data, config: IBAUConfig
                                             ) -> tuple[nn.Module, Report]:
    model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.outer_lr)
    gen = torch.Generator().manual_seed(config.seed)
    norms = []
    for _ in range(config.rounds):
        delta = universal_perturbation(model, reserve, config, gen)
        norms.append(float(delta.norm()))
        for idx in batches(len(reserve[1]), config.batch_size, gen, drop_last=True):
            x, y = to_float(reserve[0][idx], device), reserve[1][idx].to(device)
            grads = implicit_hypergradient(model, params, x, y, delta, config)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
    return model, {"delta_norms": norms}
