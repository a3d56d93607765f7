"""End-to-end checks through the command line at the smoke preset (``pytest -m slow``)."""

import json

import pytest

from upgp.attacks import ATTACKS
from upgp.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_train_then_defend_each_attack(attack, tmp_path):
    train_out, defend_out = tmp_path / "train.json", tmp_path / "defend.json"
    common = ["--attack", attack, "--preset", "smoke", "--quiet"]
    assert main(["train", *common, "--out", str(train_out)]) == 0
    assert main(["defend", *common, "--out", str(defend_out)]) == 0
    trained, defended = json.loads(train_out.read_text()), json.loads(defend_out.read_text())
    assert defended["before"] == trained["no_defense"]
    assert set(defended["after"]) == {"acc", "asr", "ra"}
    assert 0 <= defended["detection"]["auroc"] <= 1
    assert set(defended["upgp"]["seconds"]) == {"perturbation", "scoring", "detection", "removal"}
    assert defended["run"]["preset"] == "smoke"


def test_no_projection_uses_same_flagged_set(tmp_path):
    outs = []
    for extra in ([], ["--no-projection"]):
        out = tmp_path / f"d{len(extra)}.json"
        assert main(["defend", "--attack", "blended", "--preset", "smoke", "--quiet",
                     "--out", str(out), *extra]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["detection"] == outs[1]["detection"]
    assert outs[0]["config"]["projection"] == "gpm" and outs[1]["config"]["projection"] == "none"


def test_scale_run_script_writes_what_cli_runs_reads(tmp_path):
    """scripts/scale_run.sh (the paper-preset runner) at the smoke preset: one attack within the
    time budget, the next one skipped because the first took longer than what is left; UPGP_SET
    reaches both defend runs and names their files."""
    import os
    import subprocess
    from pathlib import Path

    from upgp.reproduce import ROOT, cli_runs

    out = tmp_path / "runs"
    env = {**os.environ, "UPGP_SET": "repair_steps=5"}  # the session's cache: its models too
    subprocess.run(["bash", str(Path(ROOT) / "scripts" / "scale_run.sh"), "smoke",
                    "preact_resnet18", str(out), "1", "blended", "badnets"],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    rows = cli_runs(out)
    assert rows["attack"].tolist() == ["blended"] and rows.loc[0, "preset"] == "smoke"
    assert {"UPGP --set ASR", "no-proj --set ASR", "UPGP --set steps"} <= set(rows.columns)
    assert rows.loc[0, "--set"] == "repair_steps=5"
    assert "skip badnets" in (out / "log.txt").read_text()


def test_paper_reproduce_script_sweeps_every_model_through_ray(tmp_path):
    """scripts/paper_reproduce.sh at the smoke preset, on the CPU (GPU share 0): the 12 models
    (six attacks x two architectures), each defended by UPGP, in one resumable table."""
    import subprocess
    from pathlib import Path

    import pandas as pd

    from upgp.reproduce import ROOT

    pytest.importorskip("ray")
    out = tmp_path / "paper"
    subprocess.run(["bash", str(Path(ROOT) / "scripts" / "paper_reproduce.sh"), "smoke",
                    str(out)], check=True, cwd=ROOT, capture_output=True)
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 12 and set(table.defense) == {"upgp"}
    assert table.groupby("arch").attack.nunique().to_dict() == {"preact_resnet18": 6,
                                                                 "vgg19_bn": 6}
    assert "paper_reproduce: preset smoke" in (out / "log.txt").read_text()


def test_gpu_packing_benchmark_prints_a_row_per_pack():
    """benchmarks/gpu_packing.py at the smoke preset on the CPU: the table it prints."""
    import subprocess
    import sys
    from pathlib import Path

    from upgp.reproduce import ROOT

    out = subprocess.run([sys.executable, str(Path(ROOT) / "benchmarks" / "gpu_packing.py"),
                          "--preset", "smoke", "--packs", "1", "2", "--steps", "4"],
                         check=True, capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "trainings" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2"]
    assert rows[0].rstrip().endswith("1.00x |")
