"""Step 1 of UPGP: the unlearning perturbation dtheta_N made by forgetting the clean reserve N.

Starting from theta_0, take SGD steps on an unlearning loss over batches of N (BatchNorm in eval
mode, gradient-norm clipping) until the accuracy on N falls to ``stop_accuracy`` or the step
budget is spent: dtheta_N = theta_K - theta_0 ~ -eta * sum_k grad L_unlearn(theta_k).
For gradient ascent, L_unlearn = -CE, so dtheta_N ~ eta * sum_k g_N(theta_k) (method.md, eq. 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import check_choice
from ..train import accuracy, autocast, batches, to_float

UNLEARNING_LOSSES = ("max_entropy", "ascent")


def unlearning_loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Loss whose minimisation forgets (x, y).

    ``ascent``: -CE(f(x), y) (gradient ascent on cross-entropy; unbounded).
    ``max_entropy``: CE(f(x), uniform) = -mean_c log p_c (pushes predictions to uniform).
    """
    check_choice("unlearning loss", kind, UNLEARNING_LOSSES)
    if kind == "ascent":
        return -F.cross_entropy(logits, y)
    return -F.log_softmax(logits.float(), dim=1).mean()  # max_entropy


@dataclass
class Perturbation:
    """The perturbed model theta_0 + dtheta_N and the trajectory that produced it."""

    model: nn.Module
    steps: int
    reserve_accuracy: list[float] = field(default_factory=list)

    def delta(self, original: nn.Module) -> dict[str, Tensor]:
        """dtheta_N = theta_K - theta_0, per parameter name."""
        before = dict(original.named_parameters())
        return {k: (p - before[k]).detach() for k, p in self.model.named_parameters()}


def unlearning_perturbation(model: nn.Module, x_reserve: Tensor, y_reserve: Tensor,
                            loss: str = "max_entropy", lr: float = 0.01, batch_size: int = 256,
                            max_steps: int = 50, stop_accuracy: float = 0.3,
                            clip_norm: float = 5.0, seed: int = 0,
                            bf16: bool = True) -> Perturbation:
    """Unlearn the clean reserve from a copy of ``model`` (which is left unchanged)."""
    check_choice("unlearning loss", loss, UNLEARNING_LOSSES)
    device = next(model.parameters()).device
    perturbed = copy.deepcopy(model).eval()  # BatchNorm statistics stay those of theta_0
    params = list(perturbed.parameters())
    gen = torch.Generator().manual_seed(seed)
    history = [accuracy(perturbed, x_reserve, y_reserve, bf16=bf16)]
    steps = 0
    while steps < max_steps and history[-1] > stop_accuracy:
        for idx in batches(len(x_reserve), batch_size, gen):
            with autocast(device, bf16):
                logits = perturbed(to_float(x_reserve[idx], device))
            value = unlearning_loss(logits, y_reserve[idx].to(device), loss)
            for p in params:
                p.grad = None
            value.backward()
            nn.utils.clip_grad_norm_(params, clip_norm)
            # plain SGD, theta <- theta - lr * g, by hand: torch.optim's first use imports
            # torch._dynamo, about 2 s a process
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
            steps += 1
            history.append(accuracy(perturbed, x_reserve, y_reserve, bf16=bf16))
            if steps >= max_steps or history[-1] <= stop_accuracy:
                break
    return Perturbation(perturbed, steps, history)
