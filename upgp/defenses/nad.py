"""Neural attention distillation (NAD) {Li et al. 2021}.

A teacher is the backdoored model fine-tuned on the reserve (as FT); the student (the backdoored
model again) is then trained on the reserve with CE plus, for the last three feature stages l,
beta_l * || a_s^l / ||a_s^l|| - a_t^l / ||a_t^l|| ||^2 (mean over the map), where the attention
map a^l = mean_c |F_c^l|^p (p = 2). Betas 500, 1000, 1000 and lr 0.01 as in BackdoorBench.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Data, DefenseConfig, Report, fine_tune, register_defense


@dataclass(frozen=True)
class NADConfig(DefenseConfig):
    teacher_epochs: int = 10
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 256
    betas: tuple[float, float, float] = (500.0, 1000.0, 1000.0)
    power: float = 2.0


def attention_map(features: Tensor, power: float) -> Tensor:
    """a = normalise(mean_c |F_c|^p), flattened per sample."""
    return F.normalize(features.float().abs().pow(power).mean(1).flatten(1), dim=1)


class StageRecorder:
    """Forward hooks that keep the outputs of ``model.stages()`` from the last forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._keep) for m in model.stages()]

    def _keep(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self.outputs.append(output)

    def __call__(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        self.outputs = []
        logits = model(x)
        return logits, self.outputs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_defense("nad", NADConfig,
                  presets={"smoke": {"teacher_epochs": 3, "epochs": 5, "batch_size": 64}})
def neural_attention_distillation(model: nn.Module, reserve: Data, config: NADConfig
                                  ) -> tuple[nn.Module, Report]:
    teacher = copy.deepcopy(model)
    t_stats = fine_tune(teacher, reserve, config.teacher_epochs, config.lr, config.batch_size,
                        config)
    teacher.eval()
    student = copy.deepcopy(model)
    watch_t, watch_s = StageRecorder(teacher), StageRecorder(student)

    def loss_fn(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        logits, s_maps = watch_s(m, x)
        with torch.no_grad():
            _, t_maps = watch_t(teacher, x)
        at = sum(beta * (attention_map(s, config.power) - attention_map(t, config.power))
                 .pow(2).mean() for beta, s, t in zip(config.betas, s_maps, t_maps))
        return F.cross_entropy(logits, y) + at

    s_stats = fine_tune(student, reserve, config.epochs, config.lr, config.batch_size, config,
                        loss_fn=loss_fn)
    watch_t.remove()
    watch_s.remove()
    return student, {"seconds": {"teacher": t_stats["train_seconds"],
                                 "distillation": s_stats["train_seconds"]}}
