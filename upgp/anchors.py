"""Published numbers the book sets its own beside (quoted from ``shared/docs/anchors.md``).

These are other people's measurements, never ours: every table that shows them names the source
and what differs (model width, epochs, data copy, seeds).
"""

from __future__ import annotations

import pandas as pd

PAPER_SOURCE = "UPGP paper, Pattern Recognition 176, 113211 (2026), abstract"
PAPER = {"mean ASR reduction (pp)": 96.34, "mean RA gain (pp)": 83.68}

BACKDOORBENCH_SOURCE = ("BackdoorBench leaderboard (v2; SIG and LC rows from v1), CIFAR-10, "
                        "PreAct-ResNet18 width 64, 100 epochs, 10% poisoning, target 0")
# attack -> defense -> (ACC, ASR, RA) in %; "none" = no defense.
_BB = {
    "badnets": "91.32/95.03/4.67 89.96/1.48/89.39 91.31/57.13/41.62 89.87/2.14/88.71 "
               "84.17/0.73/84.04 83.32/0.00/89.02 89.16/1.29/89.24",
    "blended": "93.47/99.92/0.08 92.78/96.11/3.57 93.17/99.26/0.73 92.17/97.69/2.14 "
               "86.58/2.19/61.17 77.30/0.73/64.52 87.00/50.53/33.21",
    "sig": "84.48/98.27/1.72 90.80/2.37/69.74 89.10/26.20/20.61 90.02/10.66/64.20 "
           "77.97/0.01/48.80 57.80/0.00/59.97 -",
    "lc": "84.59/99.92/0.07 90.60/11.53/59.74 89.53/0.46/13.32 90.42/10.50/59.70 "
          "83.98/4.12/54.69 65.31/0.00/52.69 -",
    "wanet": "91.25/89.73/9.76 93.48/17.10/78.29 91.46/1.09/69.73 93.17/22.98/72.69 "
             "85.73/0.43/86.50 83.19/0.00/85.86 89.49/5.21/86.60",
    "iad": "90.67/98.26/1.66 93.12/1.72/90.53 91.74/0.04/44.54 93.18/1.68/91.12 "
           "90.36/1.64/86.99 63.19/90.16/5.77 89.17/27.08/56.73",
    "bpp": "90.69/99.78/0.21 93.25/2.54/87.00 92.70/18.39/72.20 92.81/2.46/86.22 "
           "81.78/0.24/75.37 78.55/13.77/64.93 90.99/6.24/82.34",
}
_BB_DEFENSES = ("none", "ft", "fp", "nad", "anp", "abl", "ibau")


def backdoorbench() -> pd.DataFrame:
    """BackdoorBench's PreAct-ResNet18 rows as a tidy table: attack, defense, acc, asr, ra."""
    rows = []
    for attack, cells in _BB.items():
        for defense, cell in zip(_BB_DEFENSES, cells.split()):
            if cell != "-":
                acc, asr, ra = (float(v) for v in cell.split("/"))
                rows.append({"attack": attack, "defense": defense, "acc": acc, "asr": asr,
                             "ra": ra})
    return pd.DataFrame(rows)
