import pytest
import torch
import torch.nn.functional as F

from upgp import project_out
from upgp.method import (
    gpm_bases,
    orthonormal_basis,
    per_sample_gradients,
    project_gpm,
    project_out_per_layer,
    project_out_subspace,
)
from upgp.models import create_model

torch.manual_seed(0)


def _cos(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(a @ b / (a.norm() * b.norm()))


def test_project_out_flat_is_orthogonal_and_keeps_orthogonal_part():
    g, n = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    p = project_out(g, n)
    assert abs(float(p @ n / (p.norm() * n.norm()))) < 1e-6
    ortho = g - (g @ n) / (n @ n) * n
    assert torch.allclose(p, ortho)
    # a vector already orthogonal to n is left as it is
    assert torch.allclose(project_out(ortho, n), ortho)


def test_project_out_lists_whole_vector():
    shapes = [(4, 3, 3, 3), (4,), (10, 4)]
    g = [torch.randn(s, dtype=torch.float64) for s in shapes]
    n = [torch.randn(s, dtype=torch.float64) for s in shapes]
    p = project_out(g, n)
    assert [t.shape for t in p] == [t.shape for t in g]
    assert abs(_cos(p, n)) < 1e-6
    rest = [gi - pi for gi, pi in zip(g, p)]  # what was removed is parallel to n
    assert abs(abs(_cos(rest, n)) - 1) < 1e-9


def test_per_layer_projection_orthogonal_in_each_layer():
    g = [torch.randn(5, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    n = [torch.randn(5, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    for pi, ni, gi in zip(project_out_per_layer(g, n), n, g):
        assert abs(float((pi * ni).sum() / (pi.norm() * ni.norm()))) < 1e-6
        orth = gi - (gi * ni).sum() / (ni * ni).sum() * ni
        assert torch.allclose(pi, orth)


def test_subspace_projection():
    vecs = [torch.randn(300, dtype=torch.float64) for _ in range(4)]
    q = orthonormal_basis(vecs)
    assert torch.allclose(q.T @ q, torch.eye(4, dtype=torch.float64), atol=1e-10)
    g = torch.randn(300, dtype=torch.float64)
    p = project_out_subspace(g, q)
    for v in vecs:
        assert abs(float(p @ v / (p.norm() * v.norm()))) < 1e-6
    orth_part = g - q @ (q.T @ g)
    assert torch.allclose(project_out_subspace(orth_part, q), orth_part)
    # lists of tensors round-trip their shapes
    shaped = [g[:100].view(10, 10), g[100:]]
    out = project_out_subspace(shaped, q)
    assert torch.allclose(torch.cat([t.flatten() for t in out]), p)


def test_gpm_projection_leaves_layer_outputs_on_reserve_unchanged():
    model = create_model("vgg16_bn", width=4).eval()
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    bases = gpm_bases(model, x, energy=0.9999, max_rows=100000)
    name = "linear.weight"
    g = torch.randn_like(dict(model.named_parameters())[name], dtype=torch.float32)
    p = project_gpm({name: g}, bases)[name]
    u = bases[name]
    assert torch.allclose(p @ u, torch.zeros(p.shape[0], u.shape[1]), atol=1e-4)
    assert torch.equal(project_gpm({"bias": torch.ones(3)}, bases)["bias"], torch.zeros(3))


def _batch_loss(model, x, y):
    return F.cross_entropy(model(x.float() / 255), y)


@pytest.mark.parametrize("variant", ["vector", "layer", "subspace"])
def test_projected_step_preserves_normal_loss(variant):
    torch.manual_seed(1)
    model = create_model("preact_resnet18", width=4).double().eval()
    params = list(model.parameters())
    xb = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    yb = torch.randint(0, 10, (32,))
    xn = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    yn = torch.randint(0, 10, (64,))
    to = lambda x: x.double() / 255  # noqa: E731
    g = torch.autograd.grad(-F.cross_entropy(model(to(xb)), yb), params)
    n = torch.autograd.grad(F.cross_entropy(model(to(xn)), yn), params)
    if variant == "vector":
        p = project_out(list(g), list(n))
    elif variant == "layer":
        p = project_out_per_layer(g, n)
    else:
        extra = torch.autograd.grad(F.cross_entropy(model(to(xn[:32])), yn[:32]), params)
        p = project_out_subspace(list(g), orthonormal_basis([list(n), list(extra)]))
    base = F.cross_entropy(model(to(xn)), yn).item()

    def loss_after(direction, eps=1e-4):
        with torch.no_grad():
            for q, d in zip(params, direction):
                q.sub_(eps * d)
            value = F.cross_entropy(model(to(xn)), yn).item()
            for q, d in zip(params, direction):
                q.add_(eps * d)
        return value

    plain = abs(loss_after(g) - base)
    projected = abs(loss_after(p) - base)
    assert plain > 0
    assert projected <= 0.05 * plain, (projected, plain)


def test_per_sample_gradients_match_autograd_loop():
    torch.manual_seed(2)
    model = create_model("vgg16_bn", width=2).eval()
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (5,))
    fast = per_sample_gradients(model, x, y, batch_size=3)
    for i in range(5):
        loss = F.cross_entropy(model(x[i:i + 1].float() / 255), y[i:i + 1])
        g = torch.autograd.grad(loss, list(model.parameters()))
        assert torch.allclose(fast[i], torch.cat([t.flatten() for t in g]), atol=1e-5, rtol=1e-4)


def test_mean_gradient_and_inner_products_agree_with_per_sample():
    from upgp.method import gradient_inner_products, mean_gradient

    torch.manual_seed(3)
    model = create_model("vgg16_bn", width=2).eval()
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (6,))
    g = per_sample_gradients(model, x, y)
    assert torch.allclose(mean_gradient(model, x, y, batch_size=4), g.mean(0), atol=1e-6)
    ips = gradient_inner_products(model, x[:3], y[:3], x, y)
    assert torch.allclose(ips, g @ g[:3].mean(0), rtol=1e-4, atol=1e-6)
