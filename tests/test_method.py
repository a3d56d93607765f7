import dataclasses
import math

import numpy as np
import pytest
import torch

import upgp.analyses as analyses
import upgp.runs as runs
from upgp.analyses import removal_trajectory
from upgp.method import (
    UPGPConfig,
    calibrate_on_reserve,
    detect,
    label_median_ratio,
    projected_unlearning,
    robust_z,
    subsample_reserve,
    unlearning_perturbation,
    upgp_defend,
)
from upgp.runs import run_upgp
from upgp.scenarios import clean_reference, clean_reference_model


def test_robust_z_and_detect_flag_the_low_tail():
    scores = torch.cat([torch.randn(900).abs() + 3, torch.full((100,), 0.01)])
    z = robust_z(scores)
    assert z[900:].max() < z[:900].min()
    det = detect(scores, rule="robust_z", threshold=2.5)
    assert set(det.flagged.tolist()) == set(range(900, 1000))
    gm = detect(scores, rule="gmm")
    assert set(range(900, 1000)) <= set(gm.flagged.tolist()) and len(gm.flagged) < 150


def test_calibration_divides_by_each_labels_reserve_median():
    scores = torch.tensor([1.0, 2.0, 10.0, 20.0])
    labels = torch.tensor([0, 0, 1, 1])
    reference = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])  # medians 2 and 20
    ref_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    calibrated = calibrate_on_reserve(scores, labels, reference, ref_labels)
    assert torch.allclose(calibrated, torch.tensor([0.5, 1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="no reserve image of label 1"):
        calibrate_on_reserve(scores, labels, reference[:3], ref_labels[:3])
    with pytest.raises(ValueError, match="positive scores"):
        calibrate_on_reserve(scores - 5, labels, reference, ref_labels)


def test_label_median_ratio_sets_the_direction_calibration_moves_a_label():
    reference = torch.tensor([1.0, 2, 3, 10, 20, 30, 4, 6, 8, 9, 10, 11])  # medians 2, 20, 6, 10
    ref_labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert label_median_ratio(reference, ref_labels, 0) == pytest.approx(2 / 10)  # of 20, 6, 10
    assert label_median_ratio(reference, ref_labels, 1) == pytest.approx(20 / 6)  # of 2, 6, 10
    calibrated = calibrate_on_reserve(torch.tensor([1.0, 5.0]), torch.tensor([0, 1]), reference,
                                      ref_labels)  # label 0's score scaled by 20 / 2 against 1's
    assert float(calibrated[0] / calibrated[1]) == pytest.approx((1.0 / 5.0) * 20 / 2)
    with pytest.raises(ValueError, match="label 4 needs reserve images of its own"):
        label_median_ratio(reference, ref_labels, 4)


def test_reserve_quantile_flags_below_the_reserves_quantile():
    reference = torch.arange(1, 101, dtype=torch.float32)  # clean reserve scores 1..100
    scores = torch.tensor([0.5, 1.5, 50.0, 100.0, 0.1])
    det = detect(scores, rule="reserve_quantile", reference=reference, fpr=0.02)
    cut = torch.quantile(reference.double(), 0.02)  # 2.98
    assert det.flagged.tolist() == [0, 1, 4] and bool((scores[det.flagged] < cut).all())
    with pytest.raises(ValueError, match="needs the reserve's scores"):
        detect(scores, rule="reserve_quantile")
    with pytest.raises(ValueError, match="false-positive rate 1.5 is outside"):
        detect(scores, rule="reserve_quantile", reference=reference, fpr=1.5)


def test_calibrated_reserve_quantile_detection_on_the_synthetic_backdoor(smoke_scenario):
    config = UPGPConfig(calibrate=True, rule="reserve_quantile", removal_max_steps=5)
    result = run_upgp(smoke_scenario, config, use_cache=False).result
    assert result["detection"]["auroc"] >= 0.95, result["detection"]
    assert result["detection"]["precision"] >= 0.5, result["detection"]
    assert result["upgp"]["detection_rule"] == "reserve_quantile"


def test_detection_variants_share_one_perturbation_with_upgp(smoke_scenario):
    sc = smoke_scenario
    variants = {"default": {}, "calibrated": {"calibrate": True, "rule": "reserve_quantile"}}
    rows = analyses.detection_variants(sc, variants)
    assert [r["variant"] for r in rows] == ["default", "calibrated"]
    config = UPGPConfig(bf16=sc.preset.bf16, seed=sc.seed)
    assert runs.defense_cache(sc, "detection", "detection", config, variants).exists()
    assert analyses.detection_variants(sc, variants) == rows  # read back in the same order
    for row, changes in zip(rows, variants.values()):
        config = UPGPConfig(removal_max_steps=0, **changes)
        _, report = upgp_defend(sc.model, (sc.train.x, sc.train.y), (sc.reserve_x, sc.reserve_y),
                                config)
        assert row["flagged"] == len(report.detection.flagged)
        assert row == {"variant": row["variant"], **report.detection.evaluate(sc.train.is_poisoned),
                       "target_median_ratio": rows[0]["target_median_ratio"]}
    with pytest.raises(ValueError, match="changes \\['removal_lr'\\]; a variant may change only"):
        analyses.detection_variants(sc, {"bad": {"removal_lr": 0.1}})


def test_perturbation_stops_at_accuracy_and_leaves_model(smoke_scenario):
    sc = smoke_scenario
    before = [p.clone() for p in sc.model.parameters()]
    pert = unlearning_perturbation(sc.model, sc.reserve_x, sc.reserve_y, lr=0.05,
                                   stop_accuracy=0.3, max_steps=200)
    assert pert.reserve_accuracy[-1] <= 0.3 or pert.steps == 200
    assert pert.reserve_accuracy[0] > 0.8
    assert all(torch.equal(a, b) for a, b in zip(before, sc.model.parameters()))


def test_upgp_detects_and_removes_synthetic_backdoor(smoke_scenario):
    result = run_upgp(smoke_scenario, UPGPConfig(), use_cache=False).result
    assert result["detection"]["auroc"] >= 0.95, result["detection"]
    assert result["after"]["asr"] < result["before"]["asr"] - 50, result
    assert result["after"]["acc"] > result["before"]["acc"] - 10, result
    counts = result["triggered_predictions"]  # where the triggered test images went
    assert sum(counts) == len(smoke_scenario.y_triggered)
    target = smoke_scenario.preset.target
    assert 100 * counts[target] / sum(counts) == pytest.approx(result["after"]["asr"])


def test_given_flagged_set_is_used_and_taken_as_all_poisons(smoke_scenario, monkeypatch):
    """A given set is no cut on the scores: the clean-share estimate (the reserve's share under
    the set's highest score) would read a random or oracle set holding one high-scoring sample
    as nearly all clean and stop removal at its first check; removal aims at s itself."""
    import upgp.method as method

    sc = smoke_scenario
    seen, real = [], method.remove_and_repair

    def spy(*args, clean_share, **kwargs):  # records the clean share removal is handed
        seen.append(clean_share)
        return real(*args, clean_share=clean_share, **kwargs)

    monkeypatch.setattr(method, "remove_and_repair", spy)
    args = (sc.model, (sc.train.x, sc.train.y), (sc.reserve_x, sc.reserve_y),
            UPGPConfig(removal_max_steps=5))
    scores = method.upgp_defend(*args)[1].scores  # detected: the reserve's estimate
    given = torch.cat([sc.train.poison_idx[:9], scores.argmax().view(1)])  # + the top score
    report = method.upgp_defend(*args, flagged=given)[1]
    assert report.detection.rule == "given" and len(report.detection.flagged) == 10
    assert 0.0 <= seen[0] < 1.0 and seen[1] == 0.0  # the estimate would read it as all clean


def test_removal_trajectory_follows_the_loop_without_stopping(smoke_scenario):
    sc = smoke_scenario
    rows = removal_trajectory(sc, UPGPConfig(), max_steps=10, every=5)
    assert [r["steps"] for r in rows] == [0, 5, 10]  # the stopping rules are off
    assert {k: rows[0][k] for k in ("acc", "asr", "ra")} == pytest.approx(sc.metrics)
    assert rows[-1]["asr"] != rows[0]["asr"] and 0 <= rows[-1]["flagged_accuracy"] <= 1
    assert removal_trajectory(sc, UPGPConfig(), max_steps=10, every=5) == rows  # cached


def test_reserve_size_subsamples_the_reserve(smoke_scenario):
    sc = smoke_scenario
    x, y = subsample_reserve(sc.reserve_x, sc.reserve_y, 40, seed=0)
    assert len(y) == 40 and torch.equal(x, subsample_reserve(sc.reserve_x, sc.reserve_y, 40, 0)[0])
    assert subsample_reserve(sc.reserve_x, sc.reserve_y, 0, 0)[1] is sc.reserve_y
    result = run_upgp(sc, UPGPConfig(removal_max_steps=5), reserve_size=40).result
    assert result["reserve_size"] == 40
    with pytest.raises(ValueError, match=f"reserve_size {len(y) * 1000} is outside"):
        subsample_reserve(sc.reserve_x, sc.reserve_y, len(y) * 1000, seed=0)


def test_detection_baselines_score_every_sample(smoke_scenario):
    from upgp.detectors import DETECTORS, detector_scores
    from upgp.metrics import auroc

    sc = smoke_scenario
    for name in DETECTORS:
        s = detector_scores(name, sc.model, sc.train.x, sc.train.y)
        assert s.shape == sc.train.y.shape and torch.isfinite(s).all(), name
        assert 0 <= auroc(sc.train.is_poisoned, s) <= 1
    with pytest.raises(ValueError, match="unknown detector 'x'; choose one of: activation_clustering"):
        detector_scores("x", sc.model, sc.train.x, sc.train.y)


@pytest.mark.parametrize("backtracks", [0, 2])
def test_rejected_check_undoes_and_backtracks(smoke_scenario, backtracks):
    from upgp.train import accuracy

    sc = smoke_scenario
    x_f, y_f = sc.train.x[sc.train.poison_idx], sc.train.y[sc.train.poison_idx]
    x_h, y_h = sc.reserve_x[:100], sc.reserve_y[:100]
    # any held-out loss is rejected, and a huge step size makes sure there is some
    config = UPGPConfig(projection="vector", removal_loss="ascent", removal_step="sgd", removal_lr=1.0,
                        removal_max_steps=20, check_every=2, max_holdout_drop=-1.0,
                        removal_backtracks=backtracks)
    model, log = projected_unlearning(sc.model, (x_f, y_f), (sc.reserve_x, sc.reserve_y),
                                      (x_h, y_h), config)
    assert log.steps == 0 and log.backtracks == backtracks
    assert log.final_lr == pytest.approx(1.0 / 2 ** backtracks)
    assert log.stop_reason == "held-out reserve accuracy dropped"
    assert 0 < log.mean_abs_cosine <= 1  # averaged over the undone steps too
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), sc.model.parameters()))
    assert log.final_flagged_accuracy == accuracy(model, x_f, y_f)  # of the model returned


def test_clean_reference_has_no_backdoor(smoke_scenario):
    sc = smoke_scenario
    clean = clean_reference(sc, progress=False)
    assert set(clean) == {"acc", "asr", "ra"}
    assert clean["asr"] < sc.metrics["asr"] - 50 and clean["ra"] > sc.metrics["ra"] + 50
    assert clean_reference(sc, progress=False) == clean  # the clean model is cached
    model = clean_reference_model(sc, progress=False)
    counts = sc.triggered_predictions(model)
    assert sum(counts) == len(sc.y_triggered) and len(counts) == sc.num_classes
    assert sc.evaluate_with_counts(model) == (clean, counts)  # one pass serves both


def test_upgp_with_predictions_reruns_a_run_cached_without_them(smoke_scenario, monkeypatch):
    config = UPGPConfig(removal_max_steps=5)
    first = run_upgp(smoke_scenario, config).result
    calls = []
    real = runs.run_upgp

    def stale(sc, cfg, use_cache=True, reserve_size=0):  # cached before the counts existed
        calls.append(use_cache)
        run = real(sc, cfg, use_cache=use_cache, reserve_size=reserve_size)
        if use_cache:
            run.result.pop("triggered_predictions")
        return run

    monkeypatch.setattr(runs, "run_upgp", stale)
    run = runs.upgp_with_predictions(smoke_scenario, config)
    assert calls == [True, False] and run.result["triggered_predictions"]
    assert run.result["after"] == first["after"]


def test_projected_repair_leaves_the_flagged_loss_and_keeps_the_best_check(smoke_scenario):
    from upgp.method import projected_repair
    from upgp.method.unlearning import _batch_loss
    from upgp.train import accuracy

    sc = smoke_scenario
    start = sc.model
    x_f, y_f = sc.train.x[sc.train.poison_idx[:100]], sc.train.y[sc.train.poison_idx[:100]]

    def flagged_loss(m):
        with torch.no_grad():
            return _batch_loss(m, x_f, y_f, None, bf16=False).item()

    moved = {}
    for project in (True, False):  # one batch holds all of B, so g_B is exact
        config = UPGPConfig(repair_project=project, repair_lr=0.003, repair_steps=4,
                            check_every=4, repair_max_flagged_rise=1.0, bf16=False)
        reserve = (sc.reserve_x, sc.reserve_y)
        model, log = projected_repair(start, reserve, reserve, (x_f, y_f), config)
        assert log.stop_reason == "step budget" and log.steps == 4
        holdout = accuracy(model, sc.reserve_x, sc.reserve_y, bf16=False)
        assert holdout == max(log.holdout_accuracy)  # the best check is returned
        assert log.final_flagged_accuracy == accuracy(model, x_f, y_f, bf16=False)
        moved[project] = abs(flagged_loss(model) - flagged_loss(start))
        assert (log.mean_abs_cosine > 0) == project
    assert moved[True] <= 0.05 * moved[False], moved


def test_repair_stops_when_the_flagged_set_is_relearned(smoke_scenario):
    from upgp.method import projected_repair

    sc = smoke_scenario
    start = sc.model
    x_f, y_f = sc.train.x[sc.train.poison_idx[:100]], sc.train.y[sc.train.poison_idx[:100]]
    reserve = (sc.reserve_x, sc.reserve_y)
    config = UPGPConfig(repair_lr=0.01, repair_steps=6, check_every=2,
                        repair_max_flagged_rise=-1.0)  # every check counts as relearning
    model, log = projected_repair(start, reserve, reserve, (x_f, y_f), config)
    assert log.stop_reason == "flagged set relearned" and log.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters()))


def test_estimated_trigger_recovers_an_additive_trigger():
    from upgp.method.repair import estimated_trigger, stamp

    gen = torch.Generator().manual_seed(0)
    reserve = torch.randint(40, 200, (64, 3, 8, 8), dtype=torch.uint8, generator=gen)
    trigger = torch.zeros(3, 8, 8)
    trigger[:, -2:, -2:] = 50.0  # a patch that adds 50 (no clamping at these values)
    flagged = stamp(reserve, (torch.ones(3, 8, 8), trigger))  # B's content distributed like N's
    scale, shift = estimated_trigger(flagged, reserve)
    assert torch.equal(scale, torch.ones(3, 8, 8)) and torch.allclose(shift, trigger)
    affine_scale, affine_shift = estimated_trigger(flagged, reserve, "affine")
    assert torch.allclose(affine_scale, scale) and torch.allclose(affine_shift, trigger, atol=1e-3)
    assert stamp(torch.full((1, 3, 2, 2), 250, dtype=torch.uint8),
                 (torch.ones(3, 2, 2), torch.full((3, 2, 2), 20.0))).max() == 255  # clamped
    with pytest.raises(ValueError, match="unknown trigger form 'warp'; choose one of: "
                                         "shift, affine"):
        estimated_trigger(flagged, reserve, "warp")


def test_affine_trigger_recovers_a_blend_where_the_shift_cannot():
    """x' = 0.8 x + 0.2 t (Blended's alpha): the affine estimate gives s ~ 0.8 and c ~ 0.2 t, and
    its stamp reproduces the poisons to within rounding; the shift stamp keeps x's full contrast."""
    from upgp.method.repair import estimated_trigger, stamp

    gen = torch.Generator().manual_seed(0)
    reserve = torch.randint(0, 256, (4000, 3, 4, 4), dtype=torch.uint8, generator=gen)
    pattern = torch.randint(0, 256, (3, 4, 4), generator=gen).float()
    poisons = torch.randint(0, 256, (4000, 3, 4, 4), dtype=torch.uint8, generator=gen)
    flagged = (0.8 * poisons.float() + 0.2 * pattern).round().to(torch.uint8)
    scale, shift = estimated_trigger(flagged, reserve, "affine")
    assert (scale - 0.8).abs().max() < 0.03 and (shift - 0.2 * pattern).abs().max() < 6
    target = (0.8 * reserve.float() + 0.2 * pattern)
    affine_error = (stamp(reserve, (scale, shift)).float() - target).abs().mean()
    shift_error = (stamp(reserve, estimated_trigger(flagged, reserve)).float() - target).abs().mean()
    assert affine_error < 3 < 10 < shift_error


def test_repair_with_the_estimated_trigger_moves_the_model_differently(smoke_scenario):
    from upgp.method import projected_repair

    sc = smoke_scenario
    x_f, y_f = sc.train.x[sc.train.poison_idx[:100]], sc.train.y[sc.train.poison_idx[:100]]
    config = UPGPConfig(repair_lr=0.01, repair_steps=4, check_every=4,
                        repair_max_flagged_rise=1.0, bf16=False)
    args = (sc.model, (sc.reserve_x, sc.reserve_y), (sc.reserve_x, sc.reserve_y), (x_f, y_f))
    plain, _ = projected_repair(*args, config)
    stamped, log = projected_repair(*args, config.replace(repair_trigger_share=0.5))
    assert log.steps_taken == 4
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), stamped.parameters()))
    with pytest.raises(ValueError, match="repair_trigger_share 1.5 is outside"):
        config.replace(repair_trigger_share=1.5)


def test_stamped_selection_keeps_the_check_with_the_best_mean_of_both_holdouts(smoke_scenario):
    from upgp.method import projected_repair
    from upgp.method.repair import estimated_trigger, stamp
    from upgp.train import accuracy

    sc = smoke_scenario
    x_f, y_f = sc.train.x[sc.train.poison_idx[:100]], sc.train.y[sc.train.poison_idx[:100]]
    args = (sc.model, (sc.reserve_x, sc.reserve_y), (sc.reserve_x, sc.reserve_y), (x_f, y_f))
    config = UPGPConfig(repair_lr=0.01, repair_steps=6, check_every=2,
                        repair_max_flagged_rise=1.0, bf16=False, repair_trigger_share=0.5,
                        repair_select="stamped")
    model, log = projected_repair(*args, config)
    assert len(log.stamped_accuracy) == len(log.holdout_accuracy) == 4  # step 0 and 3 checks
    merits = [(h + s) / 2 for h, s in zip(log.holdout_accuracy, log.stamped_accuracy)]
    kept = max(i for i, m in enumerate(merits) if m == max(merits))  # the latest on ties
    assert log.steps == 2 * kept
    x_stamped = stamp(sc.reserve_x, estimated_trigger(x_f, sc.reserve_x))
    assert log.final_stamped_accuracy == accuracy(model, x_stamped, sc.reserve_y, bf16=False)
    assert log.final_stamped_accuracy == log.stamped_accuracy[kept]
    # with trigger="affine", the stamped accuracy is measured on the affine stamp
    affine_model, affine = projected_repair(*args, config.replace(repair_trigger="affine"))
    x_affine = stamp(sc.reserve_x, estimated_trigger(x_f, sc.reserve_x, "affine"))
    assert affine.final_stamped_accuracy == accuracy(affine_model, x_affine, sc.reserve_y,
                                                     bf16=False)
    with pytest.raises(ValueError, match="unknown repair selection 'best'; choose one of: "
                                         "holdout, stamped"):
        config.replace(repair_select="best")


def test_repair_fields_keep_old_cache_keys_until_set():
    from upgp.io import config_hash

    base = UPGPConfig().fixed_constants()  # the defaults the cache keys were first made with
    assert config_hash(base) != config_hash(base.replace(repair_steps=10))
    assert config_hash(base) != config_hash(base.replace(repair_lr=0.01))
    assert config_hash(base) != config_hash(base.replace(repair_trigger_share=0.5))
    assert config_hash(base) != config_hash(base.replace(repair_select="stamped"))
    assert config_hash(base) != config_hash(base.replace(repair_trigger="affine"))
    assert config_hash(base) != config_hash(base.replace(calibrate=True))
    assert config_hash(base) != config_hash(base.replace(reserve_fpr=0.05))
    fields = dataclasses.asdict(base)
    old = {k: v for k, v in fields.items() if k not in UPGPConfig.HASH_OMITS}
    assert config_hash(base) == config_hash(old)  # what the key was before the fields existed


def test_with_repair_leaves_room_for_the_repairs_rise():
    base = UPGPConfig(stop_flagged_accuracy=0.2, repair_max_flagged_rise=0.08)
    rep = base.with_repair(40, 2)
    assert (rep.repair_steps, rep.removal_rounds) == (40, 2)
    assert rep.stop_flagged_accuracy == pytest.approx(0.12)  # 0.12 + the allowed 0.08 = 0.2
    assert UPGPConfig().with_repair().stop_flagged_accuracy == 0.05
    with pytest.raises(ValueError, match="already repairs"):
        rep.with_repair()
    with pytest.raises(ValueError, match="repair steps 0 must be >= 1"):
        base.with_repair(0)


def test_without_projection_changes_only_the_projection():
    from upgp.io import config_hash

    base = UPGPConfig(seed=3)
    four = base.without_projection()
    assert four == base.replace(projection="none")
    assert config_hash(four) == config_hash(base.replace(projection="none"))  # cached runs' key
    rep = base.with_repair(40, 2)
    assert rep.without_projection() == rep.replace(projection="none", repair_project=False)
    assert base.replace(projection="layer").without_projection().projection == "none"


def test_upgp_with_repair_rounds_reports_them(smoke_scenario):
    config = UPGPConfig(repair_steps=10, removal_rounds=3)
    result = run_upgp(smoke_scenario, config, use_cache=False).result
    summary = result["upgp"]
    assert summary["repair_stop"] in ("step budget", "flagged set relearned")
    assert "repair" in summary["seconds"] and 1 <= summary["rounds"] <= 3
    assert 0 <= summary["repair_steps"] <= 10 * summary["rounds"]
    assert summary["removal_steps"] <= config.removal_max_steps
    assert 0 <= summary["flagged_accuracy_after"] <= 1
    assert result["after"]["asr"] < result["before"]["asr"] - 50, result
    with pytest.raises(ValueError, match="removal_rounds 0 / repair_steps 10: need"):
        run_upgp(smoke_scenario, config.replace(removal_rounds=0), use_cache=False)


def test_merge_logs_adds_steps_and_weights_the_cosine():
    from upgp.method.unlearning import RemovalLog, merge_logs

    a = RemovalLog(steps=10, stop_reason="held-out reserve accuracy dropped", backtracks=1,
                   holdout_accuracy=[0.8, 0.79], mean_abs_cosine=0.2, steps_taken=15)
    b = RemovalLog(steps=5, stop_reason="flagged set unlearned", final_lr=1e-4,
                   holdout_accuracy=[0.8], mean_abs_cosine=0.5, steps_taken=5)
    m = merge_logs([a, b])
    assert (m.steps, m.backtracks, m.steps_taken, m.stop_reason) == (15, 1, 20,
                                                                      "flagged set unlearned")
    assert m.holdout_accuracy == [0.8, 0.79, 0.8] and m.final_lr == 1e-4
    assert m.mean_abs_cosine == pytest.approx((0.2 * 15 + 0.5 * 5) / 20)
    assert merge_logs([]).stop_reason == "not run"


def test_removal_losses_and_their_bad_name():
    from upgp.method.unlearning import removal_loss
    y, uniform, log4 = torch.tensor([0, 2]), torch.zeros(2, 4), math.log(4)
    assert removal_loss(uniform, y, "max_entropy").item() == pytest.approx(log4)
    assert removal_loss(uniform, y, "bounded").item() == pytest.approx(-math.log(0.75))
    assert removal_loss(uniform, y, "ascent").item() == pytest.approx(-log4)
    with pytest.raises(ValueError, match="unknown removal loss 'kl'; choose one of: ascent, "
                                         "bounded, max_entropy"):
        removal_loss(uniform, y, "kl")


def test_sensitivity_row_and_strength_sweep_summarise_steps_1_and_2(smoke_scenario):
    from upgp.analyses import sensitivity_analysis, sensitivity_row, strength_sweep

    sa = sensitivity_analysis(smoke_scenario)
    row = sensitivity_row(smoke_scenario, sa)
    scores, poisoned = sa["scores"].numpy(), sa["is_poisoned"].numpy()
    assert row["median_score_poisoned"] == pytest.approx(float(np.median(scores[poisoned])))
    assert row["median_score_poisoned"] < row["median_score_clean"]  # the sensitivity gap
    assert (row["attack"], row["perturbation_steps"]) == ("blended", sa["steps"])
    sweep = strength_sweep(smoke_scenario, [0.7, 0.3])
    assert list(sweep.stop_level) == [0.7, 0.3]
    assert sweep.steps.iloc[0] <= sweep.steps.iloc[1]  # a lower stop level takes more steps


def test_gradient_alignment_is_a_cosine_per_kind_of_sample(smoke_scenario):
    from upgp.analyses import gradient_alignment, learning_dynamics

    dyn = learning_dynamics(smoke_scenario, n_samples=8)
    table = gradient_alignment(dyn)
    assert list(table.index) == ["clean", "poisoned"]
    assert table["mean cos(g_N, g_i)"].between(-1, 1).all()
    assert table.loc["poisoned", "mean <g_N, g_i>"] == pytest.approx(
        float(dyn["inner_product"][dyn["poisoned"]].mean()))


def test_calibration_moves_counts_which_way_the_ratio_sent_each_model():
    import pandas as pd

    from upgp.analyses import calibration_moves

    def rows(attack, ratio, raw, calibrated):
        return [{"arch": "a", "attack": attack, "seed": 0, "variant": v, "auroc": auroc,
                 "target_median_ratio": ratio} for v, auroc in (("raw", raw), ("cal", calibrated))]

    detection = pd.DataFrame([*rows("x", 0.5, 0.99, 0.90), *rows("y", 0.8, 0.95, 0.97),
                              *rows("z", 2.0, 0.90, 0.99)])
    moves, counts = calibration_moves(detection, "raw", "cal")
    assert moves.loc[("a", "x", 0), "change"] == pytest.approx(-0.09)
    assert counts == {"below": 2, "below_lost": 1, "above": 1, "above_gained": 1}
