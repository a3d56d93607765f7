"""UPGP's parts varied one at a time on one backdoored model (chapter 06; the repair's selection
rule, chapter 08): one function per ablation, each a table with a row per setting. Everything
not varied stays at ``base``; every run is ``runs.run_upgp`` (cached), so a table costs nothing
once its runs exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from .analyses import TRAJECTORY_COLUMNS, removal_trajectory
from .method import UPGPConfig, detect
from .metrics import redirection
from .runs import run_upgp, upgp_with_predictions
from .scenarios import Scenario, backdoored_model, clean_reference_model


def outcome(result: dict[str, Any]) -> dict[str, Any]:
    """ACC / ASR / RA after UPGP, the ACC drop and how removal ended, from a run's result."""
    return {**{k.upper(): v for k, v in result["after"].items()},
            "ACC drop": result["before"]["acc"] - result["after"]["acc"],
            "steps": result["upgp"]["removal_steps"], "stop": result["upgp"]["removal_stop"]}


def projections(sc: Scenario, base: UPGPConfig, names: Sequence[str]) -> pd.DataFrame:
    """One row per projection of the removal gradient (none, vector, layer, subspace, gpm)."""
    rows = []
    for name in names:
        r = run_upgp(sc, base.replace(projection=name)).result
        rows.append({"projection": name, **outcome(r),
                     "removal s": r["upgp"]["seconds"]["removal"]})
    return pd.DataFrame(rows)


def flagged_sets(sc: Scenario, base: UPGPConfig, seed: int) -> pd.DataFrame:
    """Removal from the detected set, a random set of its size, and the true poisons (an
    upper bound that only evaluation knows)."""
    size = len(run_upgp(sc, base).flagged)
    random_set = torch.randperm(len(sc.train.y), generator=torch.Generator().manual_seed(seed))
    sets = {"detected": None, "random (same size)": random_set[:size].sort().values,
            "oracle (true poisons)": sc.train.poison_idx}
    rows = []
    for name, flagged in sets.items():
        r = run_upgp(sc, base, flagged=flagged).result
        rows.append({"flagged set": name, "size": r["detection"]["flagged"],
                     "precision": r["detection"]["precision"], **outcome(r)})
    return pd.DataFrame(rows)


def thresholds(sc: Scenario, base: UPGPConfig, z_values: Sequence[float]) -> pd.DataFrame:
    """Detection rules on the same sensitivity scores (those of ``base``): the two-component
    mixture, and the robust z-score at each threshold."""
    scores, truth = run_upgp(sc, base).scores, sc.train.is_poisoned
    rules = [("gmm", None), *(("robust_z", z) for z in z_values)]
    rows = []
    for rule, z in rules:
        m = detect(scores, rule=rule, threshold=z or 0.0).evaluate(truth)
        rows.append({"rule": rule if z is None else f"robust z < -{z}", "flagged": m["flagged"],
                     "precision": m["precision"], "recall": m["recall"], "FPR": m["fpr"],
                     "AUROC": m["auroc"]})
    return pd.DataFrame(rows)


def strengths(sc: Scenario, base: UPGPConfig, levels: Sequence[float]) -> pd.DataFrame:
    """How far the unlearning perturbation pushes reserve accuracy down before scoring."""
    rows = []
    for level in levels:
        r = run_upgp(sc, base.replace(perturb_stop_accuracy=level)).result
        d, u = r["detection"], r["upgp"]
        rows.append({"stop at reserve acc": level, "perturbation steps": u["perturbation_steps"],
                     "reserve acc reached": u["reserve_accuracy_after_perturbation"],
                     "AUROC": d["auroc"], "flagged": d["flagged"],
                     "precision": d["precision"], **outcome(r)})
    return pd.DataFrame(rows)


def reserve_sizes(sc: Scenario, base: UPGPConfig, fractions: Sequence[float]) -> pd.DataFrame:
    """The defense given a seeded share of its reserve (perturbation, projection, stopping)."""
    full, n_train = len(sc.reserve_y), len(sc.train.y)
    rows = []
    for fraction in fractions:
        size = round(fraction * full)
        r = run_upgp(sc, base, reserve_size=0 if size == full else size).result
        d = r["detection"]
        rows.append({"reserve images": size,
                     "% of all training images": 100 * size / (full + n_train),
                     "AUROC": d["auroc"], "flagged": d["flagged"], "precision": d["precision"],
                     **outcome(r)})
    return pd.DataFrame(rows)


def removal_budget(sc: Scenario, base: UPGPConfig, steps: int, every: int) -> pd.DataFrame:
    """ACC / ASR / RA along the removal loop with its stopping rules off, with ``base``'s
    projection and with none."""
    parts = []
    for name in dict.fromkeys([base.projection, "none"]):
        trajectory = pd.DataFrame(removal_trajectory(sc, base.replace(projection=name), steps,
                                                     every), columns=TRAJECTORY_COLUMNS)
        parts.append(trajectory.assign(projection=name))
    return pd.concat(parts, ignore_index=True)


def poison_rates(attack: str, arch: str, preset: str, seed: int, data: str | None,
                 base: UPGPConfig, ratios: Sequence[float]) -> pd.DataFrame:
    """A backdoored model trained at each poisoning ratio, defended with ``base`` and with the
    optional repair (``with_repair``); detection does not know the ratio."""
    rows = []
    for ratio in ratios:
        sc = backdoored_model(attack, arch, preset, seed, data, progress=False,
                              poison_ratio=ratio)
        r = run_upgp(sc, base).result
        repaired = run_upgp(sc, base.with_repair()).result["after"]
        d, b = r["detection"], r["before"]
        rows.append({"poison ratio": ratio, "poisons": d["true_poisoned"],
                     **{f"{k.upper()} before": v for k, v in b.items()}, "AUROC": d["auroc"],
                     "flagged": d["flagged"], "precision": d["precision"],
                     "recall": d["recall"], **outcome(r),
                     **{f"+repair {k.upper()}": v for k, v in repaired.items()}})
    return pd.DataFrame(rows)


def repair_variants(base: UPGPConfig, steps: int = 60, rounds: int = 3) -> dict[str, UPGPConfig]:
    """The repairs compared: none, projected (one round, several), the main results' setting
    (removal aiming 5 points lower), plain fine-tuning under the same stop and with none."""
    one = base.replace(repair_steps=steps)
    return {"none (four steps)": base, "projected, 1 round": one,
            f"projected, up to {rounds} rounds": one.replace(removal_rounds=rounds),
            f"projected, up to {rounds} rounds, with_repair": base.with_repair(steps, rounds),
            "plain fine-tuning, same stop": one.replace(repair_project=False),
            "plain fine-tuning, no stop": one.replace(repair_project=False,
                                                      repair_max_flagged_rise=1.0)}


def repairs(scenarios: dict[str, Scenario], variants: dict[str, UPGPConfig]) -> pd.DataFrame:
    """Each repair variant on each attack's model."""
    rows = []
    for attack, sc in scenarios.items():
        for label, config in variants.items():
            r = run_upgp(sc, config).result
            u = r["upgp"]
            rows.append({"attack": attack, "repair": label,
                         "removal target": config.stop_flagged_accuracy, **outcome(r),
                         "rounds": u.get("rounds", 1), "repair steps": u.get("repair_steps", 0),
                         "repair stop": u.get("repair_stop", "-"),
                         "flagged acc": u.get("flagged_accuracy_after", float("nan"))})
    return pd.DataFrame(rows)


def repair_selections(sc: Scenario, variants: dict[str, UPGPConfig]) -> pd.DataFrame:
    """The trigger repair under each of ``variants`` on one model (chapter 08): ACC / ASR / RA
    after, the kept model's accuracy on the held-out reserve stamped with the estimated trigger
    (%, where the rule computes it), how the repair ended, the flagged set and the wall time."""
    rows = []
    for name, config in variants.items():
        r = run_upgp(sc, config).result
        u, d = r["upgp"], r["detection"]
        rows.append({"model": name, **r["after"],
                     "stamped held-out acc": 100 * u.get("stamped_holdout_accuracy_after",
                                                         float("nan")),
                     "repair steps": u["repair_steps"], "repair stop": u["repair_stop"],
                     "rounds": u["rounds"], "flagged acc": u["flagged_accuracy_after"],
                     "flagged": d["flagged"], "precision": d["precision"], "AUROC": d["auroc"],
                     "wall s": r["wall_seconds"]})
    return pd.DataFrame(rows)


def _most_hit(counts: list[int], sc: Scenario) -> dict[str, Any]:
    """The class besides the backdoor label that gets most triggered images, and its share."""
    c, share = redirection(counts, sc.preset.target)
    return {"most-hit other class": sc.classes[c], "its share %": share}


def redirections(sc: Scenario, data: str | None, losses: Sequence[str], trigger_share: float
                 ) -> pd.DataFrame:
    """Where the triggered test images go: for a model trained without poison, and for UPGP
    and UPGP + repair under each removal loss (the default loss also with the estimated
    trigger), ACC / ASR / RA and the other class that gets most of them."""
    clean = clean_reference_model(sc, data, progress=False)
    rows = [{"model": "clean (no poison)", "removal loss": "-",
             **{k.upper(): v for k, v in sc.evaluate(clean).items()},
             "flagged acc": float("nan"), **_most_hit(sc.triggered_predictions(clean), sc)}]
    base = UPGPConfig(bf16=sc.preset.bf16, seed=sc.seed)
    for loss in losses:
        four = base.replace(removal_loss=loss)
        variants = {"UPGP": four, "UPGP + repair": four.with_repair()}
        if loss == base.removal_loss:
            variants["UPGP + trigger repair"] = four.with_repair().replace(
                repair_trigger_share=trigger_share)
        for label, config in variants.items():
            r = upgp_with_predictions(sc, config).result
            rows.append({"model": label, "removal loss": loss,
                         **{k.upper(): v for k, v in r["after"].items()},
                         "flagged acc": r["upgp"]["flagged_accuracy_after"],
                         **_most_hit(r["triggered_predictions"], sc)})
    return pd.DataFrame(rows).assign(attack=sc.attack.name)
