"""Label-consistent backdoor (LC, Turner et al. 2019): hard target-class images plus a trigger.

Poisons are drawn from the target class and keep their labels. Each is first made hard to
classify by an untargeted L-infinity PGD attack on a clean surrogate model (eps 8/255, as in
BackdoorBench; ``steps`` steps of ``step``/255 from the clean image), so the network must lean
on the trigger to fit them; then the trigger, a 3x3 checkerboard in each of the four corners,
is stamped. At test time the trigger alone is applied. The surrogate (a clean model trained
with the same preset and seed) is built and cached by ``upgp.scenarios`` and handed over with
``set_surrogate``; the adversarial images are cached too.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..io import cache_dir, config_hash, load_tensors, save_tensors
from .base import Attack, register_attack, to_uint8


@register_attack("lc")
class LabelConsistent(Attack):
    clean_label = True
    needs_surrogate = True

    def __init__(self, eps: float = 8.0, step: float = 2.0, steps: int = 10, patch_size: int = 3,
                 amplitude: int = 255) -> None:
        self.eps = eps
        self.step = step
        self.steps = steps
        self.patch_size = patch_size
        self.amplitude = amplitude
        self._surrogate: nn.Module | None = None
        self._surrogate_key = ""

    def set_surrogate(self, model: nn.Module, key: str) -> None:
        """The clean model the PGD step attacks, and a key naming it (for the cache)."""
        self._surrogate, self._surrogate_key = model.eval(), key

    def checkerboard(self) -> Tensor:
        """The 3x3 pattern: amplitude where (i + j) is even, 0 elsewhere."""
        idx = torch.arange(self.patch_size)
        return ((idx[:, None] + idx[None, :]) % 2 == 0).to(torch.uint8) * self.amplitude

    def apply(self, x: Tensor) -> Tensor:
        out = x.clone()
        k, board = self.patch_size, self.checkerboard()
        for rows in (slice(0, k), slice(-k, None)):
            for cols in (slice(0, k), slice(-k, None)):
                out[..., rows, cols] = board
        return out

    def adversarial(self, x: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
        """PGD (L-inf, eps/255) against the surrogate, maximising CE(f(x'), y); uint8 out."""
        if self._surrogate is None:
            raise ValueError("the lc attack needs a surrogate model: build it through "
                             "upgp.scenarios.build_scenario, or call set_surrogate")
        digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        path = cache_dir() / "attacks" / \
            f"lc-{config_hash(self._surrogate_key, self.params(), digest)}.pt"
        cached = load_tensors(path)
        if cached is not None:
            return cached["x"]
        model = self._surrogate
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(x), batch_size):
            clean = x[start:start + batch_size].to(device).float() / 255
            label = y[start:start + batch_size].to(device)
            adv = clean.clone()
            for _ in range(self.steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), label)
                grad, = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv + self.step / 255 * grad.sign()
                    adv = torch.min(torch.max(adv, clean - self.eps / 255), clean + self.eps / 255)
                    adv = adv.clamp(0, 1)
            out.append(to_uint8(adv.detach() * 255).cpu())
        result = torch.cat(out)
        save_tensors(path, {"x": result})
        return result

    def poison(self, x: Tensor, y: Tensor) -> Tensor:
        return self.apply(self.adversarial(x, y))
