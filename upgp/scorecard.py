"""Defended models against the reproduction's bars, as table rows (chapters 10 and 11).

A UPGP run's result becomes one flat row (``defense_row``); ``with_bars`` adds the ACC drop and
one boolean column per bar: ASR after <= 5%, ACC drop <= 2 points, RA after >= 75%, and RA after
>= the RA of a backdoor-free model of the same architecture, preset and seed minus 5 (the most a
defense can restore where a full-image trigger costs accuracy by itself). ``bar_summary`` gives
the means and the count of models passing each bar per group. ``projection_arms`` defends one
model with and without the projection (chapter 11) and ``paired_counts`` compares two such arms
model by model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from .method import UPGPConfig

BARS = {"ASR <= 5": "asr_ok", "ACC drop <= 2": "acc_ok", "RA >= 75": "ra75_ok",
        "RA >= clean RA - 5": "ra_clean_ok"}  # bar column -> its short name in summaries


def defense_row(result: dict[str, Any], clean_ra: float) -> dict[str, Any]:
    """One UPGP run (``run_defense``'s result) as a row: the backdoored model's ACC and ASR, the
    clean model's RA, the flagged set, ACC / ASR / RA after, and how removal and repair ended."""
    before, after, upgp = result["before"], result["after"], result["upgp"]
    return {"ACC": before["acc"], "ASR": before["asr"], "clean RA": clean_ra,
            "flagged": result["detection"]["flagged"],
            "precision": result["detection"]["precision"],
            "recall": result["detection"]["recall"],
            "after ACC": after["acc"], "after ASR": after["asr"], "after RA": after["ra"],
            "removal steps": upgp["removal_steps"], "removal stop": upgp["removal_stop"],
            "repair steps": upgp.get("repair_steps", 0), "repair stop": upgp.get("repair_stop", ""),
            "rounds": upgp.get("rounds", 1)}


def with_bars(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows of ``defense_row``) with the ACC drop and one column per bar of BARS."""
    drop = table.ACC - table["after ACC"]
    return table.assign(**{
        "ACC drop": drop, "ASR <= 5": table["after ASR"] <= 5, "ACC drop <= 2": drop <= 2,
        "RA >= 75": table["after RA"] >= 75,
        "RA >= clean RA - 5": table["after RA"] >= table["clean RA"] - 5})


def bar_summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of ``by`` in ``with_bars(table)``: the number of models (*pairs*), the means of
    precision, ACC / ASR / RA after, ACC drop and removal steps, and how many pass each bar."""
    return table.groupby(by, sort=False).agg(
        pairs=("ACC", "size"), precision=("precision", "mean"), acc=("after ACC", "mean"),
        asr=("after ASR", "mean"), ra=("after RA", "mean"), acc_drop=("ACC drop", "mean"),
        removal_steps=("removal steps", "mean"),
        **{short: (bar, "sum") for bar, short in BARS.items()})


ARM_KEYS = {"projected": "proj", "no projection": "noproj"}  # arm -> its short name in glue keys
AFTER_KEYS = {"after ACC": "acc", "after ASR": "asr", "after RA": "ra"}  # column -> glue-key name


def projection_arms(result_of: Callable[[UPGPConfig], dict[str, Any]], config: UPGPConfig,
                    clean_ra: float) -> list[dict[str, Any]]:
    """One model defended by ``config`` and by ``config.without_projection()`` (``result_of``
    runs the defense): per arm, its ``defense_row``, the removal's mean |cos(g_u, n)| (projected
    arm only: what there was to project out) and removal's and repair's seconds."""
    rows = []
    for arm, cfg in (("projected", config), ("no projection", config.without_projection())):
        result = result_of(cfg)
        upgp = result["upgp"]
        rows.append({"arm": arm, **defense_row(result, clean_ra),
                     "mean |cos|": upgp["mean_abs_cosine_gu_n"] if arm == "projected" else None,
                     "removal s": upgp["seconds"]["removal"],
                     "repair s": upgp["seconds"].get("repair", 0.0)})
    return rows


def paired_counts(table: pd.DataFrame, by: str, arm: str, other: str
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model by model (rows of ``with_bars`` with an *arm* column; a model is its *by*, *attack*
    and *seed*), ``arm``'s ACC / ASR / RA after minus ``other``'s; and per *by* value and for
    all models, how many models ``arm`` leaves with the higher ACC, the lower ASR and the higher
    RA (ties count for neither), and the number of models."""
    wide = table.pivot_table(index=[by, "attack", "seed"], columns="arm", values=list(AFTER_KEYS),
                             sort=False)
    paired = pd.DataFrame({f"{m} ({arm} - {other})": wide[(col, arm)] - wide[(col, other)]
                           for col, m in AFTER_KEYS.items()})
    better = pd.DataFrame({"higher ACC": paired.iloc[:, 0] > 0, "lower ASR": paired.iloc[:, 1] < 0,
                           "higher RA": paired.iloc[:, 2] > 0})
    counts = better.groupby(level=by, sort=False).sum()
    counts.loc["all"] = counts.sum()
    counts["models"] = [*better.groupby(level=by, sort=False).size(), len(better)]
    return paired, counts
