"""UPGP across regimes: the defaults before and after issue 23 on the same models.

    python benchmarks/regimes.py --preset cpu [--only preset "poisoning 5%"] [--archs vgg19_bn]
                                 [--configs "new default"]

Runs ``upgp.regimes.run_grid`` (resumable: rows go to ``results/<preset>/regimes.csv`` as each
finishes, and a rerun skips them), then prints the table and the shares of rows that meet
issue 23's and issue 27's bars.
"""

from __future__ import annotations

import argparse

from upgp.presets import PRESETS, check_choice
from upgp.regimes import ARCHS, ATTACKS, CONFIGS, TOOK_HOLD, bars, grid, run_grid, select

COLUMNS = ["regime", "attack", "arch", "seed", "config", "ACC before", "ACC after", "ASR before",
           "ASR after", "RA after", "clean-model RA", "AUROC", "flagged", "true poisons",
           "removal steps", "stop", "UPGP s / epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--only", nargs="+", default=[], metavar="REGIME", help="regime names")
    parser.add_argument("--archs", nargs="+", default=[], help=", ".join(ARCHS))
    parser.add_argument("--attacks", nargs="+", default=[], help=", ".join(ATTACKS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help=", ".join(CONFIGS))
    parser.add_argument("--data", help="ImageFolder copy of CIFAR-10 (else $UPGP_DATA)")
    args = parser.parse_args()
    try:  # bad names end in one line, before any work
        check_choice("preset", args.preset, PRESETS)
        regimes = select(grid(args.preset), args.only, args.archs, args.attacks)
        for name in args.configs:
            check_choice("config", name, CONFIGS)
    except ValueError as err:
        parser.error(str(err))

    def report(row: dict) -> None:
        print(f"{row['regime']} / {row['attack']} / {row['arch']} / seed {row['seed']} / "
              f"{row['config']}: ASR {row['ASR before']:.1f} -> {row['ASR after']:.1f}, "
              f"ACC {row['ACC before']:.1f} -> {row['ACC after']:.1f}, "
              f"{row['removal steps']} steps ({row['stop']})", flush=True)

    table = run_grid(args.preset, regimes, args.configs, args.data, on_row=report)
    print(f"preset {args.preset}; data: {table['data'].iloc[0] if len(table) else '-'}")
    print(table[COLUMNS].round(2).to_string(index=False))
    print(f"\nshares of rows meeting the bars (attack took hold: no-defense ASR >= {TOOK_HOLD})")
    print(bars(table).round(2).to_string())


if __name__ == "__main__":
    main()
