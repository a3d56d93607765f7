"""The figures page (``book/figures.md``): every numbered figure of the executed book, in
chapter order, with its caption, chapter, files to download and a line to cite it by.

A chapter numbers a figure with a ``{glue:figure} NAME`` block whose ``:name:`` is its label;
NAME is also the figure's file name (``style.save_figure(fig, NAME, run)``), so the page finds
``book/figures/NAME.{png,svg,pdf}``; the data behind it is the ``{download}`` link its caption
ends with. The citation names the commit and run the figure's own footer records.
``upgp reproduce`` writes the page after executing the chapters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from .io import atomic_write
from .reproduce import ROOT

BOOK_TITLE = "UPGP-book: backdoor defense by unlearning perturbation and gradient projection"
FIGURE_BLOCK = re.compile(r"```\{glue:figure\}\s+(?P<name>\S+)\n(?P<options>(?::[^\n]*\n)*)"
                          r"\n?(?P<caption>.*?)```", re.S)
FOOTER = re.compile(r"<!-- (preset [^>]*?· commit (?P<commit>\S+)) -->")


@dataclass(frozen=True)
class Figure:
    name: str  # file name without extension, and the glue key
    label: str  # the MyST label {numref} points to
    caption: str
    chapter: str  # the TOC's file of the chapter, e.g. book/notebooks/04_main_results
    provenance: str  # the figure's footer: preset, seed, width, data copy, commit
    commit: str


def chapters(root: Path = ROOT) -> list[str]:
    """The TOC's files, in reading order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [toc["root"], *(c["file"] for part in toc.get("parts", []) for c in part["chapters"])]


def figures(root: Path = ROOT) -> list[Figure]:
    """Every labelled glued figure of the executed chapters whose files exist, in order."""
    out = []
    for chapter in chapters(root):
        notebook = root / f"{chapter}.ipynb"
        if not notebook.exists():
            continue
        for cell in nbformat.read(notebook, as_version=4).cells:
            if cell.cell_type != "markdown":
                continue
            for block in FIGURE_BLOCK.finditer(cell.source):
                label = re.search(r":name:\s*(\S+)", block["options"])
                svg = root / "book" / "figures" / f"{block['name']}.svg"
                footer = FOOTER.search(svg.read_text()) if svg.exists() else None
                if label and footer:
                    out.append(Figure(block["name"], label[1], block["caption"].strip(),
                                      chapter, footer[1], footer["commit"]))
    return out


# a {glue} / {glue:text} reference to a key of the page's own notebook (no "path::" before it);
# it becomes {glue}`path::key` ({glue:text} reads "a:b" as key and format, so cannot take a path)
OWN_GLUE = re.compile(r"\{glue(?::\w+)?\}`(?![^`]*::)")


def _from_book_dir(caption: str, chapter: str) -> str:
    """A chapter's caption rewritten for a page in ``book/``: relative paths (``{download}``
    links) from there, and glued numbers named with the notebook that glues them."""
    caption = OWN_GLUE.sub(f"{{glue}}`{Path(chapter).relative_to('book').as_posix()}.ipynb::",
                           caption)
    depth = len(Path(chapter).parent.relative_to("book").parts)
    return caption.replace("../" * (depth + 1), "../") if depth else caption


def page(entries: list[Figure]) -> str:
    """The figures page in MyST Markdown."""
    lines = ["# Figures", "",
             "Every numbered figure of the book, in reading order, with the chapter it belongs "
             "to, its files and the data behind it, and a line to cite it by. Each figure's "
             "footer names the run that drew it: preset, seed, model width, the data copy by "
             "name and fingerprint, and the commit.", "",
             f"Figures so far: {len(entries)}. A chapter's figures appear here once it has "
             "been executed with its figures labelled and saved under their glue names.", ""]
    for fig in entries:
        files = " · ".join(f"{{download}}`{ext.upper()} <figures/{fig.name}.{ext}>`"
                           for ext in ("png", "svg", "pdf"))
        lines += [f"## {fig.name.replace('_', ' ')}", "",
                  f"![{fig.name}](figures/{fig.name}.png)", "",
                  f"**{{numref}}`{fig.label}`.** {_from_book_dir(fig.caption, fig.chapter)}", "",
                  f"Chapter: {{doc}}`{Path(fig.chapter).relative_to('book').as_posix()}`. "
                  f"Files: {files}.", "",
                  f"Cite as: *{BOOK_TITLE}*, {{numref}}`{fig.label}` (`{fig.name}`), "
                  f"commit {fig.commit}; {fig.provenance.split(' · commit')[0]}.", ""]
    return "\n".join(lines)


def write_page(root: Path = ROOT) -> Path:
    path = root / "book" / "figures.md"
    text = page(figures(root))
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
