"""The book's one figure style, and ``save_figure`` with stable names in PDF, SVG and PNG.

Every figure is drawn on ``new_figure`` (seaborn's paper theme, a colour-blind-safe palette,
constrained layout, sized for the book's text column) and saved by ``save_figure``, which puts
a footer under it naming the preset, seed, width, data copy (name and fingerprint) and commit of
its run, so a figure cited out of context still says where it came from. Figures go to
``$UPGP_FIGURES`` (set by ``upgp reproduce``/``upgp run``), else ``book/figures``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
TEXT_WIDTH = 7.0  # inches: the book's text column at the figures' 110 dpi (about 770 px)
PALETTE = sns.color_palette("colorblind")  # Okabe-Ito-like: safe for colour-blind readers
CLEAN, POISON = PALETTE[0], PALETTE[3]  # blue, vermillion
BEFORE = PALETTE[7]  # grey: the undefended model
SEQUENTIAL = "cividis"  # heatmaps: perceptually uniform and readable without red-green contrast
RC = {"figure.dpi": 110, "savefig.dpi": 200, "font.size": 8, "axes.titlesize": 8,
      "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7,
      "legend.title_fontsize": 7, "axes.grid": True, "grid.alpha": 0.3,
      "svg.hashsalt": "upgp", "pdf.fonttype": 42}


def use_style() -> None:
    """Seaborn's paper theme with the book's palette and font sizes."""
    sns.set_theme(context="paper", style="ticks", palette=PALETTE, rc=RC)
    _show_figures_in_notebooks()


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 1.0, height: float = 2.4,
               **kwargs: Any) -> tuple[Figure, Any]:
    """A figure ``width`` text columns wide and ``height`` inches per row of panels, in the
    book's style and constrained layout (legends placed 'outside ...' get room of their own)."""
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width * TEXT_WIDTH, height * nrows),
                        layout="constrained", squeeze=False, **kwargs)


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


def save_figure(fig: Figure, name: str, run: dict[str, Any]) -> list[str]:
    """Put the provenance footer under ``fig`` and save ``name``.{pdf,svg,png}; returns the
    file names (the folder is ``figure_dir()``)."""
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    # below the figure's box: the tight bounding box takes it in, and it cannot cover a label
    fig.text(0.0, -0.01, provenance(run), fontsize=5.5, color="0.35", ha="left", va="top")
    names = []
    for ext in ("pdf", "svg", "png"):
        fig.savefig(figure_dir() / f"{name}.{ext}", bbox_inches="tight", pad_inches=0.05,
                    metadata={"Date": None} if ext in ("svg", "pdf") else None)
        names.append(f"{name}.{ext}")
    return names
