"""UPGP across regimes (issue 23): the defaults before and after on the same models.

The grid: the preset itself on both architectures and six attacks (BPP's backdoor does not take
hold at the cpu preset: little to remove); a converged regime (3x the epochs); width 32; 5%
poisoning; a 500-image reserve; a second seed; and the backdoor-free reference models ("clean",
issue 27: nothing to remove). Each row is one (regime, model, config): ACC / ASR / RA before and
after, the clean model's RA, AUROC, flagged / true poisons, removal steps and stop reason, and
UPGP's wall time over one training epoch. ``run_grid`` appends rows
to ``results/<preset>/regimes.csv`` as each finishes and skips finished ones; models come from,
and go to, the model cache. ``benchmarks/regimes.py`` is its command line; chapter 12 shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .io import atomic_write
from .method import UPGPConfig
from .metrics import TOOK_HOLD, redirection, struck_out_ra
from .outcomes import summary
from .presets import check_choice, get_preset
from .reproduce import results_dir
from .runs import upgp_with_predictions
from .scenarios import backdoored_model, clean_reference_model, clean_scenario
from .scorecard import with_bars

# BPP last: at the cpu preset its backdoor does not take hold (no-defense ASR about 45%), a
# model with little to remove (issue 27)
ATTACKS = ("badnets", "blended", "sig", "wanet", "iad", "bpp")
ARCHS = ("preact_resnet18", "vgg19_bn")
# "new default": UPGPConfig(), set from the reserve; "old default": its fixed_constants()
CONFIGS = ("old default", "new default")
KEY = ["regime", "attack", "arch", "seed", "config"]
CLEAN_ATTACK = "none (clean model)"
TRAIN_IMAGES = {"cifar10": 50_000, "synthetic": 2_000}  # before the reserve is split off
SMALL_RESERVE = 0.2  # the small-reserve regime: this share of the reserve (500 of 2,500 at cpu)


@dataclass(frozen=True)
class Regime:
    """One model of the grid and the reserve UPGP is given (0: the whole reserve)."""

    name: str
    attack: str
    arch: str
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # preset fields: epochs, width, ...
    reserve_size: int = 0
    clean: bool = False  # the scenario's backdoor-free reference model and clean training set

    @property
    def attack_label(self) -> str:
        return CLEAN_ATTACK if self.clean else self.attack


def grid(preset: str) -> list[Regime]:
    """Every regime of the grid at ``preset`` (30 models at every preset), in the order run."""
    settings = get_preset(preset)
    epochs = settings.epochs
    small = round(TRAIN_IMAGES[settings.dataset] * settings.reserve_ratio * SMALL_RESERVE)
    rows = [Regime("preset", a, m) for m in ARCHS for a in ATTACKS]
    rows += [Regime("converged (3x epochs)", a, "vgg19_bn", overrides={"epochs": 3 * epochs})
             for a in ("badnets", "blended")]
    rows += [Regime("width 32", a, "preact_resnet18", overrides={"width": 32})
             for a in ("badnets", "blended")]
    rows += [Regime("poisoning 5%", a, m, overrides={"poison_ratio": 0.05})
             for m, attacks in (("preact_resnet18", ("badnets", "blended", "wanet")),
                                ("vgg19_bn", ("badnets", "blended"))) for a in attacks]
    rows += [Regime(f"reserve {small}", a, m, reserve_size=small)
             for m, a in (("preact_resnet18", "badnets"), ("preact_resnet18", "blended"),
                          ("vgg19_bn", "badnets"))]
    rows += [Regime("seed 1", "badnets", "preact_resnet18", seed=1),
             Regime("seed 1", "blended", "vgg19_bn", seed=1)]
    rows += [Regime("clean", "badnets", m, seed=s, clean=True) for m in ARCHS for s in (0, 1)]
    return rows


def select(regimes: Sequence[Regime], names: Sequence[str] = (), archs: Sequence[str] = (),
           attacks: Sequence[str] = ()) -> list[Regime]:
    """The regimes named, on the architectures and (for backdoored models) attacks given; an
    empty filter keeps all. A one-line error for a name the grid does not have."""
    for what, values, allowed in (("regime", names, [r.name for r in regimes]),
                                  ("architecture", archs, ARCHS), ("attack", attacks, ATTACKS)):
        for value in values:
            check_choice(what, value, dict.fromkeys(allowed))
    return [r for r in regimes if (not names or r.name in names) and (not archs or r.arch in archs)
            and (not attacks or r.clean or r.attack in attacks)]


def config_for(name: str, bf16: bool, seed: int) -> UPGPConfig:
    check_choice("config", name, CONFIGS)
    base = UPGPConfig(bf16=bf16, seed=seed)
    return base.fixed_constants() if name == "old default" else base


def measure(regime: Regime, config_name: str, preset: str, data: str | None) -> dict[str, Any]:
    """One row of the grid: UPGP under ``config_name`` on the regime's model."""
    sc = backdoored_model(regime.attack, regime.arch, preset, regime.seed, data, progress=False,
                          **regime.overrides)
    clean, clean_counts = sc.evaluate_with_counts(clean_reference_model(sc, data, progress=False))
    target = clean_scenario(sc, data, progress=False) if regime.clean else sc
    config = config_for(config_name, sc.preset.bf16, regime.seed)
    result = upgp_with_predictions(target, config, reserve_size=regime.reserve_size).result
    det, upgp, run = result["detection"], result["upgp"], result["run"]
    redirected = lambda counts: redirection(counts, sc.preset.target)[1]  # noqa: E731
    return {"regime": regime.name, "attack": regime.attack_label, "arch": regime.arch,
            "seed": regime.seed, "config": config_name, "preset": preset, "width": run["width"],
            "epochs": run["epochs"], "train loss": target.info.get("final_train_loss"),
            "poison ratio": run["poison_ratio"],
            "reserve": result["reserve_size"],
            **{f"{k.upper()} before": v for k, v in result["before"].items()},
            **{f"{k.upper()} after": v for k, v in result["after"].items()},
            "clean-model RA": clean["ra"],
            "struck-out RA": struck_out_ra(target.model, target.x_triggered, target.y_triggered,
                                           target.t_triggered, sc.preset.bf16, sc.preset.eval_batch),
            # the share of triggered test images in the one class besides the backdoor label
            # that gets most of them: large after removal where the trigger now sends images
            # there (low ASR, low RA), against the spread of a backdoor-free model
            "redirected %": redirected(result["triggered_predictions"]),
            "clean-model redirected %": redirected(clean_counts),
            "AUROC": det.get("auroc", float("nan")),
            "flagged": det["flagged"], "true poisons": det["true_poisoned"],
            "flagged share": det["flagged"] / run["train_size"],
            "backdoor found": upgp.get("detection_backdoor_found", True),
            "removal steps": upgp["removal_steps"], "stop": upgp["removal_stop"],
            "UPGP s / epoch": result["wall_seconds"] / result["train_epoch_seconds"],
            "data": run["data"], "data fingerprint": run["data_fingerprint"]}


def run_grid(preset: str, regimes: Sequence[Regime], configs: Sequence[str] = CONFIGS,
             data: str | None = None, on_row: Callable[[dict[str, Any]], None] | None = None,
             compute: bool = True) -> pd.DataFrame:
    """Measure every (regime, config) not yet in ``results/<preset>/regimes.csv`` (with
    ``compute`` False, none: only what the file holds), writing the file after each row (an
    interrupted run loses nothing finished); returns the rows of ``regimes`` x ``configs`` that
    the file holds, in grid order."""
    for name in configs:
        check_choice("config", name, CONFIGS)
    out = results_dir(preset) / "regimes.csv"
    rows = pd.read_csv(out).to_dict("records") if out.exists() else []
    key = lambda row: tuple(str(row[k]) for k in KEY)  # noqa: E731
    done = {key(row) for row in rows}
    wanted = {(r.name, r.attack_label, r.arch, str(r.seed), c): (r, c)
              for r in regimes for c in configs}
    for regime, config_name in (v for k, v in wanted.items() if compute and k not in done):
        rows.append(measure(regime, config_name, preset, data))
        atomic_write(out, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
        if on_row is not None:
            on_row(rows[-1])
    order = {k: i for i, k in enumerate(wanted)}
    return pd.DataFrame(sorted((r for r in rows if key(r) in order), key=lambda r: order[key(r)]))


def bars(table: pd.DataFrame) -> pd.DataFrame:
    """Issue 23's bars per config, on the rows where the attack took hold (no-defense ASR >=
    ``TOOK_HOLD``): the share of rows with ASR <= 5 and ACC drop <= 2, with RA >= clean-model
    RA - 5, with removal steps > 0; and issue 27's on the other rows (clean models, backdoors
    that did not take hold): flagged share <= 2%, ACC drop <= 0.5, ASR rise <= 1. Indexed by
    config."""
    t = with_bars(table.rename(columns={  # the bars of the chapters' scorecards, on grid columns
        "ACC before": "ACC", "ACC after": "after ACC", "ASR after": "after ASR",
        "RA after": "after RA", "clean-model RA": "clean RA"}))
    t = t.assign(took=table["ASR before"] >= TOOK_HOLD)
    rows = []
    for config, g in t.groupby("config", sort=False):
        hold, rest = g[g.took], g[~g.took]
        rows.append({"config": config, "rows held": len(hold),
                     "ASR<=5 & drop<=2": (hold["ASR <= 5"] & hold["ACC drop <= 2"]).mean(),
                     "RA>=clean-5": hold["RA >= clean RA - 5"].mean(),
                     "steps>0": (hold["removal steps"] > 0).mean(),
                     "rows not held": len(rest),
                     "no harm": ((rest["flagged share"] <= 0.02) & (rest["ACC drop"] <= 0.5)
                                 & (rest["after ASR"] - rest["ASR before"] <= 1)).mean()})
    return pd.DataFrame(rows).set_index("config")


def mean_changes(table: pd.DataFrame) -> pd.DataFrame:
    """Per config, over the models of the "preset" regime where the attack took hold: their
    number and the mean ASR reduction, RA gain and ACC change (points), as the paper averages
    them (``outcomes.summary`` on the grid's columns). Indexed by config."""
    preset = table[table["regime"] == "preset"].rename(columns={
        "ASR after": "ASR", "RA after": "RA", "ACC after": "ACC", "config": "variant"})
    means = summary(preset)[["models", "ASR reduction", "RA gain", "ACC change"]]
    return means.rename_axis("config")


def description(table: pd.DataFrame) -> dict[str, Any]:
    """What identifies a set of grid rows, for ``plotting.provenance``: the preset, and the
    seeds, widths and data copies (name and fingerprint) they span."""
    spans = {k: ", ".join(map(str, sorted(table[k].unique()))) for k in ("seed", "width")}
    preset = str(table["preset"].iloc[0])
    return {"preset": preset, "scale": get_preset(preset).scale_label(), **spans,
            "data": "; ".join(table["data"].unique()),
            "data_fingerprint": ", ".join(table["data fingerprint"].astype(str).unique())}
