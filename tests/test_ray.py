"""Sweeps on a local Ray (``upgp sweep --ray``; the optional ``[ray]`` extra): the same table
as the serial sweep, resumable, a failing cell reported while the others finish, and cache
writes that stay whole when two workers finish the same key."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from upgp.io import load_tensors, save_tensors  # noqa: E402
from upgp.parallel import run_cells  # noqa: E402
from upgp.sweep import sweep  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_a_failing_cell_is_reported_and_the_others_finish(local_ray):
    def square(cell):
        if cell == 2:
            raise ValueError(f"cell {cell} is bad")
        return cell * cell

    finished = {}
    errors = run_cells(square, [1, 2, 3, 4], on_done=finished.__setitem__)
    assert finished == {1: 1, 3: 9, 4: 16}
    assert [(e.cell, e.error) for e in errors] == [(2, "ValueError: cell 2 is bad")]


def test_two_workers_writing_one_cache_key_leave_one_valid_entry(local_ray, tmp_path):
    path = tmp_path / "models" / "same-key.pt"

    def write(cell):
        for _ in range(20):
            save_tensors(path, {"w": torch.full((256, 256), float(cell))})
        return cell

    run_cells(write, [1, 2])
    entry = load_tensors(path)["w"]
    assert entry.unique().numel() == 1 and entry[0, 0].item() in (1.0, 2.0)
    assert [p.name for p in path.parent.iterdir()] == ["same-key.pt"]  # no temporary left


RUN = dict(defenses=["ft", "upgp"], attacks=["blended", "badnets"], archs=["preact_resnet18"],
           seeds=[0], preset="smoke", progress=False)
TIMES = ["wall_seconds", "train_epoch_seconds"]  # measured, not computed: they differ per run


@pytest.mark.slow
def test_ray_sweep_gives_the_serial_table_and_resumes(local_ray, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray task runs with (ray_cpus=1)
    try:
        monkeypatch.setenv("UPGP_CACHE", str(tmp_path / "serial-cache"))
        serial = sweep(**RUN, out=tmp_path / "serial.csv")
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("UPGP_CACHE", str(tmp_path / "ray-cache"))  # computed anew, not read
    parallel = sweep(**RUN, out=tmp_path / "ray.csv", ray="local")
    assert len(serial) == 4
    pd.testing.assert_frame_equal(serial.drop(columns=TIMES), parallel.drop(columns=TIMES))

    # interrupted: two rows lost; a rerun on an empty cache computes only that model's runs
    table = pd.read_csv(tmp_path / "ray.csv", dtype={"config_id": str})
    table[table.attack != "badnets"].to_csv(tmp_path / "ray.csv", index=False)
    monkeypatch.setenv("UPGP_CACHE", str(tmp_path / "resume-cache"))
    resumed = sweep(**RUN, out=tmp_path / "ray.csv", ray="local")
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMES), serial.drop(columns=TIMES),
                                  check_dtype=False)  # a table read back has nullable ints
    assert len(pd.read_csv(tmp_path / "ray.csv")) == 4  # no row twice
    trained = sorted(p.name.split("-")[0] for p in (tmp_path / "resume-cache" / "models").iterdir())
    assert trained == ["badnets"]  # the blended model was not trained again


@pytest.mark.slow
def test_reproduce_ray_trains_what_the_plan_lists_as_missing(local_ray):
    from upgp.plan import plan, train_missing

    chapter = {"attack": "sig", "arch": "vgg19_bn", "seed": 4}  # not trained by another test
    assert not plan(["00"], "smoke", chapter).cached.any()
    assert train_missing(["00"], "smoke", parameters=chapter) == []
    assert plan(["00"], "smoke", chapter).cached.all()
