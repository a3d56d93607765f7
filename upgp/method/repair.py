"""Optional step 5 of UPGP: repair clean accuracy on the reserve without relearning the backdoor.

method.md allows a brief fine-tune on N after removal, and warns (issue 3's first trial) that
plain fine-tuning brings the backdoor back. Here the projection of step 4 is turned around: the
reserve gradient g_N is projected onto the null space of the flagged set's gradient g_B,

    g_repair = g_N - (<g_N, g_B> / ||g_B||^2) g_B,

so that, to first order, a repair step leaves the loss of the flagged samples on their (poisoned)
labels where removal put it. Stopping looks only at what a defender has: if the flagged set's
accuracy on its labels climbs back above its post-removal level by more than a margin, the loop
stops; of the checks before that, the best one is returned (the latest on ties; step 0, the
unrepaired model, included), judged by ``select``:

- ``holdout``: accuracy on the held-out reserve;
- ``stamped``: the mean of that and the held-out reserve's accuracy with ``estimated_trigger``
  stamped on (true labels), a reserve-side estimate of RA, so a repair that makes the model
  ignore the trigger is kept even where it costs a little clean held-out accuracy.

The trigger is estimated per pixel from the flagged set B and the reserve N in one of two forms
(``trigger``): ``shift``, x -> x + (mean(B) - mean(N)), or ``affine``, x -> s x + c, which also
matches B's spread and so recovers a blend's loss of contrast.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..presets import check_choice
from ..train import accuracy, endless_batches, random_crop_flip
from .config import REPAIR_SELECTIONS, TRIGGER_FORMS, UPGPConfig
from .projection import project_out
from .unlearning import Data, RemovalLog, _batch_loss, _cosine, _grads, merge_logs, projected_unlearning

__all__ = ["REPAIR_SELECTIONS", "TRIGGER_FORMS", "estimated_trigger", "projected_repair",
           "remove_and_repair", "stamp"]


def estimated_trigger(x_flagged: Tensor, x_reserve: Tensor, form: str = "shift"
                      ) -> tuple[Tensor, Tensor]:
    """(s, c), per pixel: stamping x -> s x + c makes the reserve's images look like B's.

    ``shift``: s = 1, c = mean(B) - mean(N) (uint8 units). A trigger that adds to or blends into
    every poisoned image, x' = (1 - a) x + a t, gives c ~ a (t - E[x]) where B's content is
    distributed like N's (SIG's additive signal exactly, a patch or blend approximately); a warp
    (WaNet) leaves c near 0.
    ``affine``: s = clip(std(B) / std(N), 0, 1), c = mean(B) - s mean(N): the map that matches
    B's per-pixel mean and spread. A blend gives s ~ 1 - a and c ~ a t, a patch s ~ 0 and c ~ t
    inside it, an additive trigger s ~ 1 and the ``shift`` estimate.
    """
    check_choice("trigger form", form, TRIGGER_FORMS)
    b, n = x_flagged.float(), x_reserve.float()
    if form == "shift":
        return torch.ones_like(b[0]), b.mean(0) - n.mean(0)
    scale = (b.std(0) / n.std(0).clamp_min(1e-3)).clamp_(0, 1)
    return scale, b.mean(0) - scale * n.mean(0)


def stamp(x: Tensor, trigger: tuple[Tensor, Tensor]) -> Tensor:
    """uint8 images mapped by ``trigger`` = (s, c): s x + c, clamped to [0, 255]."""
    scale, shift = trigger
    return (x.float() * scale + shift).clamp_(0, 255).round_().to(torch.uint8)


def projected_repair(model: nn.Module, fit: Data, holdout: Data, flagged: Data,
                     config: UPGPConfig, *, seed: int | None = None
                     ) -> tuple[nn.Module, RemovalLog]:
    """Return a copy of ``model`` fine-tuned on the reserve's ``fit`` part (random crop + flip,
    plain SGD at ``repair_lr`` for ``repair_steps``, BN in eval mode) along g_N projected off g_B
    (``repair_project=False``: plain fine-tuning), and its log.

    ``repair_trigger_share`` > 0: that share of each reserve batch carries ``estimated_trigger``
    (in the form ``repair_trigger``) and keeps its true label, which teaches the model to ignore
    the trigger rather than send it to another class. ``repair_select`` picks the check to
    return (module docstring). ``steps`` in the log is the step of the returned check; ``mean_abs_cosine`` is
    the mean |cos(g_N, g_B)| before projection, the share of each repair step that would move
    B's loss; ``stamped_accuracy`` (``select="stamped"``) is the stamped held-out accuracy at
    each check.
    """
    x_reserve, y_reserve = fit
    x_holdout, y_holdout = holdout
    x_flagged, y_flagged = flagged
    trigger_share, select, trigger = (config.repair_trigger_share, config.repair_select,
                                      config.repair_trigger)
    bf16, batch_size, check_every = config.bf16, config.removal_batch, config.check_every
    lr, max_flagged_rise = config.repair_lr, config.repair_max_flagged_rise
    gen = torch.Generator().manual_seed(config.seed if seed is None else seed)
    model = copy.deepcopy(model).eval()
    log = RemovalLog()
    if len(x_flagged) == 0:
        log.stop_reason = "nothing flagged"
        return model, log
    params = [p for p in model.parameters() if p.requires_grad]
    reserve_iter = endless_batches(len(x_reserve), batch_size, gen, drop_last=True)
    flagged_iter = endless_batches(len(x_flagged), batch_size, gen)
    n_stamped = round(trigger_share * batch_size)
    estimate = (estimated_trigger(x_flagged, x_reserve, trigger)
                if n_stamped or select == "stamped" else None)
    x_holdout_stamped = (stamp(x_holdout, estimate)
                         if estimate is not None and select == "stamped" else None)

    def merit(holdout: float) -> float:
        """What a check is judged by: held-out accuracy, or its mean with the stamped one's."""
        if x_holdout_stamped is None:
            return holdout
        log.stamped_accuracy.append(accuracy(model, x_holdout_stamped, y_holdout, bf16=bf16))
        return (holdout + log.stamped_accuracy[-1]) / 2

    flagged_start = accuracy(model, x_flagged, y_flagged, bf16=bf16)
    log.flagged_accuracy.append(flagged_start)
    log.holdout_accuracy.append(accuracy(model, x_holdout, y_holdout, bf16=bf16))
    best_merit, kept = merit(log.holdout_accuracy[-1]), 0  # kept: index of the best check
    best = [p.detach().clone() for p in params]
    cos_sum, cos_count = 0.0, 0
    step = 0
    while step < config.repair_steps:
        idx = next(reserve_iter)
        x_batch = x_reserve[idx]  # a copy (index tensor): stamping leaves the reserve as it is
        if estimate is not None and n_stamped:
            x_batch[:n_stamped] = stamp(x_batch[:n_stamped], estimate)
        g = _grads(model, _batch_loss(model, random_crop_flip(x_batch, gen),
                                      y_reserve[idx], None, bf16))
        if config.repair_project:
            jdx = next(flagged_iter)
            g_b = _grads(model, _batch_loss(model, x_flagged[jdx], y_flagged[jdx], None, bf16))
            cos_sum, cos_count = cos_sum + abs(_cosine(g, g_b)), cos_count + 1
            g = project_out(g, g_b)
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.sub_(lr * gi)
        step += 1
        log.steps_taken = step
        if step % check_every == 0 or step == config.repair_steps:
            flagged_accuracy = accuracy(model, x_flagged, y_flagged, bf16=bf16)
            if flagged_accuracy - flagged_start > max_flagged_rise:
                log.stop_reason = "flagged set relearned"
                break
            holdout_accuracy = accuracy(model, x_holdout, y_holdout, bf16=bf16)
            log.flagged_accuracy.append(flagged_accuracy)
            log.holdout_accuracy.append(holdout_accuracy)
            if (score := merit(holdout_accuracy)) >= best_merit:  # ties: the more repaired model
                best, best_merit, log.steps = [p.detach().clone() for p in params], score, step
                kept = len(log.holdout_accuracy) - 1
    else:
        log.stop_reason = "step budget"
    with torch.no_grad():
        for p, b in zip(params, best):
            p.copy_(b)
    log.final_flagged_accuracy = log.flagged_accuracy[kept]
    if log.stamped_accuracy:
        log.final_stamped_accuracy = log.stamped_accuracy[kept]
    log.mean_abs_cosine = cos_sum / max(1, cos_count)
    log.final_lr = lr
    return model, log


def remove_and_repair(model: nn.Module, flagged: Data, fit: Data, holdout: Data,
                      config: UPGPConfig, *, clean_share: float = 0.0,
                      on_check: Callable[[int, nn.Module], None] | None = None,
                      seconds: dict[str, float] | None = None
                      ) -> tuple[nn.Module, RemovalLog, RemovalLog, int]:
    """Step 4 (``projected_unlearning``) and, with ``repair_steps``, step 5 in rounds: removal,
    repair, and another round only where the held-out check stopped removal and the repair won
    some accuracy back, within ``removal_max_steps`` removal steps in all. Every round's checks
    compare against ``model``. Returns (model, removal log, repair log, rounds);
    ``seconds`` receives the stages' wall times.
    """
    cleaned, removals, repairs = model, [], []
    seconds = {} if seconds is None else seconds
    seconds["removal"] = 0.0
    for rnd in range(config.removal_rounds):
        start = time.perf_counter()
        cleaned, removal = projected_unlearning(
            cleaned, flagged, fit, holdout, config,
            max_steps=config.removal_max_steps - sum(r.steps for r in removals),
            seed=config.seed + rnd, reference=model, clean_share=clean_share, on_check=on_check)
        removals.append(removal)
        seconds["removal"] += time.perf_counter() - start
        if not config.repair_steps:
            break
        start = time.perf_counter()
        cleaned, repair = projected_repair(cleaned, fit, holdout, flagged, config,
                                           seed=config.seed + rnd)
        repairs.append(repair)
        seconds["repair"] = seconds.get("repair", 0.0) + time.perf_counter() - start
        if removal.stop_reason != "held-out reserve accuracy dropped" or repair.steps == 0:
            break
    return cleaned, merge_logs(removals), merge_logs(repairs), len(removals)
