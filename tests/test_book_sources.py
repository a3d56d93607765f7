"""The book's sources, without executing anything: every glued number a page quotes exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GLUE = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")


def _pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"], *(c["file"] for part in toc["parts"] for c in part["chapters"])]


def _glued(notebook: Path) -> set[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return {o["metadata"]["scrapbook"]["name"] for c in cells for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def _quoted(page: Path) -> list[tuple[Path, str]]:
    """(notebook, key) for every ``{glue}`` reference on a page (its markdown cells, if a
    notebook): ``path.ipynb::key`` names another notebook, a bare key the page itself."""
    text = page.read_text()
    if page.suffix == ".ipynb":
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"]
                         if c["cell_type"] == "markdown")
    out = []
    for ref in GLUE.findall(text):
        path, _, key = ref.rpartition("::")
        out.append(((page.parent / path).resolve() if path else page, key.strip()))
    return out


@pytest.mark.parametrize("name", _pages())
def test_every_glue_key_a_page_quotes_exists(name):
    found = [p for p in ROOT.glob(f"{name}.*") if p.suffix in (".md", ".ipynb")]
    assert found, f"_toc.yml lists {name}, which has no .md or .ipynb page"
    page = found[0]
    missing = [f"{nb.relative_to(ROOT)}::{key}" for nb, key in _quoted(page)
               if not nb.exists() or key not in _glued(nb)]
    assert not missing, f"{page.relative_to(ROOT)} quotes glue keys no executed notebook holds: {missing}"
