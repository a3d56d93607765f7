"""UPGP's defaults, set from the reserve (issue 23): the relative step, scale invariance,
detection that follows the poison count, "nothing to remove", and no test data anywhere."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from upgp.method import UPGPConfig, projected_unlearning, upgp_defend
from upgp.method.detection import backdoor_evidence
from upgp.method.projection import (
    _dot,
    orthonormal_basis,
    project_out_subspace,
    relative_step,
    scale_to_radius,
)
from upgp.method.unlearning import _grads
from upgp.models import PreActBlock
from upgp.scenarios import clean_reference_model

DEFAULT = UPGPConfig()


def test_relative_step_is_orthogonal_to_n_and_of_the_given_size():
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (16,), (10, 16)]
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) * (i + 1)
               for i, s in enumerate(shapes)]
    g = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    n = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    for per_layer in (False, True):
        step = relative_step(g, n, weights, 0.01, per_layer=per_layer)
        cos = _dot(step, n) / (_dot(step, step).sqrt() * _dot(n, n).sqrt())
        assert abs(float(cos)) < 1e-12
        if per_layer:
            assert all(abs(float(_dot(s, ni))) < 1e-12 for s, ni in zip(step, n))
        relative = sum(float(_dot(s, s) / _dot(w, w)) for s, w in zip(step, weights)) ** 0.5
        assert relative == pytest.approx(0.01)
    unprojected = relative_step(g, None, weights, 0.01)
    assert float(_dot(unprojected, g)) < 0  # a descent direction
    normals = [n, [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]]
    along = project_out_subspace(g, orthonormal_basis(normals))  # the subspace projection
    step = scale_to_radius(along, weights, 0.01)
    assert all(abs(float(_dot(step, m))) < 1e-10 for m in normals)
    relative = sum(float(_dot(s, s) / _dot(w, w)) for s, w in zip(step, weights)) ** 0.5
    assert relative == pytest.approx(0.01)


def rescaled_conv_bn(model: nn.Module, c: float) -> nn.Module:
    """The same function, another parametrisation: in every pre-activation block, conv1 (whose
    output feeds bn2 alone) gets its weights times c, and bn2 (eval mode) its running mean
    times c and variance times c^2."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for block in out.modules():
            if isinstance(block, PreActBlock):
                block.conv1.weight.mul_(c)
                block.bn2.running_mean.mul_(c)
                block.bn2.running_var.mul_(c * c)
    return out


def test_relative_removal_takes_as_many_steps_at_another_scale(smoke_scenario):
    sc = smoke_scenario
    scaled = rescaled_conv_bn(sc.model, 4.0)
    x = sc.x_test[:256]
    with torch.no_grad():
        a, b = sc.model(x.float() / 255), scaled(x.float() / 255)
    assert (a - b).abs().max() < 1e-2 * a.abs().max()  # the same function
    assert any(not torch.equal(p, q) for p, q in zip(sc.model.parameters(), scaled.parameters()))
    flagged = (sc.train.x[sc.train.poison_idx], sc.train.y[sc.train.poison_idx])
    fit, hold = (sc.reserve_x[:50], sc.reserve_y[:50]), (sc.reserve_x[50:], sc.reserve_y[50:])
    config = DEFAULT.replace(bf16=False, removal_max_steps=40)
    steps = {}
    for name, model in (("as trained", sc.model), ("rescaled", scaled)):
        _, log = projected_unlearning(model, flagged, fit, hold, config)
        steps[name] = (log.steps, log.stop_reason, round(log.final_flagged_accuracy, 2))
        assert log.steps > 0 and -1 <= log.mean_abs_cosine <= 1
    assert abs(steps["as trained"][0] - steps["rescaled"][0]) <= 5, steps
    assert steps["as trained"][1] == steps["rescaled"][1], steps


def test_relative_step_keeps_the_clean_batch_loss_to_first_order(smoke_scenario):
    """<step, n> = 0 for the reserve gradient n the step was projected against."""
    sc = smoke_scenario
    model = copy.deepcopy(sc.model).eval()
    from upgp.method.unlearning import _batch_loss

    g = _grads(model, _batch_loss(model, sc.train.x[:64], sc.train.y[:64], "bounded", False))
    n = _grads(model, _batch_loss(model, sc.reserve_x[:64], sc.reserve_y[:64], None, False))
    params = [p for p in model.parameters() if p.requires_grad]
    step = relative_step(g, n, params, 0.01)
    cos = _dot(step, n) / (_dot(step, step).sqrt() * _dot(n, n).sqrt())
    assert abs(float(cos)) < 1e-5


def test_a_clean_model_has_nothing_to_remove_and_keeps_its_weights(smoke_scenario):
    sc = smoke_scenario
    clean = clean_reference_model(sc, progress=False)
    cleaned, report = upgp_defend(clean, (sc.train.x, sc.train.y),
                                  (sc.reserve_x, sc.reserve_y), DEFAULT)
    assert not report.detection.found and report.detection.rule == "nothing to remove"
    assert len(report.detection.flagged) <= 0.02 * len(sc.train.y) + 5
    assert report.removal.stop_reason == "nothing to remove" and report.removal.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(cleaned.parameters(), clean.parameters()))
    summary = report.summary()
    assert summary["detection_backdoor_found"] is False
    assert summary["detection_evidence_share"] <= summary["detection_evidence_bound"]


def test_backdoor_evidence_on_scores():
    gen = torch.Generator().manual_seed(0)
    reference = torch.rand(1000, generator=gen) + 1
    clean = torch.rand(20000, generator=gen) + 1
    found, below, info = backdoor_evidence(clean, reference, 0.01, 3.0)
    assert not found and info["evidence_share"] <= info["evidence_bound"]
    poisoned = torch.cat([clean, torch.zeros(500)])  # 2.4% sit far under the clean scores
    found, below, info = backdoor_evidence(poisoned, reference, 0.01, 3.0)
    assert found and set(range(20000, 20500)) <= set(below.tolist())


def test_no_threshold_reads_test_data(smoke_scenario):
    """UPGP's outcome is the same whatever the test sets hold: they are never an input."""
    from upgp.runs import run_upgp

    sc = smoke_scenario
    config = DEFAULT.replace(removal_max_steps=10)
    first = run_upgp(sc, config, use_cache=False)
    scrambled = copy.copy(sc)
    gen = torch.Generator().manual_seed(1)
    scrambled.x_test = torch.randint(0, 256, sc.x_test.shape, dtype=torch.uint8, generator=gen)
    scrambled.x_triggered = torch.randint(0, 256, sc.x_triggered.shape, dtype=torch.uint8,
                                          generator=gen)
    second = run_upgp(scrambled, config, use_cache=False)
    assert torch.equal(first.flagged, second.flagged)
    strip = lambda r: {k: v for k, v in r["upgp"].items() if k != "seconds"}  # noqa: E731
    assert strip(first.result) == strip(second.result)


def test_the_regime_grid_spans_the_issue_regimes():
    from upgp import regimes

    rows = regimes.grid("cpu")
    backdoored = [r for r in rows if not r.clean]
    assert len(backdoored) >= 24 and len({(r.arch, r.seed) for r in rows if r.clean}) == 4
    assert {r.attack for r in backdoored} >= {"badnets", "blended", "sig", "wanet", "iad"}
    assert {r.arch for r in backdoored} == {"preact_resnet18", "vgg19_bn"}
    assert {r.overrides.get("poison_ratio", 0.1) for r in backdoored} == {0.05, 0.1}
    assert {r.reserve_size for r in backdoored} == {0, 500}
    assert {r.overrides.get("width") for r in backdoored} == {None, 32}
    assert any(r.overrides.get("epochs") == 36 for r in backdoored)
    assert {r.seed for r in backdoored} == {0, 1}


def test_flagged_set_size_follows_the_poison_count():
    """Detection against the held-out reserve's clean scores: on the synthetic Blended backdoor
    at two poisoning rates, the flagged set is about as large as the poison count (a reserve of
    200 images, 100 held out)."""
    from upgp.method import detect_from_config, perturb_and_score, split_holdout
    from upgp.scenarios import backdoored_model

    flagged = {}
    for ratio in (0.05, 0.1):
        sc = backdoored_model("blended", "preact_resnet18", "smoke", seed=0, progress=False,
                              poison_ratio=ratio, reserve_ratio=0.1)
        x_fit, y_fit, x_hold, y_hold = split_holdout(sc.reserve_x, sc.reserve_y,
                                                     DEFAULT.holdout_ratio, DEFAULT.seed)
        _, scores, reference = perturb_and_score(sc.model, sc.train.x, sc.train.y,
                                                 (x_fit, y_fit), (x_hold, y_hold), DEFAULT)
        _, detection = detect_from_config(scores, sc.train.y, reference, y_hold, DEFAULT)
        poisons = len(sc.train.poison_idx)
        assert detection.found, ratio
        assert 0.75 * poisons <= len(detection.flagged) <= 1.35 * poisons, (ratio, poisons)
        flagged[ratio] = len(detection.flagged)
    assert flagged[0.1] > 1.5 * flagged[0.05]


def test_removal_target_is_the_clean_rate_of_the_flagged_label():
    from upgp.method.unlearning import removal_target

    assert removal_target(DEFAULT, 0.0, 0.03) == pytest.approx(0.03)
    assert removal_target(DEFAULT, 0.0, 0.5) == pytest.approx(DEFAULT.stop_flagged_accuracy)
    assert removal_target(DEFAULT, 0.2, 0.03) == pytest.approx(0.03 + 0.97 * 0.2)
    assert removal_target(DEFAULT.fixed_constants(), 0.2, 0.03) == pytest.approx(0.1)


def test_the_held_out_margin_grows_with_the_checks_made(monkeypatch):
    """A candidate 0.8 points under the reference on 250 held-out images, with 4 flipped
    predictions (paired s.e. 0.8 points), passes the 2-point rule at the first check (margin 1
    s.e.) and fails at the seventh (about 2 s.e.); without ``holdout_looks`` it passes there."""
    from upgp.method import unlearning

    monkeypatch.setattr(unlearning, "predict", lambda model, x, bf16: model)  # "model": its predictions
    y = torch.arange(250) % 10
    reference = torch.where(torch.arange(250) < 50, (y + 1) % 10, y)  # 80% correct
    candidate = reference.clone()
    candidate[[100, 101, 102]] = (y[[100, 101, 102]] + 1) % 10  # three correct ones wrong
    candidate[1] = y[1]  # one wrong one right: drop 2 / 250, 4 flips
    for config, seventh in ((DEFAULT, "held-out reserve accuracy dropped"),
                            (DEFAULT.replace(holdout_looks=False), "")):
        check = unlearning.HoldoutCheck(reference, y, y, 0, config)
        assert check(candidate)[1] == "" and check.margin() == pytest.approx(-1.0)
        for _ in range(5):
            check(reference)
        assert check(candidate)[1] == seventh


def test_a_clean_models_runs_are_cached_apart_from_the_backdoored_models(smoke_scenario):
    """The backdoor-free scenario keys its runs by its own model: running UPGP on it leaves the
    backdoored model's cached run as it was (they once shared one key)."""
    from upgp.runs import run_upgp
    from upgp.scenarios import clean_scenario, model_cache_path

    config = UPGPConfig(removal_max_steps=5)
    backdoored = run_upgp(smoke_scenario, config).result
    clean = clean_scenario(smoke_scenario, progress=False)
    assert model_cache_path(clean) != model_cache_path(smoke_scenario)
    assert model_cache_path(clean).exists()  # the reference model's own file
    own = torch.load(model_cache_path(clean), weights_only=False)["info"]  # and its training
    assert clean.info["final_train_loss"] == own["final_train_loss"]
    assert clean.info["train_seconds"] == own["train_seconds"]
    run_upgp(clean, config, use_cache=False)
    again = run_upgp(smoke_scenario, config).result
    assert again["before"] == backdoored["before"] and again["after"] == backdoored["after"]
