"""The chapters' analyses of a scenario beyond one defense run: UPGP's steps 1-2 alone
(``sensitivity_analysis``), step 3 under detection variants, the gradient geometry behind the
sensitivity gap (``learning_dynamics``), the removal loop with its stops off
(``removal_trajectory``), the re-emergence probe (``reemergence``), and UPGP's detection beside
other detectors (``detector_comparison``). The trajectory, the detection variants and the probe
are cached as JSON through ``runs.defense_cache``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .defenses import defend, defense_config, get_defense
from .detectors import DETECTORS, detector_scores
from .io import load_json, write_json
from .method import (
    UPGPConfig,
    detect_from_config,
    flat_delta,
    label_median_ratio,
    mean_gradient,
    per_sample_dot,
    per_sample_outputs,
    perturb_and_score,
    perturb_from_config,
    split_holdout,
    upgp_defend,
)
from .metrics import auroc
from .models import create_model
from .reemergence import RetuneConfig, retune, retuning_set
from .runs import defense_cache, run_upgp
from .scenarios import Scenario, clean_reference_model
from .train import fit

TRAJECTORY_COLUMNS = ("steps", "acc", "asr", "ra", "flagged_accuracy", "holdout_accuracy")


def removal_trajectory(scenario: Scenario, config: UPGPConfig | None = None,
                       max_steps: int = 200, every: int = 10) -> list[dict[str, Any]]:
    """ACC/ASR/RA of the model along UPGP's removal loop, every ``every`` steps up to
    ``max_steps``, with the stopping rules switched off (the removal-budget ablation).

    Each row also holds what the defender sees at that step (flagged-set accuracy, held-out
    reserve accuracy), so the default stopping rule can be placed on the curve; no rows where
    detection finds nothing to remove. Cached as JSON.
    """
    config = (config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)).replace(
        removal_max_steps=max_steps, check_every=every, stop_flagged_accuracy=-1.0,
        max_holdout_drop=1.0, max_target_rise=1.0)
    path = defense_cache(scenario, "trajectory", "trajectory", config)
    cached = load_json(path)
    if cached is not None:  # in the order of a fresh run (the JSON file sorts its keys)
        return [{k: row[k] for k in TRAJECTORY_COLUMNS} for row in cached]
    rows: list[dict[str, Any]] = []
    _, report = upgp_defend(scenario.model, (scenario.train.x, scenario.train.y),
                            (scenario.reserve_x, scenario.reserve_y), config,
                            on_check=lambda step, m: rows.append(
                                {"steps": step, **scenario.evaluate(m)}))
    for row, flagged, holdout in zip(rows, report.removal.flagged_accuracy,
                                     report.removal.holdout_accuracy, strict=True):
        row.update(flagged_accuracy=flagged, holdout_accuracy=holdout)
    write_json(path, rows)
    return rows


def sensitivity_analysis(scenario: Scenario, config: UPGPConfig | None = None
                         ) -> dict[str, Any]:
    """Steps 1-2 of UPGP only: the perturbation and every sample's score, with AUROC.

    Returns scores (one per training sample), the poison mask (evaluation only), the reserve
    accuracy trajectory and the detection AUROC of the score (low score = suspicious).
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    x_fit, y_fit, x_hold, y_hold = split_holdout(scenario.reserve_x, scenario.reserve_y,
                                                 config.holdout_ratio, config.seed)
    pert, scores, _ = perturb_and_score(scenario.model, scenario.train.x, scenario.train.y,
                                        (x_fit, y_fit), (x_hold, y_hold), config)
    truth = scenario.train.is_poisoned
    return {"scores": scores, "is_poisoned": truth, "steps": pert.steps,
            "reserve_accuracy": pert.reserve_accuracy, "auroc": auroc(truth, -scores),
            "perturbation": pert}


def sensitivity_row(scenario: Scenario, analysis: dict[str, Any]) -> dict[str, Any]:
    """One row of the sensitivity-gap table: a ``sensitivity_analysis`` of ``scenario`` as the
    perturbation's length and reach, the clean and the poisoned samples' median scores (the mean
    of the middle two for an even count), AUROC."""
    scores, poisoned = analysis["scores"], analysis["is_poisoned"]
    return {"attack": scenario.attack.name, "arch": scenario.arch,
            "asr_no_defense": scenario.metrics["asr"], "perturbation_steps": analysis["steps"],
            "reserve_acc_after": 100 * analysis["reserve_accuracy"][-1],
            "median_score_clean": float(scores[~poisoned].float().quantile(0.5)),
            "median_score_poisoned": float(scores[poisoned].float().quantile(0.5)),
            "auroc": analysis["auroc"]}


def strength_sweep(scenario: Scenario, stop_levels: list[float]) -> pd.DataFrame:
    """Steps 1-2 with the perturbation stopped at each reserve accuracy of ``stop_levels``
    (``perturb_stop_accuracy``): its steps, the reserve accuracy it reached and the AUROC."""
    rows = []
    for level in stop_levels:
        config = UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed,
                            perturb_stop_accuracy=level)
        sa = sensitivity_analysis(scenario, config)
        rows.append({"stop_level": level, "steps": sa["steps"],
                     "reserve_acc_after": 100 * sa["reserve_accuracy"][-1], "auroc": sa["auroc"]})
    return pd.DataFrame(rows)


DETECTION_FIELDS = ("calibrate", "rule", "z_threshold", "per_class", "reserve_fpr")


def detection_variants(scenario: Scenario, variants: dict[str, dict[str, Any]],
                       config: UPGPConfig | None = None) -> list[dict[str, Any]]:
    """Steps 1-3 of UPGP once per scenario, then step 3 under each variant of ``config``.

    ``variants`` maps a name to changes of the detection fields (DETECTION_FIELDS) only, so every
    variant sees the same perturbation and scores. One row per variant: its name, the flagged
    count and the detection metrics against the poison mask (evaluation only), and the
    perturbation's ``target_median_ratio`` (``label_median_ratio`` of the attack's target label on
    the held-out reserve; the same in every row), which says which way calibration moves poisons.
    Cached as JSON under the model, ``config`` and ``variants``.
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    for name, changes in variants.items():
        other = sorted(set(changes) - set(DETECTION_FIELDS))
        if other:
            raise ValueError(f"detection variant {name!r} changes {other}; a variant may change "
                             f"only: {', '.join(DETECTION_FIELDS)}")
    path = defense_cache(scenario, "detection", "detection", config, variants)
    cached = load_json(path)
    if cached is not None:  # columns and values as lists: the JSON file sorts a dict's keys
        return [dict(zip(cached["columns"], values, strict=True)) for values in cached["rows"]]
    x_fit, y_fit, x_hold, y_hold = split_holdout(scenario.reserve_x, scenario.reserve_y,
                                                 config.holdout_ratio, config.seed)
    _, scores, reference = perturb_and_score(scenario.model, scenario.train.x, scenario.train.y,
                                             (x_fit, y_fit), (x_hold, y_hold), config)
    ratio = label_median_ratio(reference, y_hold, scenario.preset.target)
    rows = []
    for name, changes in variants.items():
        _, detection = detect_from_config(scores, scenario.train.y, reference, y_hold,
                                          config.replace(**changes))
        rows.append({"variant": name, **detection.evaluate(scenario.train.is_poisoned),
                     "target_median_ratio": ratio})
    write_json(path, {"columns": list(rows[0]), "rows": [list(row.values()) for row in rows]})
    return rows


def calibration_moves(detection: pd.DataFrame, raw: str, calibrated: str
                      ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per model (*arch*, *attack*, *seed* of ``detection_variants`` rows with a *variant*
    column): the target median ratio beside the AUROC of variant ``raw`` and of ``calibrated``
    and the change; and the counts: models with a ratio under 1 (*below*) and how many of them
    calibration lowered (*below_lost*), models at or over 1 (*above*) and how many it raised
    (*above_gained*). A ratio under 1 moves the poisons towards the clean samples."""
    model = ["arch", "attack", "seed"]
    auroc = detection.pivot_table(index=model, columns="variant", values="auroc", sort=False)
    moves = pd.DataFrame({
        "target median ratio": detection.groupby(model, sort=False).target_median_ratio.first(),
        "raw AUROC": auroc[raw], "calibrated AUROC": auroc[calibrated]})
    moves["change"] = moves["calibrated AUROC"] - moves["raw AUROC"]
    below = moves["target median ratio"] < 1
    return moves, {"below": int(below.sum()), "below_lost": int((moves.change[below] < 0).sum()),
                   "above": int((~below).sum()),
                   "above_gained": int((moves.change[~below] > 0).sum())}


def learning_dynamics(scenario: Scenario, n_samples: int = 256,
                      config: UPGPConfig | None = None) -> dict[str, Any]:
    """The gradient geometry behind the sensitivity gap (method.md §2), on a sample of D.

    For ``n_samples`` clean and ``n_samples`` poisoned training samples: <g_N, g_i> and
    cos(g_N, g_i) with g_N the mean reserve gradient, the first-order predicted loss change
    <g_i, dtheta> for a one-step and for the full unlearning perturbation, and the measured change.
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    gen = torch.Generator().manual_seed(scenario.seed)
    truth = scenario.train.is_poisoned
    pick = []
    for mask in (~truth, truth):
        idx = mask.nonzero().flatten()
        pick.append(idx[torch.randperm(len(idx), generator=gen)[:n_samples]])
    idx = torch.cat(pick)
    x, y, poisoned = scenario.train.x[idx], scenario.train.y[idx], truth[idx]
    x_fit, y_fit, _, _ = split_holdout(scenario.reserve_x, scenario.reserve_y,
                                       config.holdout_ratio, config.seed)
    model = scenario.model
    g_normal = mean_gradient(model, x_fit, y_fit)
    perts = {"one step": perturb_from_config(model, x_fit, y_fit, config, max_steps=1,
                                             stop_accuracy=0.0, bf16=False),
             "full": perturb_from_config(model, x_fit, y_fit, config, bf16=False)}
    deltas = [flat_delta(model, p.delta(model)) for p in perts.values()]
    dots = per_sample_dot(model, x, y, torch.stack([g_normal, *deltas], 1))
    norms = per_sample_dot(model, x, y, None).norm(dim=1)  # holds 2n x P floats at once
    loss_before, _ = per_sample_outputs(model, x, y, bf16=False)
    out = {"poisoned": poisoned, "inner_product": dots[:, 0],
           "cosine": dots[:, 0] / (norms * g_normal.norm()),
           "g_normal_norm": float(g_normal.norm())}
    for i, (name, pert) in enumerate(perts.items()):
        loss_after, _ = per_sample_outputs(pert.model, x, y, bf16=False)
        out[f"predicted {name}"] = dots[:, 1 + i]
        out[f"measured {name}"] = loss_after - loss_before
    return out


def gradient_alignment(dynamics: dict[str, Any]) -> pd.DataFrame:
    """Mean <g_N, g_i> and mean cos(g_N, g_i) of ``learning_dynamics``'s clean and poisoned
    samples, indexed by which they are."""
    poisoned = dynamics["poisoned"]
    return pd.DataFrame(
        {"mean <g_N, g_i>": [float(dynamics["inner_product"][m].mean()) for m in (~poisoned, poisoned)],
         "mean cos(g_N, g_i)": [float(dynamics["cosine"][m].mean()) for m in (~poisoned, poisoned)]},
        index=pd.Index(["clean", "poisoned"], name="samples"))


REEMERGENCE_REFERENCES = ("backdoored", "clean model")  # probed models that are no defense's


def reemergence(scenario: Scenario, model: str, probes: Sequence[RetuneConfig],
                config: Any = None, data: str | Path | None = None
                ) -> list[list[dict[str, float]]]:
    """ACC/ASR/RA along each re-emergence probe (``upgp.reemergence.retune``) of one model of the
    scenario: ``backdoored``, ``clean model`` (``clean_reference_model``) or the output of the
    registered defense ``model`` (``config``: default, the preset's); one list of rows per probe.

    Each probe is cached as JSON under the backdoored model, the probed model and its config, and
    the probe's settings. Defended weights are not cached: the defense runs once for all the
    probes that miss.
    """
    spec = None if model in REEMERGENCE_REFERENCES else get_defense(model)  # errs if unknown
    if spec is not None and config is None:
        config = defense_config(model, scenario.preset, scenario.seed)
    curves, probed = [], None
    for probe in probes:
        path = defense_cache(scenario, "reemergence", "reemergence", model, config, probe)
        cached = load_json(path)
        if cached is not None:  # in the order of a fresh run (the JSON file sorts its keys)
            curves.append([{k: row[k] for k in ("epoch", "acc", "asr", "ra")} for row in cached])
            continue
        if probed is None:
            probed = _probed_model(scenario, model, spec, config, data)
        retuning = retuning_set(scenario.attack, scenario.reserve_x, scenario.reserve_y,
                                probe.poisons, scenario.preset.target, probe.seed)
        curves.append(retune(probed, retuning, scenario.attack, probe, scenario.evaluate))
        write_json(path, curves[-1])
    return curves


def _probed_model(scenario: Scenario, model: str, spec: Any, config: Any,
                  data: str | Path | None) -> nn.Module:
    """The model a re-emergence probe starts from (``retune`` fine-tunes a copy)."""
    if spec is not None:
        train_set = (scenario.train.x, scenario.train.y) if spec.needs_train_set else None
        return defend(model, scenario.model, (scenario.reserve_x, scenario.reserve_y), config,
                      train_set)[0]
    if model == "backdoored":
        return scenario.model
    return clean_reference_model(scenario, data, progress=False)


def detector_comparison(scenario: Scenario, config: UPGPConfig | None = None
                        ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """UPGP's detection beside the baseline detectors of ``upgp.detectors`` on the same model
    and training set: one row (AUROC of each suspicion ranking, UPGP's flagged-set metrics) and
    the suspicions themselves, by detector (higher = more suspicious; for ROC curves)."""
    run = run_upgp(scenario, config)
    suspicion = {"UPGP": run.suspicion, **{
        name: detector_scores(name, scenario.model, scenario.train.x, scenario.train.y)
        for name in DETECTORS}}
    truth, det = scenario.train.is_poisoned, run.result["detection"]
    return ({"attack": scenario.attack.name, "arch": scenario.arch,
             **{f"AUROC {k}": auroc(truth, v) for k, v in suspicion.items()},
             "UPGP flagged": det["flagged"], "UPGP precision": det["precision"],
             "UPGP recall": det["recall"], "UPGP FPR": det["fpr"]}, suspicion)


def timed_epoch_seconds(scenario: Scenario, batches: int = 32) -> float:
    """One epoch of the preset's training recipe on ``scenario``'s training set, timed here: a
    fresh model of the same architecture and width trains on ``batches`` batches twice (the
    first warms up), and the second's rate scales to the whole set. A model's recorded
    training time is what its run took, other work on the machine included; this is what an
    epoch costs now, beside the defense it is set against."""
    preset, x, y = scenario.preset, scenario.train.x, scenario.train.y
    subset = torch.arange(min(len(x), batches * preset.batch_size))
    model = create_model(scenario.arch, scenario.num_classes, preset.width)

    def images_per_second() -> float:
        return fit(model, x[subset], y[subset], 1, preset.batch_size, preset.lr, preset.schedule,
                   preset.bf16, scenario.seed, preset.momentum,
                   preset.weight_decay)["images_per_second"]

    images_per_second()  # warm-up
    return len(x) / images_per_second()


def upgp_cost(scenario: Scenario) -> dict[str, Any]:
    """UPGP's wall time on ``scenario`` by stage, four steps and with the repair, beside one
    training epoch of the same model timed in this kernel (``timed_epoch_seconds``). Stage
    times of a run read from the cache are those of the run that wrote it."""
    base = UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    four = run_upgp(scenario, base).result
    repair = run_upgp(scenario, base.with_repair()).result["upgp"]
    seconds, epoch = four["upgp"]["seconds"], timed_epoch_seconds(scenario)
    return {"attack": scenario.attack.name, "arch": scenario.arch,
            **{f"{stage} s": s for stage, s in seconds.items()},
            "UPGP total s": sum(seconds.values()), "train epoch s": epoch,
            "UPGP / epoch": sum(seconds.values()) / epoch,
            "+repair total s": sum(repair["seconds"].values()),
            "+repair rounds": repair.get("rounds", 1),
            "recorded epoch s": four["train_epoch_seconds"],
            "training machine": scenario.info.get("machine", "")}
