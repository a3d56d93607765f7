"""A readable training loop over uint8 tensors held in memory (airbench style).

Batches are sliced from one tensor, augmented on the batch (random crop with 4-pixel zero padding
and horizontal flip), run channels-last under bfloat16 autocast, and optimised by SGD with
Nesterov momentum under a OneCycle or cosine schedule. No DataLoader workers are needed for 32x32
images. Seeded: the same seed, data and settings give the same weights on the same machine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .presets import SCHEDULES, Preset, check_choice


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CPU or CUDA when ``enabled``, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_float(x: Tensor, device: torch.device) -> Tensor:
    """uint8 images -> float32 in [0, 1], channels-last, on ``device``."""
    x = x.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


def random_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random ``pad``-pixel translation (zero padding, as RandomCrop(32, padding=4)) and flip."""
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols].contiguous(memory_format=torch.channels_last)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[Tensor]:
    """Index batches over ``range(n)``, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def endless_batches(n: int, batch_size: int, generator: torch.Generator,
                    drop_last: bool = False) -> Iterator[Tensor]:
    """``batches`` epoch after epoch, reshuffled each time (for loops counted in steps)."""
    while True:
        yield from batches(n, batch_size, generator, drop_last)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                   schedule: str, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (Nesterov when momentum > 0) with a OneCycle or cosine schedule over ``total_steps``."""
    check_choice("schedule", schedule, SCHEDULES)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=momentum > 0)
    if schedule == "onecycle":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps, pct_start=0.25)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, sched


LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
BatchTransform = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The standard objective: CE(f(x), y)."""
    return F.cross_entropy(model(x), y)


def fit(model: nn.Module, x: Tensor, y: Tensor, epochs: int, batch_size: int, lr: float,
        schedule: str = "onecycle", bf16: bool = True, seed: int = 0, momentum: float = 0.9,
        weight_decay: float = 5e-4, loss_fn: LossFn = cross_entropy_loss,
        after_step: Callable[[nn.Module], None] | None = None, augment: bool = True,
        device: torch.device | None = None, progress: bool = False, desc: str = "train",
        batch_transform: BatchTransform | None = None) -> dict[str, float]:
    """Optimise ``loss_fn(model, batch, labels)`` over uint8 images ``x`` in place.

    The one training loop of the package: training from scratch (``train``) and every defense
    that fine-tunes (FT, FP, NAD, ABL) call it. ``after_step`` runs after each optimiser step
    (e.g. to keep pruned weights at zero). ``batch_transform(idx, batch, generator)`` rewrites
    each augmented uint8 batch (per-batch poisoning, ``upgp.attacks.per_batch_poisoning``).
    Returns timing stats.
    """
    device = device or default_device()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).to(memory_format=torch.channels_last).train()
    x_dev, y_dev = x.to(device), y.to(device)
    batch_size = min(batch_size, len(x))
    steps_per_epoch = max(1, len(x) // batch_size)
    opt, sched = make_optimizer(model, lr, momentum, weight_decay, schedule,
                                epochs * steps_per_epoch)
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc=desc, leave=False)
    loss_sum = torch.zeros((), device=device)
    for _ in range(epochs):
        loss_sum.zero_()
        for idx in batches(len(x), batch_size, gen, drop_last=True):
            if batch_transform is None:
                xb = to_float(x_dev[idx.to(device)], device)
                xb = random_crop_flip(xb, gen) if augment else xb
            else:  # the trigger goes on after augmentation, as it would at test time
                xb = random_crop_flip(x[idx], gen) if augment else x[idx]
                xb = to_float(batch_transform(idx, xb, gen), device)
            idx = idx.to(device)
            with autocast(device, bf16):
                loss = loss_fn(model, xb, y_dev[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            loss_sum += loss.detach()
            bar.update()
        bar.set_postfix(loss=f"{loss_sum.item() / steps_per_epoch:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    return {"train_seconds": seconds,
            "images_per_second": epochs * steps_per_epoch * batch_size / seconds,
            "final_train_loss": loss_sum.item() / steps_per_epoch}


def train(model: nn.Module, x: Tensor, y: Tensor, preset: Preset, seed: int,
          device: torch.device | None = None, progress: bool = True,
          batch_transform: BatchTransform | None = None) -> dict[str, float]:
    """Train ``model`` from its current weights on ``x, y`` with the preset's recipe."""
    return fit(model, x, y, preset.epochs, preset.batch_size, preset.lr, preset.schedule,
               preset.bf16, seed, preset.momentum, preset.weight_decay, device=device,
               progress=progress, batch_transform=batch_transform)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1024, bf16: bool = True,
            device: torch.device | None = None, exclude: Tensor | None = None) -> Tensor:
    """Predicted labels for uint8 images ``x`` (eval mode), returned on the CPU; with
    ``exclude`` (one label per image), the best label other than that one."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for idx in batches(len(x), batch_size):
        with autocast(device, bf16):
            logits = model(to_float(x[idx], device)).float()
        if exclude is not None:
            logits = logits.scatter(1, exclude[idx, None].to(device), float("-inf"))
        out.append(logits.argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, **kwargs) -> float:
    """Share of ``x`` predicted as ``y``."""
    if len(x) == 0:
        return float("nan")
    return (predict(model, x, **kwargs) == y.cpu()).float().mean().item()
