"""UPGP's variants on backdoored models, and the summaries the book quotes by label (chapter 04
and the front page).

``variant_rows`` runs every variant of ``VARIANTS`` on one backdoored model: one row per variant
with ACC / ASR / RA before and after, the backdoor-free model's ACC and RA, detection and how
removal ended. ``summary`` averages them over the models where the attack took hold, indexed by
variant; ``headline`` sets two of those rows beside the published numbers (``upgp.anchors``);
``stages`` turns the rows into bars before and after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from .anchors import PAPER, backdoorbench
from .defenses.upgp import TRIGGER_SHARE
from .method import UPGPConfig
from .metrics import TOOK_HOLD, target_class_accuracy
from .runs import run_upgp
from .scenarios import Scenario

FOUR_STEPS = "UPGP"  # the paper's four steps, default config
EXTENSION = "UPGP + trigger repair"  # this book's fullest extension, on the front page
# label -> the variant's config from the four-step default
VARIANTS: dict[str, Callable[[UPGPConfig], UPGPConfig]] = {
    FOUR_STEPS: lambda c: c,
    "UPGP, no projection": lambda c: c.without_projection(),
    "UPGP + repair": lambda c: c.with_repair(),
    # the repair with removal aiming at the four-step target (an earlier edition's setting)
    "UPGP + repair, removal at 0.10": lambda c: c.with_repair().replace(
        stop_flagged_accuracy=c.stop_flagged_accuracy),
    EXTENSION: lambda c: c.with_repair().replace(repair_trigger_share=TRIGGER_SHARE),
}
# BackdoorBench's strongest removal on its PreAct-ResNet18 CIFAR-10 leaderboard, averaged over
# the six attacks it and the paper share (anchors.md)
ANP_ATTACKS = ("badnets", "blended", "sig", "wanet", "iad", "bpp")


def variant_rows(scenario: Scenario, clean: dict[str, float],
                 variants: dict[str, Callable[[UPGPConfig], UPGPConfig]] = VARIANTS
                 ) -> list[dict[str, Any]]:
    """One row per variant of UPGP on ``scenario``'s model (cached runs are reused), with the
    model's clean accuracy on the target class and on the others; ``clean``: ACC and RA of a
    backdoor-free model of the same architecture, preset and seed."""
    base = UPGPConfig(bf16=scenario.preset.bf16, seed=scenario.seed)
    by_class = target_class_accuracy(scenario.model, scenario.x_test, scenario.y_test,
                                     scenario.preset.target, scenario.preset.bf16)
    rows = []
    for label, make in variants.items():
        r = run_upgp(scenario, make(base)).result
        det, upgp = r["detection"], r["upgp"]
        rows.append({"attack": scenario.attack.name, "arch": scenario.arch,
                     "seed": scenario.seed, "epochs": scenario.preset.epochs, "variant": label,
                     **{f"{k.upper()} before": v for k, v in r["before"].items()},
                     **{k.upper(): v for k, v in r["after"].items()},
                     "clean-model ACC": clean["acc"], "clean-model RA": clean["ra"],
                     "ACC target class": by_class["acc_target_class"],
                     "ACC other classes": by_class["acc_other_classes"],
                     "AUROC": det.get("auroc", float("nan")), "flagged": det["flagged"],
                     "precision": det.get("precision", float("nan")),
                     "removal steps": upgp["removal_steps"], "removal stop": upgp["removal_stop"],
                     "rounds": upgp.get("rounds", 1),
                     "flagged acc after": upgp.get("flagged_accuracy_after", float("nan"))})
    return rows


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, over the models where the attack took hold (no-defense ASR >= TOOK_HOLD):
    the mean ASR reduction, RA gain and ACC change (points), the mean RA as a share of the
    clean model's, and how many models end with ASR <= 5. Indexed by variant, in row order."""
    held = rows[rows["ASR before"] >= TOOK_HOLD]
    out = held.assign(asr_cut=held["ASR before"] - held["ASR"],
                      ra_gain=held["RA"] - held["RA before"],
                      acc_change=held["ACC"] - held["ACC before"],
                      ra_share=100 * held["RA"] / held["clean-model RA"],
                      removed=held["ASR"] <= 5)
    return out.groupby("variant", sort=False).agg(
        **{"models": ("ASR", "size"), "ASR reduction": ("asr_cut", "mean"),
           "RA gain": ("ra_gain", "mean"), "ACC change": ("acc_change", "mean"),
           "RA of clean RA (%)": ("ra_share", "mean"), "ASR at most 5": ("removed", "sum")})


HEADLINE_COLUMNS = ["models", "ASR reduction", "RA gain", "ACC change"]
PAPER_ROW = "UPGP (paper's abstract: 6 attacks x 2 architectures, full scale)"
ANP_ROW = "ANP (BackdoorBench, PreAct-ResNet18, full scale)"


def published() -> pd.DataFrame:
    """The numbers ours are set beside, indexed by label: the paper's abstract, and
    BackdoorBench's ANP averaged over ``ANP_ATTACKS`` (the change from its no-defense rows)."""
    bb = backdoorbench()
    none = bb[bb.defense == "none"].set_index("attack").loc[list(ANP_ATTACKS)]
    anp = bb[bb.defense == "anp"].set_index("attack").loc[list(ANP_ATTACKS)]
    change = (anp[["acc", "asr", "ra"]] - none[["acc", "asr", "ra"]]).mean()
    return pd.DataFrame(
        [{"models": 12, "ASR reduction": PAPER["mean ASR reduction (pp)"],
          "RA gain": PAPER["mean RA gain (pp)"], "ACC change": float("nan")},
         {"models": len(ANP_ATTACKS), "ASR reduction": -change["asr"], "RA gain": change["ra"],
          "ACC change": change["acc"]}], index=[PAPER_ROW, ANP_ROW])


def headline(table: pd.DataFrame, scale: str) -> pd.DataFrame:
    """The front page's table: this book's four-step UPGP and its fullest extension (rows of
    ``summary(...)``) beside ``published()``; indexed by label."""
    ours = table.loc[[FOUR_STEPS, EXTENSION], HEADLINE_COLUMNS].rename(index={
        FOUR_STEPS: f"UPGP, four steps (this book, {scale})",
        EXTENSION: f"UPGP + trigger repair (this book's extension, {scale})"})
    return pd.concat([ours, published()])


def before_after(result: dict[str, Any]) -> pd.DataFrame:
    """ACC / ASR / RA (%) of one UPGP run (``run_upgp(...).result``) with no defense and after,
    indexed by stage."""
    table = pd.DataFrame({"no defense": result["before"], FOUR_STEPS: result["after"]}).T
    return table[["acc", "asr", "ra"]].rename(columns=lambda m: f"{m.upper()} (%)")


def stages(rows: pd.DataFrame, variants: list[str]) -> list[dict[str, Any]]:
    """Records for ``plotting.before_after_bars``: per model, ACC / ASR / RA with no defense
    and after each of ``variants``."""
    out = []
    for (attack, arch), model in rows.groupby(["attack", "arch"], sort=False):
        first = model.iloc[0]
        out.append({"attack": attack, "arch": arch, "stage": "no defense",
                    **{m: first[f"{m.upper()} before"] for m in ("acc", "asr", "ra")}})
        out += [{"attack": attack, "arch": arch, "stage": v,
                 **{m: r[m.upper()] for m in ("acc", "asr", "ra")}}
                for v, r in model.set_index("variant").loc[variants].iterrows()]
    return out
