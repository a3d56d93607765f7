"""The figures page (``upgp.gallery``) on a small fake book."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_markdown_cell, new_notebook

from upgp import gallery

CAPTION = ("What the figure shows, AUROC {glue:text}`mean_auroc`.\n"
           "Data: {download}`x.csv <../../results/cpu/x.csv>`.")


def _book(root):
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: A\n"
                                   "    chapters:\n      - file: book/notebooks/01_a\n"
                                   "      - file: book/notebooks/02_b\n")
    (root / "book" / "notebooks").mkdir(parents=True)
    (root / "book" / "figures").mkdir()
    for name, key in (("01_a", "curves"), ("02_b", "missing_file")):
        nb = new_notebook(cells=[new_markdown_cell(
            f"Text.\n\n```{{glue:figure}} {key}\n:name: fig-{key}\n\n{CAPTION}\n```\n")])
        nbformat.write(nb, root / "book" / "notebooks" / f"{name}.ipynb")
    footer = "preset cpu (CPU-scale) · seed 0 · width 16 · cifar10-jpeg.tar.gz eec9 · commit abc1234"
    (root / "book" / "figures" / "curves.svg").write_text(f"<svg><!-- {footer} --></svg>")


def test_figures_page_lists_each_labelled_figure_with_files_data_and_citation(tmp_path):
    _book(tmp_path)
    entries = gallery.figures(tmp_path)
    assert [f.name for f in entries] == ["curves"]  # the other has no saved file
    fig = entries[0]
    assert (fig.label, fig.chapter, fig.commit) == ("fig-curves", "book/notebooks/01_a", "abc1234")
    page = gallery.page(entries)
    assert "{numref}`fig-curves`" in page and "{doc}`notebooks/01_a`" in page
    for ext in ("png", "svg", "pdf"):
        assert f"{{download}}`{ext.upper()} <figures/curves.{ext}>`" in page
    assert "<../results/cpu/x.csv>" in page  # the caption's data link, from book/
    # a number the caption glues is named with its notebook: the page glues nothing itself
    assert "{glue}`notebooks/01_a.ipynb::mean_auroc`" in page
    assert "commit abc1234; preset cpu (CPU-scale) · seed 0" in page
    path = gallery.write_page(tmp_path)
    assert path.read_text() == page
