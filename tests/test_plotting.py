import subprocess

from upgp import plotting


def test_save_figure_writes_three_formats_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("UPGP_FIGURES", str(tmp_path))
    fig = plotting.metric_curves([("a", [1, 2], {"acc": [1, 2], "asr": [3, 4], "ra": [5, 6]})],
                                 "x", marks=[("stop", 1.5)])
    run = {"preset": "smoke", "scale": "smoke test", "seed": 3, "width": 8, "data": "synthetic"}
    paths = plotting.save_figure(fig, "curves", run)
    assert sorted(p.name for p in paths) == ["curves.pdf", "curves.png", "curves.svg"]
    assert "seed 3" in (tmp_path / "curves.svg").read_text()


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
    monkeypatch.setattr(plotting, "_ROOT", tmp_path)
    clean = plotting.commit()
    assert clean != "unknown" and not clean.endswith("+dirty")
    (tmp_path / "book" / "page.md").write_text("executed output\n")  # what a run writes
    assert plotting.commit() == clean
    (tmp_path / "upgp" / "a.py").write_text("x = 2\n")
    assert plotting.commit() == clean + "+dirty"


def test_figures_render_as_png_in_an_ipython_kernel():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()  # what get_ipython() returns inside a kernel
    fig = plotting.metric_curves([("a", [1, 2], {"acc": [1, 2], "asr": [3, 4], "ra": [5, 6]})],
                                 "x")
    data, _ = shell.display_formatter.format(fig)
    assert "image/png" in data  # else glue() stores only "<Figure ...>" and the book shows none
