"""``upgp plan``: the models a chapter needs, which are cached, and the training time left.
(That the chapters use exactly the planned models is checked where they run: tests/test_book.py.)"""

from __future__ import annotations

import json
import math

import pytest

from upgp.cli import main
from upgp.plan import REFERENCE, ModelNeed, needs, plan, training_images
from upgp.presets import get_preset


def test_a_chapter_needs_its_attacks_archs_and_seeds_with_their_clean_models():
    got = needs("08", {"preset": "cpu", "seeds": "0,1", "attacks": "badnets,wanet"})
    backdoored = [(n.attack, n.arch, n.seed) for n in got if n.attack != REFERENCE]
    assert backdoored == [("badnets", "vgg19_bn", 0), ("wanet", "vgg19_bn", 0),
                          ("badnets", "vgg19_bn", 1), ("wanet", "vgg19_bn", 1)]
    # the clean reference is trained at its attack's preset (WaNet on VGG19-BN: 24 epochs)
    clean = [n for n in got if n.attack == REFERENCE]
    assert {n.preset("cpu").epochs for n in clean} == {12, 24}


def test_lc_brings_its_surrogate_and_overrides_reach_the_preset():
    got = needs("06", {"preset": "cpu", "attack": "lc", "poison_ratios": "0.05",
                       "repair_attacks": "lc", "redirection_attacks": "lc"})
    assert ModelNeed(REFERENCE, "preact_resnet18", 0, (), "lc") in got
    rate = [n for n in got if n.overrides and n.attack != REFERENCE]
    assert [n.preset("cpu").poison_ratio for n in rate] == [0.05]


def test_the_smoke_grid_is_what_reproduce_runs():
    # at smoke, chapter 04 runs one attack on one architecture (reproduce.SMOKE_GRID)
    got = needs("04", {"preset": "smoke"})
    assert {n.attack for n in got} == {"blended", REFERENCE} and {n.arch for n in got} == {"vgg19_bn"}


def test_plan_marks_cached_models_and_times_the_rest_by_the_cache(tmp_path, monkeypatch):
    from upgp.scenarios import backdoored_model

    monkeypatch.setenv("UPGP_CACHE", str(tmp_path))  # empty: no model to time others by
    monkeypatch.setenv("UPGP_RESULTS", str(tmp_path / "results"))  # and no training record

    chapter = {"attack": "blended", "arch": "preact_resnet18"}
    empty = plan(["00"], "smoke", {**chapter, "seed": 5})
    assert list(empty.cached) == [False] and math.isnan(empty["estimated s"].iloc[0])
    assert list(empty["timed by"]) == ["untimed"]
    trained = backdoored_model("blended", "preact_resnet18", "smoke", seed=5, progress=False)
    table = plan(["00"], "smoke", {**chapter, "seed": 5})
    assert list(table.cached) == [True] and table["estimated s"].iloc[0] == 0
    assert table["train s"].iloc[0] == pytest.approx(  # what it would take from an empty cache
        training_images(get_preset("smoke")) / trained.info["images_per_second"])
    other = plan(["00"], "smoke", {**chapter, "seed": 6})  # timed by the model just trained
    assert list(other.cached) == [False] and list(other["timed by"]) == ["cache"]
    assert other["estimated s"].iloc[0] == pytest.approx(
        training_images(get_preset("smoke")) / trained.info["images_per_second"])


def test_an_empty_cache_is_timed_by_the_committed_training_records(tmp_path, monkeypatch):
    monkeypatch.setenv("UPGP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UPGP_RESULTS", str(tmp_path))
    record = {"run": {"arch": "preact_resnet18", "width": get_preset("smoke").width},
              "training": {}}
    for attack, rate in (("badnets", 400.0), ("blended", 600.0), ("sig", 900.0)):
        record["training"]["images_per_second"] = rate
        (tmp_path / f"train-{attack}-preact_resnet18.json").write_text(json.dumps(record))
    table = plan(["00"], "smoke", {"attack": "blended", "arch": "preact_resnet18", "seed": 5})
    assert list(table["timed by"]) == ["results"]  # the median of the records' rates
    assert table["estimated s"].iloc[0] == pytest.approx(
        training_images(get_preset("smoke")) / 600.0)
    wider = plan(["00"], "smoke", {"attack": "blended", "arch": "vgg19_bn", "seed": 5})
    assert list(wider["timed by"]) == ["untimed"]  # no record of this architecture


@pytest.mark.parametrize("argv, message", [
    (["plan"], "name the notebooks to plan, or --all"),
    (["plan", "04", "--all"], "name the notebooks to plan, or --all"),
    (["plan", "99"], "unknown notebook '99'"),
    (["plan", "04", "--preset", "laptop"], "preset 'laptop'"),
    (["plan", "04", "05", "-p", "attacks", "wanet"], "-p applies to one notebook"),
])
def test_plan_refuses_bad_input_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_reproduce_records_the_models_each_chapter_trained(tmp_path, monkeypatch):
    """A cache-only rerun is told apart from a run that trained: notebook_times.csv counts the
    models each run added to the cache (the papermill run is stood in for by a fake)."""
    from upgp import reproduce as rp
    from upgp.io import cache_dir

    def fake_papermill(notebook, output, parameters):
        if notebook.stem.startswith("00"):  # the first chapter trains two models
            for name in ("a.pt", "b.pt"):
                (cache_dir() / "models" / name).write_bytes(b"")
        return 1.0

    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(rp, "ROOT", tmp_path)
    monkeypatch.setattr(rp, "_papermill", fake_papermill)
    first = rp.reproduce("smoke", ["00", "01"]).set_index("notebook")["models trained"]
    assert first.to_dict() == {"00_quickstart": 2, "01_unlearning_perturbation": 0}
    rp.reproduce("smoke", ["00"])  # the cache now holds its models
    times = (tmp_path / "results" / "smoke" / "notebook_times.csv").read_text().splitlines()
    assert times[0] == "notebook,status,seconds,models trained"
    assert [line.split(",")[-1] for line in times[1:]] == ["0", "0"]
