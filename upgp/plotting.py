"""One plotting style for the book, and ``save_figure`` with stable names in PDF, SVG and PNG.

Every saved figure carries a footer naming the preset, seed, commit and data copy of its run, so
a figure cited out of context still says where it came from. Figures go to ``$UPGP_FIGURES``
(set by ``upgp reproduce``/``upgp run``), else ``book/figures`` in the checkout.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
CLEAN, POISON = "#4C72B0", "#DD5555"
STYLE = {
    "figure.dpi": 110, "savefig.dpi": 200, "font.size": 9, "axes.titlesize": 9,
    "axes.labelsize": 9, "legend.fontsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "svg.hashsalt": "upgp",
    "pdf.fonttype": 42,
}


def use_style() -> None:
    plt.rcParams.update(STYLE)
    _show_figures_in_notebooks()


def _show_figures_in_notebooks() -> None:
    """Under the Agg backend an IPython kernel renders a figure as text only; register a PNG
    formatter so ``display(fig)`` and myst-nb's ``glue(name, fig)`` store the image."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"}, bbox_inches="tight")


# what determines a result; executed notebooks, figures and tables written by a run are not
CODE_PATHS = ("upgp", "notebooks", "pyproject.toml", "environment.yml")


def commit() -> str:
    """Short git commit of the checkout, with ``+dirty`` if its code (``CODE_PATHS``) differs
    from that commit. Outputs a run writes (book/, results/) do not count. Without git (a copy
    of the tree on another machine): ``$UPGP_COMMIT`` if set, else 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *CODE_PATHS], cwd=_ROOT, text=True,
                               capture_output=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("UPGP_COMMIT", "unknown")


def provenance(run: dict[str, Any]) -> str:
    """'preset cpu (CPU-scale ...) · seed 0 · width 16 · <data copy> <fingerprint> · commit abc123'
    (the fingerprint where the run records one)."""
    data = " ".join(filter(None, (run["data"], run.get("data_fingerprint"))))
    return (f"preset {run['preset']} ({run['scale']}) · seed {run['seed']} · width {run['width']}"
            f" · {data} · commit {commit()}")


def figure_dir() -> Path:
    path = Path(os.environ.get("UPGP_FIGURES", _ROOT / "book" / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Figure, name: str, run: dict[str, Any]) -> list[Path]:
    """Stamp the provenance footer on ``fig`` and save ``name``.{pdf,svg,png}."""
    fig.text(0.01, 0.005, provenance(run), fontsize=6, color="0.4", ha="left", va="bottom",
             wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    paths = []
    for ext in ("pdf", "svg", "png"):
        path = figure_dir() / f"{name}.{ext}"
        fig.savefig(path, metadata={"Date": None} if ext in ("svg", "pdf") else None)
        paths.append(path)
    return paths


def score_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], xlabel: str,
                     log: bool = True) -> Figure:
    """One panel per (title, clean scores, poisoned scores): overlaid density histograms."""
    use_style()
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows + 0.3), squeeze=False)
    for ax, (title, clean, poison) in zip(axes.flat, panels):
        values = np.concatenate([clean, poison])
        if log:
            values = np.log10(np.clip(values, 1e-6, None))
            clean, poison = (np.log10(np.clip(v, 1e-6, None)) for v in (clean, poison))
        bins = np.linspace(values.min(), values.max(), 60)
        ax.hist(clean, bins, density=True, alpha=0.6, color=CLEAN, label="clean")
        ax.hist(poison, bins, density=True, alpha=0.6, color=POISON, label="poisoned")
        ax.set_title(title)
        ax.set_xlabel(f"log10 {xlabel}" if log else xlabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend()
    return fig


def roc_panel(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], title: str) -> Figure:
    """ROC curves: (label, FPR, TPR, AUROC) per method."""
    use_style()
    fig, ax = plt.subplots(figsize=(3.4, 3.2))
    for label, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, label=f"{label} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def before_after_bars(rows: Sequence[tuple[str, dict[str, float], dict[str, float]]]) -> Figure:
    """Grouped bars of ACC/ASR/RA before and after a defense, one group per row label."""
    use_style()
    metrics = ("acc", "asr", "ra")
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.6), sharey=True)
    x = np.arange(len(rows))
    for ax, m in zip(axes, metrics):
        ax.bar(x - 0.2, [r[1][m] for r in rows], 0.4, label="no defense", color="0.6")
        ax.bar(x + 0.2, [r[2][m] for r in rows], 0.4, label="after", color=CLEAN)
        ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right")
        ax.set_title(m.upper() + " (%)")
    axes[0].legend()
    return fig


def defense_grid(table: Any, metrics: Sequence[str] = ("acc", "asr", "ra", "der"),
                 index: str = "defense", columns: str = "attack") -> Figure:
    """Heatmaps of ``index`` x ``columns`` (defense x attack) for each metric, in % except DER
    (a tidy table with those columns)."""
    use_style()
    height = max(3.0, 0.22 * table[index].nunique() + 1.6)  # rows stay legible
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.5 * len(metrics) + 0.5, height),
                             sharey=True)
    for ax, m in zip(np.atleast_1d(axes), metrics):
        grid = table.pivot_table(index=index, columns=columns, values=m, sort=False)
        ax.imshow(grid.values, cmap="RdYlGn_r" if m == "asr" else "RdYlGn", vmin=0, vmax=100,
                  aspect="auto")
        for (i, j), v in np.ndenumerate(grid.values):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_title(m.upper() + (" (%)" if m != "der" else ""))
        ax.grid(False)
    return fig


def metric_curves(curves: Sequence[tuple[str, Sequence[float], dict[str, Sequence[float]]]],
                  xlabel: str, marks: Sequence[tuple[str, float]] = (), logx: bool = False,
                  metrics: Sequence[str] = ("acc", "asr", "ra")) -> Figure:
    """One panel per metric, one line per (label, x values, {metric: y values}); ``marks`` are
    labelled vertical lines (e.g. where a stopping rule ends the loop)."""
    use_style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.7 * len(metrics), 2.5), sharex=True)
    for ax, m in zip(np.atleast_1d(axes), metrics):
        for label, x, ys in curves:
            ax.plot(x, ys[m], marker="o", ms=2.5, label=label)
        for label, at in marks:
            ax.axvline(at, color="0.5", lw=0.8, ls="--")
            ax.annotate(label, (at, 0.98), xycoords=("data", "axes fraction"), fontsize=6,
                        color="0.4", ha="left", va="top", rotation=90)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(m.upper() + " (%)")
    if len(curves) > 1:
        np.atleast_1d(axes)[0].legend()
    return fig


def curve_grid(table: Any, x: str, y: str, rows: str, cols: str, hue: str) -> Figure:
    """One panel per (``rows``, ``cols``) value pair of a tidy table, one line per ``hue`` value:
    ``y`` (in %) against ``x`` (e.g. ASR along the re-emergence probe, per probe and attack)."""
    use_style()
    row_values, col_values = table[rows].unique(), table[cols].unique()
    fig, axes = plt.subplots(len(row_values), len(col_values), squeeze=False, sharex=True,
                             sharey=True, figsize=(2.3 * len(col_values) + 0.6,
                                                   2.1 * len(row_values) + 0.4))
    for (i, r), (j, c) in itertools.product(enumerate(row_values), enumerate(col_values)):
        ax = axes[i, j]
        cell = table[(table[rows] == r) & (table[cols] == c)]
        for label, line in cell.groupby(hue, sort=False):
            ax.plot(line[x], line[y], marker="o", ms=2.5, label=label)
        ax.set_ylim(-3, 103)
        ax.set_title(f"{c}, {r}", fontsize=8)
        if i == len(row_values) - 1:
            ax.set_xlabel(x)
        if j == 0:
            ax.set_ylabel(y.upper() + " (%)")
    axes[0, 0].legend(fontsize=6)
    return fig


CONFIG_COLOURS = ("#E69F00", "#0072B2")  # Okabe-Ito orange and blue: safe for colour-blind readers


def regime_panels(table: Any, hue: str = "config") -> Figure:
    """The regime grid against its bars, one marker per row and ``hue`` value: ASR after vs the
    ACC drop (the box: ASR <= 5, drop <= 2) and RA after vs the clean model's RA (the line:
    RA = clean RA - 5). ``table``: ``upgp.regimes`` rows where the attack took hold."""
    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0))
    box, ra = axes
    low = min(60.0, float(table["clean-model RA"].min()) - 5)
    ra.plot([low, 100], [low - 5, 95], color="0.5", lw=0.8, ls="--")
    markers = itertools.cycle("os^D")
    for (name, part), colour in zip(table.groupby(hue, sort=False), itertools.cycle(CONFIG_COLOURS)):
        style = dict(color=colour, marker=next(markers), s=18, alpha=0.8, label=name, lw=0)
        box.scatter(part["ASR after"], part["ACC before"] - part["ACC after"], **style)
        ra.scatter(part["clean-model RA"], part["RA after"], **style)
    box.set_xscale("symlog", linthresh=1)  # linear to 1%, logarithmic above
    box.set_xlim(-0.1, 100)
    box.set_xticks([0, 1, 5, 20, 100], ["0", "1", "5", "20", "100"])
    bottom, top = box.get_ylim()
    box.set_ylim(min(bottom, -0.5), max(top, 2.5))
    box.fill_between([-0.1, 5], min(bottom, -0.5), 2, color="0.92", zorder=0, lw=0)
    box.set_xlabel("ASR after UPGP (%)")
    box.set_ylabel("ACC drop (points)")
    box.set_title("backdoor removed, accuracy kept (shaded)")
    ra.set_xlabel("RA of a backdoor-free model (%)")
    ra.set_ylabel("RA after UPGP (%)")
    ra.set_title("robust accuracy restored (above the line)")
    ra.legend(loc="upper left", frameon=False)
    return fig
