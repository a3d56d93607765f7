"""The book's figures, drawn with seaborn on ``upgp.style`` (one function per kind of figure).

Each function takes tables or arrays and returns a matplotlib Figure; ``style.save_figure``
stamps the provenance footer and writes it as PDF, SVG and PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .style import BEFORE, CLEAN, PALETTE, POISON, SEQUENTIAL, new_figure

KIND_COLOURS = {"clean": CLEAN, "poisoned": POISON}


def _legend_above(fig: Figure, ax: Axes, title: str | None = None,
                  extra: Sequence[tuple[Any, str]] = ()) -> None:
    """Move ``ax``'s legend above the panels, in one row, where it covers no data, with the
    ``extra`` (handle, label) pairs after its own."""
    legend = ax.get_legend()  # seaborn's legends hold handles that are not in the axes
    handles, labels = ((legend.legend_handles, [t.get_text() for t in legend.get_texts()])
                       if legend is not None else ax.get_legend_handles_labels())
    handles, labels = [*handles, *(h for h, _ in extra)], [*labels, *(t for _, t in extra)]
    for a in fig.axes:
        if a.get_legend() is not None:
            a.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4),
                   title=title, frameon=False)


def score_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], xlabel: str,
                     log: bool = True) -> Figure:
    """One panel per (title, clean scores, poisoned scores): the two densities overlaid
    (log10 of the score when ``log``), on bins shared within a panel."""
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = new_figure(cols, rows, width=min(1.0, 0.26 * cols), height=1.9)
    for ax, (title, clean, poison) in zip(axes.flat, panels):
        table = pd.concat([pd.DataFrame({"score": clean, "kind": "clean"}),
                           pd.DataFrame({"score": poison, "kind": "poisoned"})])
        if log:
            table["score"] = np.log10(np.clip(table["score"], 1e-6, None))
        sns.histplot(table, x="score", hue="kind", stat="density", common_norm=False, bins=60,
                     element="step", palette=KIND_COLOURS, ax=ax, legend=ax is axes.flat[0])
        ax.set(title=title, xlabel=f"log10 {xlabel}" if log else xlabel, ylabel="")
    axes.flat[0].set_ylabel("density")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _legend_above(fig, axes.flat[0])
    return fig


def roc_panel(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], title: str) -> Figure:
    """ROC curves: (label, FPR, TPR, AUROC) per method, the AUROC in the legend."""
    fig, axes = new_figure(width=0.5, height=3.2)
    ax = axes[0, 0]
    for label, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, label=f"{label} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", frameon=False)
    return fig


def before_after_bars(records: Sequence[dict[str, Any]], x: str = "model",
                      row: str | None = None) -> Figure:
    """Horizontal bars of ACC / ASR / RA (%) per ``x`` value (one panel per metric, one row of
    panels per ``row`` value), one bar per ``stage``, the names level and readable;
    ``records``: {x, [row], "stage", "acc", "asr", "ra"}."""
    table = pd.DataFrame(records).melt(id_vars=[c for c in (x, row, "stage") if c],
                                       value_vars=["acc", "asr", "ra"], var_name="metric")
    row_values = table[row].unique() if row else [None]
    stages = list(dict.fromkeys(table["stage"]))
    palette = dict(zip(stages, [BEFORE, CLEAN, PALETTE[1], PALETTE[2], PALETTE[4]]))
    height = max(1.4, 0.4 + 0.1 * len(stages) * table[x].nunique())  # inches per row of panels
    fig, axes = new_figure(3, len(row_values), height=height, sharey=True, sharex=True)
    for i, r in enumerate(row_values):
        for j, metric in enumerate(("acc", "asr", "ra")):
            ax = axes[i, j]
            part = table[table["metric"] == metric]
            part = part[part[row] == r] if row else part
            sns.barplot(part, y=x, x="value", hue="stage", palette=palette, ax=ax, width=0.8,
                        hue_order=stages, orient="h")
            ax.set(ylabel=(r or "") if j == 0 else "", xlim=(0, 100),
                   xlabel="%" if i == len(row_values) - 1 else "",
                   title=metric.upper() if i == 0 else "")
    _legend_above(fig, axes[0, 0])
    return fig


def defense_grid(table: Any, metrics: Sequence[str] = ("acc", "asr", "ra", "der"),
                 index: str = "defense", columns: str = "attack") -> Figure:
    """Annotated heatmaps of ``index`` x ``columns`` (defense x attack) for each metric, all on
    0-100 (ASR's colours reversed: dark is good everywhere), from a tidy table."""
    height = max(2.2, 0.2 * table[index].nunique() + 1.2)  # rows stay legible
    fig, axes = new_figure(len(metrics), width=min(1.0, 0.3 * len(metrics) + 0.15),
                           height=height, sharey=True)
    for ax, m in zip(axes.flat, metrics):
        grid = table.pivot_table(index=index, columns=columns, values=m, sort=False)
        sns.heatmap(grid, ax=ax, cmap=SEQUENTIAL if m == "asr" else f"{SEQUENTIAL}_r", vmin=0,
                    vmax=100, annot=True, fmt=".0f", annot_kws={"fontsize": 6}, cbar=False,
                    linewidths=0.5, linecolor="white")
        ax.set(title=m.upper() + (" (%)" if m != "der" else ""), xlabel="",
               ylabel=index if ax is axes.flat[0] else "")
        ax.tick_params(length=0)
        ax.tick_params(axis="x", labelrotation=90)
    return fig


def metric_curves(curves: Sequence[tuple[str, Sequence[float], dict[str, Sequence[float]]]],
                  xlabel: str, marks: Sequence[tuple[str, float]] = (), logx: bool = False,
                  metrics: Sequence[str] = ("acc", "asr", "ra")) -> Figure:
    """One panel per metric, one line per (label, x values, {metric: y values}); ``marks`` are
    vertical lines (e.g. where a stopping rule ends the loop), at most three, each named in the
    legend."""
    table = pd.DataFrame([{"label": label, "x": xv, "metric": m, "value": list(ys[m])[i]}
                          for label, xs, ys in curves for i, xv in enumerate(xs) for m in metrics],
                         columns=["label", "x", "metric", "value"])
    fig, axes = new_figure(len(metrics), height=2.3, sharex=True)
    styles, lines = ("--", ":", "-."), {}  # a label written on its line would sit on the data
    if len(marks) > len(styles):
        raise ValueError(f"{len(marks)} marks: at most {len(styles)} (one line style each)")
    for ax, m in zip(axes.flat, metrics):
        sns.lineplot(table[table["metric"] == m], x="x", y="value", hue="label", marker="o",
                     markersize=4, ax=ax, legend=len(curves) > 1)
        for (label, at), ls in zip(marks, styles):
            lines[label] = ax.axvline(at, color="0.4", lw=0.9, ls=ls)
        if logx:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="", title=m.upper() + " (%)")
    _legend_above(fig, axes[0, 0], extra=[(line, label) for label, line in lines.items()])
    return fig


def line_panel(table: pd.DataFrame, x: str, y: str, title: str) -> Figure:
    """One line with markers: ``y`` against ``x`` (e.g. detection AUROC against the strength
    of the perturbation)."""
    fig, axes = new_figure(width=0.5, height=2.6)
    sns.lineplot(table, x=x, y=y, marker="o", ax=axes[0, 0])
    axes[0, 0].set(title=title)
    return fig


def learning_dynamics_panels(cosine: np.ndarray, predicted: dict[str, np.ndarray],
                             measured: dict[str, np.ndarray], poisoned: np.ndarray) -> Figure:
    """Left: the cosine between the reserve gradient g_N and each sample's gradient g_i, clean vs
    poisoned. Then, per perturbation, the first-order prediction <g_i, dtheta> against the
    measured loss change (the diagonal: prediction exact), with Pearson's r in the title."""
    kind = np.where(poisoned, "poisoned", "clean")
    fig, axes = new_figure(1 + len(predicted), height=2.6)
    sns.histplot(pd.DataFrame({"cosine": cosine, "kind": kind}), x="cosine", hue="kind",
                 stat="density", common_norm=False, bins=50, element="step",
                 palette=KIND_COLOURS, ax=axes[0, 0])
    axes[0, 0].set(xlabel=r"cos($g_N$, $g_i$)")
    for ax, name in zip(axes.flat[1:], predicted):
        pred, meas = predicted[name], measured[name]
        sns.scatterplot(x=pred, y=meas, hue=kind, palette=KIND_COLOURS, s=5, alpha=0.6, lw=0,
                        ax=ax, legend=False)
        lim = [min(pred.min(), meas.min()), max(pred.max(), meas.max())]
        ax.plot(lim, lim, color="0.6", lw=0.8, ls="--")
        r = float(np.corrcoef(pred, meas)[0, 1])
        ax.set(title=f"{name} perturbation (r = {r:.2f})",
               xlabel=r"predicted $\langle g_i, \Delta\theta \rangle$",
               ylabel="measured loss change")
    _legend_above(fig, axes[0, 0])
    return fig


def curve_grid(table: Any, x: str, y: str, rows: str, cols: str, hue: str) -> Figure:
    """One panel per (``rows``, ``cols``) value pair of a tidy table, one line per ``hue`` value:
    ``y`` (in %) against ``x`` (e.g. ASR along the re-emergence probe, per probe and attack).
    Each ``hue`` value has its own dashes and marker too, so that lines which coincide stay
    visible; the ``x`` ticks are the ``x`` values measured."""
    row_values, col_values = table[rows].unique(), table[cols].unique()
    order = list(table[hue].unique())
    fig, axes = new_figure(len(col_values), len(row_values), height=1.8, sharex=True,
                           sharey=True)
    for i, r in enumerate(row_values):
        for j, c in enumerate(col_values):
            ax = axes[i, j]
            cell = table[(table[rows] == r) & (table[cols] == c)]
            sns.lineplot(cell, x=x, y=y, hue=hue, hue_order=order, style=hue, style_order=order,
                         dashes=True, markers=True, markersize=4, ax=ax)
            ax.set(ylim=(-3, 103), xticks=sorted(table[x].unique()), title=f"{c}, {rows} {r}",
                   xlabel=x if i == len(row_values) - 1 else "",
                   ylabel=y.upper() + " (%)" if j == 0 else "")
    _legend_above(fig, axes[0, 0])
    return fig


def regime_panels(table: Any, hue: str = "config") -> Figure:
    """The regime grid against its bars, one marker per row and ``hue`` value: ASR after vs the
    ACC drop (the box: ASR <= 5, drop <= 2) and RA after vs the clean model's RA (the line:
    RA = clean RA - 5). ``table``: ``upgp.regimes`` rows where the attack took hold."""
    fig, axes = new_figure(2, height=3.0)
    box, ra = axes.flat
    shown = table.assign(**{"ACC drop": table["ACC before"] - table["ACC after"]})
    low = min(60.0, float(shown["clean-model RA"].min()) - 5)
    ra.plot([low, 100], [low - 5, 95], color="0.5", lw=0.8, ls="--")
    # two configs: the earlier one orange, the current one blue
    palette = [PALETTE[1], PALETTE[0], *PALETTE[2:]][:shown[hue].nunique()]
    style = dict(hue=hue, style=hue, s=28, alpha=0.85, palette=palette)
    sns.scatterplot(shown, x="ASR after", y="ACC drop", ax=box, **style)
    sns.scatterplot(shown, x="clean-model RA", y="RA after", ax=ra, legend=False, **style)
    box.set_xscale("symlog", linthresh=1)  # linear to 1%, logarithmic above
    box.set_xlim(-0.1, 100)
    box.set_xticks([0, 1, 5, 20, 100], ["0", "1", "5", "20", "100"])
    bottom, top = box.get_ylim()
    box.set_ylim(min(bottom, -0.5), max(top, 2.5))
    box.fill_between([-0.1, 5], min(bottom, -0.5), 2, color="0.9", zorder=0, lw=0)
    box.set(xlabel="ASR after UPGP (%)", ylabel="ACC drop (points)",
            title="backdoor removed, accuracy kept (shaded)")
    ra.set(xlabel="RA of a backdoor-free model (%)", ylabel="RA after UPGP (%)",
           title="robust accuracy restored (above the line)")
    _legend_above(fig, box)
    return fig

