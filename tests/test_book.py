"""The book end to end (``pytest -m slow``): every notebook executes at the smoke preset, the
committed book builds without warnings, and headless Chromium renders every chapter with its
figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from upgp.outcomes import VARIANTS
from upgp.plan import plan
from upgp.reproduce import ROOT, notebook_parameters, notebooks, reproduce, results_dir, run_one

pytestmark = pytest.mark.slow


def test_every_notebook_has_parameters_ids_and_no_outputs():
    import ast
    import json

    import nbformat
    import papermill

    for name, path in notebooks().items():
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, name
        assert "preset: str" in tagged[0].source, name
        assigned = [node.target.id for node in ast.parse(tagged[0].source).body
                    if isinstance(node, ast.AnnAssign)]
        assert sorted(papermill.inspect_notebook(str(path))) == sorted(assigned), name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        # every cell keeps an id (nbformat 4.5): papermill warns of each missing one
        assert all("id" in c for c in json.loads(path.read_text())["cells"]), name


def test_notebooks_execute_at_smoke_preset(tmp_path, monkeypatch):
    used = tmp_path / "models-used.txt"
    monkeypatch.setenv("UPGP_RECORD_MODELS", str(used))  # the kernels log each model they load
    table = reproduce("smoke")
    assert list(table.status) == ["ok"] * len(notebooks()), table.to_string()
    # upgp plan names exactly the models the chapters used
    planned = plan(list(notebooks()), "smoke")
    assert set(planned["cache file"]) == set(used.read_text().split())
    monkeypatch.delenv("UPGP_RECORD_MODELS")
    # one command reruns a chapter for one attack; from an empty cache it reproduces that row
    monkeypatch.setenv("UPGP_CACHE", str(tmp_path / "fresh-cache"))
    params = notebook_parameters("04_main_results", "smoke",
                                 {"attacks": "blended", "archs": "vgg19_bn", "extra_seeds": ""})
    rerun = run_one("04_main_results", params, tmp_path / "rerun")
    row = pd.read_csv(rerun.parent / "results" / "main_results.csv")
    book = pd.read_csv(results_dir("smoke") / "main_results.csv")
    book = book[(book.attack == "blended") & (book.arch == "vgg19_bn")]
    assert len(row) == len(VARIANTS) and len(book) == len(VARIANTS)  # a row per UPGP variant
    pd.testing.assert_frame_equal(row.reset_index(drop=True), book.reset_index(drop=True))


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run(["jupyter-book", "build", str(ROOT), "--path-output", str(out), "-W",
                           "-n", "--keep-going"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "_build" / "html"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render(url: str, budget_ms: int = 3000) -> str:
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    return proc.stdout


def test_book_builds_and_chapters_render_with_figures(built_book):
    if _chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    index = _render((built_book / "index.html").as_uri())  # redirects to the intro
    assert "UPGP-book" in index
    for chapter in _chapters():
        html = built_book / f"{chapter}.html"
        assert html.exists(), chapter
        dom = _render(html.as_uri())
        assert "<h1" in dom and "bd-article" in dom, chapter
        executed = ROOT / f"{chapter}.ipynb"  # what the page renders
        if executed.exists() and "glue:figure" in executed.read_text():
            figures = re.findall(r'<img[^>]+src="([^"]*_images/[^"]+)"', dom)
            assert figures, f"{chapter} glues a figure but its page shows none"
            for src in figures:
                assert (html.parent / src).exists(), (chapter, src)
