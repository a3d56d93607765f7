"""The book's sources, without executing anything: every glued number a page quotes exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GLUE = re.compile(r"\{glue(?::(\w+))?\}`([^`]+)`")


def _pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"], *(c["file"] for part in toc["parts"] for c in part["chapters"])]


def _glued(notebook: Path) -> set[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return {o["metadata"]["scrapbook"]["name"] for c in cells for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def _quoted(page: Path) -> list[tuple[Path, str]]:
    """(notebook, key) for every ``{glue}`` reference on a page (its markdown cells, if a
    notebook): ``path.ipynb::key`` names another notebook, a bare key the page itself. The text
    role reads ``ref:format`` as MyST-NB does, the format after the last colon, so a key from
    another notebook needs one (``path.ipynb::key:s``)."""
    text = page.read_text()
    if page.suffix == ".ipynb":
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"]
                         if c["cell_type"] == "markdown")
    out = []
    for role, ref in GLUE.findall(text):
        if role == "text":
            ref = ref.rsplit(":", 1)[0]
        path, _, key = ref.rpartition("::")
        out.append(((page.parent / path).resolve() if path else page, key.strip()))
    return out


@pytest.mark.parametrize("name", _pages())
def test_every_glue_key_a_page_quotes_exists(name):
    found = [p for p in ROOT.glob(f"{name}.*") if p.suffix in (".md", ".ipynb")]
    assert found, f"_toc.yml lists {name}, which has no .md or .ipynb page"
    page = found[0]
    missing = [f"{nb.relative_to(ROOT)}::{key}" for nb, key in _quoted(page)
               if nb.suffix != ".ipynb" or not nb.exists() or key not in _glued(nb)]
    assert not missing, f"{page.relative_to(ROOT)} quotes glue keys no executed notebook holds: {missing}"


def _figure_names(call: str, source: str) -> list[re.Pattern]:
    """The names ``call`` (a regex with one group for the name) gives a figure, as regexes:
    ``save_figure(fig, f"roc_{arch}"`` -> ``roc_.+``."""
    return [re.compile(re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(name)) + "$")
            for name in re.findall(call, source)]


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                         ids=lambda p: p.stem)
def test_every_numbered_figure_is_glued_under_its_file_name(notebook):
    """The figures page finds a figure's files by its glue key: a chapter's ``{glue:figure}``
    blocks have a label, and their key is a name the chapter both saves and glues."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    saved = _figure_names(r'save_figure\(fig, f?"([^"]+)"', code)
    glued = _figure_names(r'glue\(f?"([^"]+)", fig\b', code)
    for key, options in re.findall(r"\{glue:figure\}\s+(\S+)\n((?::[^\n]*\n)*)", prose):
        assert re.search(r":name:\s*fig-\S+", options), f"{key} has no :name: fig-... label"
        assert any(p.match(key) for p in saved), f"{key} is not a file name save_figure writes"
        assert any(p.match(key) for p in glued), f"{key} is not glued under its file name"


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                         ids=lambda p: p.stem)
def test_code_is_collapsed_except_the_parameters(notebook):
    """A chapter reads as a page: its code sits behind a toggle, only the parameters show."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            assert "parameters" in tags or "hide-input" in tags, "".join(cell["source"])[:80]


LOCAL_PATH = re.compile(r"(?<![\w.])/(?:work|home|tmp|root|Users|mnt|var/folders)/\S")


def test_no_committed_output_names_a_local_path():
    """Results and the executed book name the data copy and its fingerprint, never the folder
    a run read it from (nor any other absolute path of the machine it ran on)."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "book", "results"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.split()
    named = {f for f in tracked if Path(f).suffix in (".md", ".ipynb", ".svg", ".csv", ".json",
                                                      ".txt", ".yml")
             and LOCAL_PATH.search((ROOT / f).read_text(errors="replace"))}
    assert not named, f"local paths in {sorted(named)}"


def test_no_executed_table_is_shown_elided():
    """A table in the book shows every column and row it has (pandas elides them with '...'
    past its display limits): the HTML outputs the book renders hold no elided cell."""
    elided = set()
    for path in sorted((ROOT / "book" / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                html = "".join(out.get("data", {}).get("text/html", ""))
                if "<td>...</td>" in html or "<th>...</th>" in html:
                    elided.add(path.stem)
    assert not elided, f"elided tables in {sorted(elided)}"


def test_no_executed_cell_shows_the_repr_of_a_return_value():
    """What a reader sees under a cell is a table, a figure or text printed on purpose: no
    result shown only as a plain-text repr (a list of names, of paths), which a cell shows when
    its last line returns a value by accident. Glued values are hidden and do not count."""
    shown = set()
    for path in sorted((ROOT / "book" / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                if (out.get("output_type") == "execute_result"
                        and set(out.get("data", {})) == {"text/plain"}):
                    shown.add(path.stem)
    assert not shown, f"a cell shows a bare repr in {sorted(shown)}"
