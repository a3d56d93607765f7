"""Step 4 of UPGP, the geometry: remove from the unlearning gradient what would move the clean loss.

- Whole vector (method.md, eq. 4): g_proj = g - (<g, n> / ||n||^2) n, n the normal-sample gradient.
  To first order a step along g_proj leaves the loss of the normal batch unchanged.
- Per layer: the same projection applied to each parameter tensor separately.
- Subspace: g - Q Q^T g, Q an orthonormal basis (thin QR) of several normal gradients (OGD-style).
- GPM (Saha et al. 2021): each layer's weight gradient G (out x in) becomes G - G U U^T, where U
  spans the principal subspace of that layer's inputs on the reserve; weights then act on clean
  inputs exactly as before, to first order.
- Relative step (this book's extension, ``relative_step``): the step measured against each
  layer's weight norm, so that it means the same at any width or parametrisation scale, and
  still orthogonal to n.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..train import batches, to_float

Grad = Union[Tensor, Sequence[Tensor]]
PROJECTIONS = ("none", "vector", "layer", "subspace", "gpm")


def _dot(a: Grad, b: Grad) -> Tensor:
    if isinstance(a, Tensor):
        return (a * b).sum()
    return sum((x * y).sum() for x, y in zip(a, b))


def project_out(g: Grad, n: Grad) -> Grad:
    """g - (<g, n> / ||n||^2) n, for one flat tensor or a list of parameter-shaped tensors
    (then <., .> runs over the whole concatenated vector). A zero ``n`` leaves ``g`` unchanged."""
    norm2 = _dot(n, n)
    coef = _dot(g, n) / norm2 if norm2 > 0 else torch.zeros((), dtype=norm2.dtype)
    if isinstance(g, Tensor):
        return g - coef * n
    return [gi - coef * ni for gi, ni in zip(g, n)]


def relative_step(g: Sequence[Tensor], n: Sequence[Tensor] | None, weights: Sequence[Tensor],
                  radius: float, per_layer: bool = False) -> list[Tensor]:
    """A step of relative size ``radius`` against g, orthogonal to n (``n`` None: unprojected).

    With D_l = ||W_l||^2 per parameter tensor, v = g - a n, a = sum_l D_l <g_l, n_l> /
    sum_l D_l <n_l, n_l> (``per_layer``: a per tensor), and the step is
    -radius D v / ||D^(1/2) v||: then <step, n> = 0 exactly, and sqrt(sum_l ||step_l||^2 /
    ||W_l||^2) = radius. Rescaling a layer's weights by c (and its gradient by 1/c, as a
    following BatchNorm does) scales its step by c: the same relative change.
    """
    metric = [w.detach().float().pow(2).sum().clamp_min(1e-12) for w in weights]
    v = list(g)
    if n is not None and per_layer:
        v = project_out_per_layer(g, n)
    elif n is not None:
        num = sum(d * _dot(gi, ni) for d, gi, ni in zip(metric, g, n))
        den = sum(d * _dot(ni, ni) for d, ni in zip(metric, n))
        coef = num / den if den > 0 else torch.zeros(())
        v = [gi - coef * ni for gi, ni in zip(g, n)]
    norm = sum(d * _dot(vi, vi) for d, vi in zip(metric, v)).sqrt().clamp_min(1e-30)
    return [-(radius / norm) * d * vi for d, vi in zip(metric, v)]


def scale_to_radius(v: Sequence[Tensor], weights: Sequence[Tensor], radius: float) -> list[Tensor]:
    """-c v with c set so that sqrt(sum_l ||c v_l||^2 / ||W_l||^2) = radius: the relative step
    along a direction already projected (subspace, GPM), which a scalar keeps orthogonal."""
    size = sum(_dot(vi, vi) / w.detach().float().pow(2).sum().clamp_min(1e-12)
               for vi, w in zip(v, weights)).sqrt().clamp_min(1e-30)
    return [-(radius / size) * vi for vi in v]


def project_out_per_layer(g: Sequence[Tensor], n: Sequence[Tensor]) -> list[Tensor]:
    """``project_out`` applied to each parameter tensor on its own."""
    return [project_out(gi, ni) for gi, ni in zip(g, n)]


def _flatten(g: Grad) -> Tensor:
    return g.flatten() if isinstance(g, Tensor) else torch.cat([t.flatten() for t in g])


def orthonormal_basis(vectors: Sequence[Grad]) -> Tensor:
    """Q (d x k) with orthonormal columns spanning the given gradients (thin QR)."""
    q, _ = torch.linalg.qr(torch.stack([_flatten(v) for v in vectors], 1), mode="reduced")
    return q


def project_out_subspace(g: Grad, basis: Tensor) -> Grad:
    """g - Q Q^T g: the component of ``g`` orthogonal to the span of ``basis``'s columns."""
    flat = _flatten(g)
    flat = flat - basis @ (basis.T @ flat)
    if isinstance(g, Tensor):
        return flat.view_as(g)
    out, start = [], 0
    for t in g:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


@torch.no_grad()
def gpm_bases(model: nn.Module, x: Tensor, energy: float = 0.97, max_rows: int = 4000,
              batch_size: int = 256, seed: int = 0) -> dict[str, Tensor]:
    """Per-layer input bases U (in_features x r) from the reserve images ``x``.

    For every Conv2d and Linear layer, collect its inputs (conv: unfolded patches), keep the top
    singular directions holding ``energy`` of the squared singular values (GPM's threshold).
    Keys are the weight parameter names.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list[Tensor]] = {}
    hooks = []

    def hook_for(name: str, module: nn.Module):
        def hook(_m, inputs, _out):
            inp = inputs[0].float()
            if isinstance(module, nn.Conv2d):
                patches = F.unfold(inp, module.kernel_size, module.dilation, module.padding,
                                   module.stride)  # (B, C*kh*kw, L)
                inp = patches.transpose(1, 2).reshape(-1, patches.shape[1])
            keep = torch.randperm(len(inp), generator=gen)[: max_rows // 4]
            rows.setdefault(name, []).append(inp[keep.to(inp.device)].cpu())
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook_for(f"{name}.weight", module)))
    model.eval()
    try:
        for idx in batches(len(x), batch_size):
            model(to_float(x[idx], device))
    finally:
        for h in hooks:
            h.remove()
    bases = {}
    for name, parts in rows.items():
        r = torch.cat(parts)[:max_rows].double()
        _, s, vh = torch.linalg.svd(r, full_matrices=False)
        share = (s**2).cumsum(0) / (s**2).sum()
        k = int((share < energy).sum()) + 1
        bases[name] = vh[:k].T.float().to(device)
    return bases


def project_gpm(grads: dict[str, Tensor], bases: dict[str, Tensor]) -> dict[str, Tensor]:
    """G - G U U^T for every weight with a basis; other parameters (BN, biases) get zero gradient."""
    out = {}
    for name, g in grads.items():
        if name in bases:
            u = bases[name]
            flat = g.reshape(g.shape[0], -1)
            out[name] = (flat - (flat @ u) @ u.T).view_as(g)
        else:
            out[name] = torch.zeros_like(g)
    return out
