import itertools
import subprocess

import numpy as np
import pandas as pd
from matplotlib.text import Text

from upgp import plotting, style

RUN = {"preset": "smoke", "scale": "smoke test", "seed": 3, "width": 8, "data": "synthetic",
       "data_fingerprint": "0123abcd"}
ATTACKS = ["badnets", "blended", "sig", "wanet", "iad", "lc", "bpp"]
ARCHS = ["preact_resnet18", "vgg19_bn"]
CURVES = [("projection vector", [0, 5, 10, 20], {"acc": [80, 79, 79, 78], "asr": [95, 40, 5, 1],
                                                 "ra": [4, 50, 75, 79]}),
          ("projection none", [0, 5, 10, 20], {"acc": [80, 75, 70, 65], "asr": [95, 30, 2, 0],
                                               "ra": [4, 45, 60, 62]})]


def _figures():
    """Every figure function of ``upgp.plotting``, drawn on small data shaped like a chapter's."""
    rng = np.random.default_rng(0)
    regimes = pd.DataFrame([{"config": c, "ASR after": a, "ACC before": 81.0, "ACC after": 80.5,
                             "clean-model RA": ra, "RA after": ra - 3}
                            for c in ("old default", "new default") for a, ra in
                            ((0.2, 79.0), (3.0, 70.0), (27.0, 49.0))])
    defenses = pd.DataFrame([{"defense": d, "attack": a, "acc": 80.0, "asr": 3.0, "ra": 70.0,
                              "der": 95.0} for d in ("ft", "fp", "nad", "anp", "i-bau", "rnp",
                                                     "abl", "upgp", "upgp + repair")
                             for a in ATTACKS])
    reemergence = pd.DataFrame([{"probe": p, "attack": a, "model": m, "epoch": e, "asr": 10.0 * e}
                                for p in ("clean", "poisons") for a in ATTACKS[:4]
                                for m in ("backdoored", "clean model", "UPGP",
                                          "UPGP + trigger repair", "FT") for e in range(4)])
    dynamics = {"one step": rng.normal(size=200), "full": rng.normal(size=200)}
    return {
        "score_histograms": plotting.score_histograms(
            [(f"{a} / preact_resnet18", rng.lognormal(size=300), rng.lognormal(-2, size=50))
             for a in ATTACKS], "loss"),
        "roc_panel": plotting.roc_panel([("UPGP", np.linspace(0, 1, 20), np.linspace(0, 1, 20) ** 0.2,
                                          0.97), ("loss", np.linspace(0, 1, 20),
                                                  np.linspace(0, 1, 20), 0.5)], "badnets / vgg19_bn"),
        "before_after_bars": plotting.before_after_bars(
            [{"attack": a, "arch": m, "stage": s, "acc": 80.0, "asr": asr, "ra": 70.0}
             for m in ARCHS for a in ATTACKS for s, asr in (("no defense", 95.0), ("UPGP", 2.0),
                                                            ("UPGP + repair", 1.0))],
            x="attack", row="arch"),
        "before_after_bars (one model)": plotting.before_after_bars(
            [{"model": "blended / vgg19_bn", "stage": s, "acc": 90.0, "asr": asr, "ra": 20.0}
             for s, asr in (("no defense", 75.0), ("UPGP", 1.0))]),
        "defense_grid": plotting.defense_grid(defenses),
        "metric_curves": plotting.metric_curves(
            [(label, pd.Series(xs, index=range(10, 10 + len(xs))),  # as a table's slice has
              {m: pd.Series(v, index=range(10, 10 + len(v))) for m, v in ys.items()})
             for label, xs, ys in CURVES], "removal steps", marks=[("default stop", 12)]),
        "line_panel": plotting.line_panel(pd.DataFrame({"reserve accuracy (%)": [90, 70, 50],
                                                        "AUROC": [0.9, 0.95, 0.97]}),
                                          "reserve accuracy (%)", "AUROC", "badnets / vgg19_bn"),
        "learning_dynamics_panels": plotting.learning_dynamics_panels(
            rng.normal(size=200), dynamics, {k: v + 0.1 for k, v in dynamics.items()},
            np.arange(200) < 20),
        "curve_grid": plotting.curve_grid(reemergence, "epoch", "asr", "probe", "attack", "model"),
        "regime_panels": plotting.regime_panels(regimes),
    }


def _label_boxes(fig):
    """Window boxes of every tick label, axis label, title and legend text of ``fig`` (what a
    reader must be able to read; annotations drawn in the data are left out)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts: list[Text] = []
    for ax in (ax for ax in fig.axes if ax.axison):
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn: those inside the view
            low, high = sorted(axis.get_view_interval())
            span = 1e-9 * max(1.0, high - low)
            texts += [label for at, label in zip(axis.get_ticklocs(), axis.get_ticklabels())
                      if low - span <= at <= high + span]
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax._right_title]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for legend in fig.legends:
        texts += [*legend.get_texts(), legend.get_title()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts
            if t.get_visible() and t.get_text().strip()]


def _overlaps(boxes):
    """Pairs of labels whose boxes share more than a pixel each way."""
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0) > 1
            and min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0) > 1]


def test_every_figure_function_is_drawn_without_overlapping_labels():
    figures = _figures()
    functions = {name for name, f in vars(plotting).items() if callable(f)
                 and getattr(f, "__module__", "") == plotting.__name__ and not name.startswith("_")}
    assert {name.split(" ")[0] for name in figures} == functions, "a figure function not drawn"
    for name, fig in figures.items():
        boxes = _label_boxes(fig)
        assert boxes, name
        width, height = fig.get_size_inches() * fig.dpi
        outside = [t for t, b in boxes if b.x0 < -1 or b.x1 > width + 1 or b.y0 < -1
                   or b.y1 > height + 1]
        assert not outside, f"{name}: labels outside the figure (it is too small): {outside[:3]}"
        assert not _overlaps(boxes), f"{name}: labels overlap: {_overlaps(boxes)[:3]}"
        assert fig.get_size_inches()[0] <= style.TEXT_WIDTH + 1e-6, f"{name} is wider than the page"


def test_overlap_check_catches_overlapping_tick_labels():
    fig, axes = style.new_figure(width=0.2)
    axes[0, 0].bar(range(12), range(12))
    axes[0, 0].set_xticks(range(12), [f"a long attack name {i}" for i in range(12)])
    assert _overlaps(_label_boxes(fig))


def test_save_figure_writes_three_formats_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("UPGP_FIGURES", str(tmp_path))
    fig = plotting.metric_curves(CURVES, "x", marks=[("stop", 1.5)])
    names = style.save_figure(fig, "curves", RUN)
    assert sorted(names) == ["curves.pdf", "curves.png", "curves.svg"]
    svg = (tmp_path / "curves.svg").read_text()
    assert "seed 3" in svg and "synthetic 0123abcd" in svg


def test_commit_is_dirty_only_when_code_changed(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "upgp").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "upgp" / "a.py").write_text("x = 1\n")
    (tmp_path / "book" / "page.md").write_text("text\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(style, "_ROOT", tmp_path)
    clean = style.commit()
    assert clean != "unknown" and not clean.endswith("+dirty")
    (tmp_path / "book" / "page.md").write_text("executed output\n")  # what a run writes
    assert style.commit() == clean
    (tmp_path / "upgp" / "a.py").write_text("x = 2\n")
    assert style.commit() == clean + "+dirty"


def test_figures_render_as_png_in_an_ipython_kernel():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()  # what get_ipython() returns inside a kernel
    fig = plotting.metric_curves(CURVES, "x")
    data, _ = shell.display_formatter.format(fig)
    assert "image/png" in data  # else glue() stores only "<Figure ...>" and the book shows none
