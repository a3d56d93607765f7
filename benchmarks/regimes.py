"""UPGP across regimes: the defaults before and after issue 23 on the same models.

    python benchmarks/regimes.py --preset cpu [--only preset "poisoning 5%"] [--configs "new default"]

The grid (issue 23): the preset itself on both architectures and five attacks; a converged
regime (3x the epochs); width 32; 5% poisoning; a 500-image reserve; a second seed; and the
backdoor-free reference models ("clean", issue 27: there is nothing to remove). Each row is one
(regime, model, config): ACC / ASR / RA before and after, the clean model's RA, AUROC, flagged /
true poisons, removal steps and stop reason, and UPGP's wall time over one training epoch.
Rows go to ``results/<preset>/regimes.csv`` as each finishes (a rerun skips finished rows);
the table is printed at the end. Models come from, and go to, the model cache.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from upgp.experiments import backdoored_model, clean_reference, clean_scenario, run_upgp
from upgp.io import atomic_write
from upgp.method import UPGPConfig
from upgp.presets import PRESETS, check_choice, get_preset
from upgp.reproduce import results_dir

ATTACKS = ("badnets", "blended", "sig", "wanet", "iad")
ARCHS = ("preact_resnet18", "vgg19_bn")
# "new default": UPGPConfig(), set from the reserve; "old default": its fixed_constants()
CONFIGS = ("old default", "new default")


@dataclass(frozen=True)
class Regime:
    """One backdoored model of the grid and the reserve UPGP is given (0: the whole reserve)."""

    name: str
    attack: str
    arch: str
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # preset fields: epochs, width, ...
    reserve_size: int = 0
    clean: bool = False  # the scenario's backdoor-free reference model and clean training set


def grid(preset: str) -> list[Regime]:
    epochs = get_preset(preset).epochs
    rows = [Regime("preset", a, m) for m in ARCHS for a in ATTACKS]
    rows += [Regime("converged (3x epochs)", a, "vgg19_bn", overrides={"epochs": 3 * epochs})
             for a in ("badnets", "blended")]
    rows += [Regime("width 32", a, "preact_resnet18", overrides={"width": 32})
             for a in ("badnets", "blended")]
    rows += [Regime("poisoning 5%", a, m, overrides={"poison_ratio": 0.05})
             for m, attacks in (("preact_resnet18", ("badnets", "blended", "wanet")),
                                ("vgg19_bn", ("badnets", "blended"))) for a in attacks]
    rows += [Regime("reserve 500", a, m, reserve_size=500)
             for m, a in (("preact_resnet18", "badnets"), ("preact_resnet18", "blended"),
                          ("vgg19_bn", "badnets"))]
    rows += [Regime("seed 1", "badnets", "preact_resnet18", seed=1),
             Regime("seed 1", "blended", "vgg19_bn", seed=1)]
    rows += [Regime("clean", "badnets", m, seed=s, clean=True) for m in ARCHS for s in (0, 1)]
    return rows


def config_for(name: str, bf16: bool, seed: int) -> UPGPConfig:
    base = UPGPConfig(bf16=bf16, seed=seed)
    return base.fixed_constants() if name == "old default" else base


def measure(regime: Regime, config_name: str, preset: str, data: str | None) -> dict[str, Any]:
    sc = backdoored_model(regime.attack, regime.arch, preset, regime.seed, data, progress=False,
                          **regime.overrides)
    clean_ra = clean_reference(sc, data, progress=False)["ra"]
    target = clean_scenario(sc, data, progress=False) if regime.clean else sc
    config = config_for(config_name, sc.preset.bf16, regime.seed)
    # the clean scenario shares the backdoored model's cache name: its runs are not cached
    result = run_upgp(target, config, reserve_size=regime.reserve_size,
                      use_cache=not regime.clean).result
    det, upgp, run = result["detection"], result["upgp"], result["run"]
    reserve_size = result.get("reserve_size", run["reserve_size"])  # absent in older cache entries
    return {"regime": regime.name, "attack": "none (clean model)" if regime.clean else regime.attack,
            "arch": regime.arch, "seed": regime.seed, "config": config_name,
            "preset": preset, "width": run["width"], "epochs": run["epochs"],
            "poison ratio": run["poison_ratio"], "reserve": reserve_size,
            **{f"{k.upper()} before": v for k, v in result["before"].items()},
            **{f"{k.upper()} after": v for k, v in result["after"].items()},
            "clean-model RA": clean_ra, "AUROC": det.get("auroc", float("nan")),
            "flagged": det["flagged"], "true poisons": det["true_poisoned"],
            "flagged share": det["flagged"] / run["train_size"],
            "backdoor found": upgp.get("detection_backdoor_found", True),
            "removal steps": upgp["removal_steps"], "stop": upgp["removal_stop"],
            "UPGP s / epoch": result["wall_seconds"] / result["train_epoch_seconds"],
            "data": run["data"]}


KEY = ["regime", "attack", "arch", "seed", "config"]
TOOK_HOLD = 80.0  # no-defense ASR (%) from which an attack counts as having taken hold


def bars(table: pd.DataFrame) -> pd.DataFrame:
    """Issue 23's bars per config, on the rows where the attack took hold: the share of rows
    with ASR <= 5 and ACC drop <= 2, with RA >= clean-model RA - 5, with removal steps > 0;
    and issue 27's on the other rows (clean models, backdoors that did not take hold): flagged
    share <= 2%, ACC drop <= 0.5, ASR rise <= 1."""
    t = table.assign(took=table["ASR before"] >= TOOK_HOLD,
                     drop=table["ACC before"] - table["ACC after"])
    rows = []
    for config, g in t.groupby("config", sort=False):
        hold, rest = g[g.took], g[~g.took]
        rows.append({"config": config, "rows held": len(hold),
                     "ASR<=5 & drop<=2": ((hold["ASR after"] <= 5) & (hold["drop"] <= 2)).mean(),
                     "RA>=clean-5": (hold["RA after"] >= hold["clean-model RA"] - 5).mean(),
                     "steps>0": (hold["removal steps"] > 0).mean(),
                     "rows not held": len(rest),
                     "no harm": ((rest["flagged share"] <= 0.02) & (rest["drop"] <= 0.5)
                                 & (rest["ASR after"] - rest["ASR before"] <= 1)).mean()})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--only", nargs="+", metavar="REGIME", help="regime names to run")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help=", ".join(CONFIGS))
    parser.add_argument("--data", help="ImageFolder copy of CIFAR-10 (else $UPGP_DATA)")
    args = parser.parse_args()
    check_choice("preset", args.preset, PRESETS)
    for name in args.configs:
        check_choice("config", name, CONFIGS)
    regimes = grid(args.preset)
    if args.only:
        for name in args.only:
            check_choice("regime", name, dict.fromkeys(r.name for r in regimes))
        regimes = [r for r in regimes if r.name in args.only]
    out = results_dir(args.preset) / "regimes.csv"
    table = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=KEY)
    done = {tuple(str(v) for v in row) for row in table[KEY].itertuples(index=False)}
    for regime in regimes:
        for config_name in args.configs:
            attack = "none (clean model)" if regime.clean else regime.attack
            if (regime.name, attack, regime.arch, str(regime.seed), config_name) in done:
                continue
            row = pd.DataFrame([measure(regime, config_name, args.preset, args.data)])
            table = row if table.empty else pd.concat([table, row], ignore_index=True)
            atomic_write(out, lambda tmp, t=table: t.to_csv(tmp, index=False))
            print(f"{regime.name} / {attack} / {regime.arch} / seed {regime.seed} / "
                  f"{config_name}: ASR {row['ASR before'][0]:.1f} -> {row['ASR after'][0]:.1f}, "
                  f"ACC {row['ACC before'][0]:.1f} -> {row['ACC after'][0]:.1f}", flush=True)
    columns = ["regime", "attack", "arch", "seed", "config", "ACC before", "ACC after",
               "ASR before", "ASR after", "RA after", "clean-model RA", "AUROC", "flagged",
               "true poisons", "removal steps", "stop", "UPGP s / epoch"]
    print(f"preset {args.preset}; data: {table['data'].iloc[0] if len(table) else '-'}")
    print(table[columns].round(2).to_string(index=False))
    print(f"\nshares of rows meeting the bars (attack took hold: no-defense ASR >= {TOOK_HOLD})")
    print(bars(table).round(2).to_string(index=False))


if __name__ == "__main__":
    main()
