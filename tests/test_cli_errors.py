"""Bad input: one line on stderr, exit status 2, and no work done before the check (most probes
would otherwise train a model first). The cases of the issue run ``python -m upgp`` in a
subprocess; their kin call ``upgp.cli.main`` in this process, which is what the script runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upgp.cli import main
from upgp.io import CacheFormatError, cache_dir, load_tensors, save_tensors


def upgp(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upgp", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def upgp_here(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``main(argv)`` in this process, returned like ``upgp``'s subprocess."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "\n" not in err and err.startswith("upgp: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def image_folder(root: Path, sizes: dict[str, int] | None = None, empty: str = "") -> Path:
    """``root/{train,test}/{a,b}/*.png``: two 8x8 images per class; ``sizes`` gives one class
    other-sized images, ``empty`` names a class folder left without images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            if name == empty:
                continue
            side = (sizes or {}).get(name, 8)
            for i in range(2):
                pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_python_dash_m_is_the_cli():
    proc = upgp("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: upgp")


def test_truncated_archive(tmp_path):
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder(tmp_path / "copy"), arcname="copy")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    proc = upgp("train", "--data", str(archive), "--quiet")
    assert_one_line_error(proc, f"archive {archive}", "truncated or corrupt", "copy it again")


@pytest.mark.parametrize("layout, fragments", [
    ("no classes", ["no class folders under", "one folder per class"]),
    ("empty class", ["class folder", "holds no images"]),
    ("other size", ["is 12x12 pixels, the others 8x8", "resize it or remove it"]),
])
def test_bad_image_folders(tmp_path, capsys, layout, fragments):
    root = tmp_path / "copy"
    if layout == "no classes":
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
    else:
        image_folder(root, **({"empty": "b"} if layout == "empty class" else {"sizes": {"b": 12}}))
    assert_one_line_error(upgp_here(capsys, "train", "--data", str(root), "--quiet"), *fragments)


def test_cache_file_of_another_format(tmp_path, capsys):
    from upgp.data import load_image_folder

    cache = tmp_path / "cache"
    os.environ["UPGP_CACHE"] = str(cache)  # the autouse fixture restores it
    load_image_folder(image_folder(tmp_path / "copy"))
    (data_file,) = (cache_dir() / "data").glob("imagefolder-*.pt")
    written = torch.load(data_file, weights_only=True)
    torch.save({**written, "cache_format": 99}, data_file)
    with pytest.raises(CacheFormatError):
        load_tensors(data_file)
    proc = upgp_here(capsys, "train", "--data", str(tmp_path / "copy"), "--quiet")
    assert_one_line_error(proc, f"cache file {data_file}", "format 99", "delete the file")
    assert data_file.exists()  # another version's file is left in place


def test_cache_format_round_trip(tmp_path):
    save_tensors(tmp_path / "x.pt", {"a": torch.ones(2)})
    assert set(load_tensors(tmp_path / "x.pt")) == {"a"}


@pytest.mark.parametrize("argv, fragments", [
    (["defend", "--set", "removal_lr=abc"],
     ["UPGPConfig removal_lr='abc' is a string; removal_lr takes a number"]),
    (["train", "--out", "/dev/null/r.json"], ["--out /dev/null/r.json cannot be written"]),
])
def test_issue_cases_in_a_subprocess(argv, fragments):
    assert_one_line_error(upgp(*argv, "--preset", "smoke", "--quiet"), *fragments)


@pytest.mark.parametrize("argv, fragments", [
    (["defend", "--set", "removal_max_steps=2.5"], ["removal_max_steps takes an integer"]),
    (["defend", "--defense", "anp", "--set", "iterations=many"], ["iterations takes an integer"]),
    (["train", "--attack-param", "patch_size=big"],
     ["attack 'badnets' parameter patch_size='big' is a string; patch_size takes an integer"]),
    (["defend", "--out", "/dev/null/d.json"], ["--out /dev/null/d.json cannot be written"]),
    (["train", "--target", "12"], ["target label 12 is outside 0..9"]),
    (["defend", "--repair", "60", "--rounds", "0"], ["need removal_rounds >= 1"]),
    (["sweep", "--defenses", "ft", "nope", "--out", "/dev/null/s.csv"], ["cannot be written"]),
])
def test_bad_values_fail_before_work(capsys, argv, fragments):
    assert_one_line_error(upgp_here(capsys, *argv, "--preset", "smoke", "--quiet"), *fragments)


def test_sweep_checks_every_name_first(tmp_path, capsys):
    out = tmp_path / "s.csv"
    proc = upgp_here(capsys, "sweep", "--defenses", "ft", "nope", "--preset", "smoke", "--quiet",
                     "--out", str(out))
    assert_one_line_error(proc, "unknown defense 'nope'")
    assert not out.exists()  # nothing ran
    proc = upgp_here(capsys, "sweep", "--defenses", "ft", "--archs", "preact_resnet18", "vgg",
                     "--preset", "smoke", "--quiet", "--out", str(out))
    assert_one_line_error(proc, "unknown model 'vgg'")


def test_run_refuses_an_unknown_parameter_in_a_subprocess():
    assert_one_line_error(upgp("run", "00_quickstart", "-p", "nope", "3"),
                          "notebook 00_quickstart has no parameter nope; "
                          "its parameters: preset, seed, data, attack, arch")


@pytest.mark.parametrize("argv, fragments", [
    (["run", "00_quickstart", "-p", "seed", "zero"], ["seed='zero' is a string; seed takes an integer"]),
    (["run", "00_quickstart", "-p", "preset", "gpu"], ["unknown preset 'gpu'"]),
    (["run", "00_quickstart", "--output", "/dev/null/run"], ["--output /dev/null/run cannot be written"]),
    (["run", "99_nothing"], ["unknown notebook '99_nothing'"]),
    (["reproduce", "--preset", "gpu"], ["unknown preset 'gpu'"]),
    (["run", "12_regimes", "-p", "preset", "smoke", "-p", "regimes", "nope"],  # in the kernel
     ["notebook 12_regimes stopped in cell", "ValueError: unknown regime 'nope'"]),
])
def test_bad_notebook_runs(capsys, argv, fragments):
    assert_one_line_error(upgp_here(capsys, *argv), *fragments)


def test_string_parameters_take_the_text_as_written():
    from upgp.reproduce import parse_parameters

    assert parse_parameters("08", [("seeds", "0"), ("attacks", "blended")]) == {
        "seeds": "0", "attacks": "blended"}
    assert parse_parameters("09", [("poisons", "50")]) == {"poisons": 50}


def test_the_smoke_grid_names_real_parameters_of_real_notebooks():
    from upgp.reproduce import SMOKE_GRID, check_parameters, notebook_parameters, notebooks

    found = notebooks()
    for name in SMOKE_GRID:
        check_parameters(found[name], notebook_parameters(name, "smoke"))
    assert notebook_parameters("04_main_results", "cpu") == {"preset": "cpu"}
    assert notebook_parameters("04_main_results", "smoke", {"attacks": "sig"})["attacks"] == "sig"


def test_a_data_copy_is_named_without_its_local_path(tmp_path):
    from upgp.data import load_image_folder

    root = image_folder(tmp_path / "copy")
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="copy")
    assert load_image_folder(root).source == "ImageFolder copy"
    assert load_image_folder(archive).source == "ImageFolder copy.tar.gz"
