"""Defenses run on a scenario's backdoored model and evaluated, with the defense cache.

``run_upgp`` and ``run_defense`` return a JSON-able result (ACC / ASR / RA before and after, DER,
detection metrics) cached under the backdoored model and everything that determines the run;
``defense_cache`` names that file for every cached computation on a scenario.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .defenses import defend, defense_config, get_defense
from .defenses.upgp import UPGP_DEFENSES
from .io import cache_dir, config_hash, load_json, load_tensors, save_tensors, write_json
from .method import UPGPConfig, subsample_reserve, upgp_defend
from .metrics import der, detection_metrics
from .scenarios import Scenario, model_cache_path


@dataclass
class DefenseRun:
    """A defense's JSON-able result row, plus what a fresh (uncached) run also returns.

    ``scores``/``flagged``/``suspicion``: the training-set sensitivity scores, the flagged indices
    and the suspicion ranking (kept in the cache, for plots). ``model`` and ``report`` are None
    when the result came from the cache.
    """

    result: dict[str, Any]
    scores: Tensor
    flagged: Tensor
    suspicion: Tensor
    model: nn.Module | None = None
    report: Any = None


def defense_cache(scenario: Scenario, kind: str, *key: Any, suffix: str = ".json") -> Path:
    """The cache file of a computation ``kind`` on ``scenario``'s backdoored model, named by a
    hash of that model and ``key`` (everything else that determines the computation)."""
    digest = config_hash(model_cache_path(scenario).name, *key)
    return (cache_dir() / "defenses"
            / f"{kind}-{scenario.attack.name}-{scenario.arch}-{digest}{suffix}")


def defense_result(scenario: Scenario, defense: str, config: Any, model: nn.Module,
                   wall_seconds: float) -> dict[str, Any]:
    """The evaluation row every defense run gets: the run, its config, ACC/ASR/RA before and
    after, DER, wall time and one training epoch's time (for scale)."""
    after, counts = scenario.evaluate_with_counts(model)
    return {"run": scenario.describe(), "defense": defense, "config": dataclasses.asdict(config),
            "before": scenario.metrics, "after": after, "der": der(scenario.metrics, after),
            "triggered_predictions": counts,
            "wall_seconds": wall_seconds,
            "train_epoch_seconds": scenario.info.get("train_seconds", float("nan"))
            / scenario.preset.epochs}


def run_upgp(scenario: Scenario, config: UPGPConfig | None = None,
             flagged: Tensor | None = None, use_cache: bool = True,
             reserve_size: int = 0) -> DefenseRun:
    """Run UPGP on a scenario's backdoored model and evaluate it (ACC/ASR/RA, DER, detection).

    ``reserve_size`` > 0 gives the defense a seeded subset of that many reserve images (the
    reserve-size ablation). Results are cached under the backdoored model, the config, the given
    flagged set and the reserve size, so notebooks and the CLI share finished runs.
    """
    config = config or UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    given = None if flagged is None else ("taken as all poisons", flagged.tolist())
    path = defense_cache(scenario, "upgp", config, given,
                         *((reserve_size,) if reserve_size else ()),  # older keys stay valid
                         suffix=".pt")
    cached = load_tensors(path) if use_cache else None
    if cached is not None:  # the key fixes the scenario; its description follows the code's
        return DefenseRun({**json.loads(cached["result"]), "run": scenario.describe()},
                          cached["scores"], cached["flagged"], cached["suspicion"])
    reserve = subsample_reserve(scenario.reserve_x, scenario.reserve_y, reserve_size,
                                scenario.seed)
    start = time.perf_counter()
    model, report = upgp_defend(scenario.model, (scenario.train.x, scenario.train.y), reserve,
                                config, flagged=flagged)
    result = defense_result(scenario, "upgp", config, model, time.perf_counter() - start)
    result.update(detection=report.detection.evaluate(scenario.train.is_poisoned),
                  upgp=report.summary(), reserve_size=len(reserve[1]))
    run = DefenseRun(result, report.scores, report.detection.flagged, report.detection.suspicion,
                     model, report)
    save_tensors(path, {"result": json.dumps(result, default=str), "scores": run.scores,
                        "flagged": run.flagged, "suspicion": run.suspicion})
    return run


def upgp_with_predictions(scenario: Scenario, config: UPGPConfig | None = None,
                          reserve_size: int = 0) -> DefenseRun:
    """``run_upgp``, rerun (and recached) when its cached result predates the count of the
    defended model's predictions on the triggered test images (``triggered_predictions``)."""
    run = run_upgp(scenario, config, reserve_size=reserve_size)
    return run if "triggered_predictions" in run.result else run_upgp(
        scenario, config, use_cache=False, reserve_size=reserve_size)


def run_defense(scenario: Scenario, defense: str = "upgp", config: Any = None,
                use_cache: bool = True) -> dict[str, Any]:
    """Run a registered defense on the scenario's backdoored model; the JSON-able result row.

    The defense sees the model, the clean reserve and (ABL, UPGP only) the poisoned training set;
    the evaluation (ACC/ASR/RA before and after, DER, detection metrics of any flagged set) is
    done here, after it returns. Results are cached like the models, by everything that
    determines them.
    """
    spec = get_defense(defense)
    config = config if config is not None else defense_config(defense, scenario.preset,
                                                              scenario.seed)
    if defense in UPGP_DEFENSES:  # shares run_upgp's cache (scores and flagged set kept)
        return {**run_upgp(scenario, config, use_cache=use_cache).result, "defense": defense}
    path = defense_cache(scenario, defense, defense, config)
    cached = load_json(path) if use_cache else None
    if cached is not None:
        return {**cached, "run": scenario.describe()}
    train_set = (scenario.train.x, scenario.train.y) if spec.needs_train_set else None
    start = time.perf_counter()
    model, report = defend(defense, scenario.model, (scenario.reserve_x, scenario.reserve_y),
                           config, train_set)
    result = defense_result(scenario, defense, config, model, time.perf_counter() - start)
    result["report"] = {k: v for k, v in report.items() if k != "flagged"}
    if "flagged" in report:  # the samples a training-set defense isolated
        result["detection"] = detection_metrics(scenario.train.is_poisoned, report["flagged"])
    write_json(path, result)
    return result


