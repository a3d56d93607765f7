import json

import pytest

from upgp.cli import main
from upgp.reproduce import cli_runs, model_seeds


def test_train_writes_result(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--preset", "smoke", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["no_defense"]) == {"acc", "asr", "ra"}
    assert result["run"]["preset"] == "smoke" and result["run"]["seed"] == 0
    assert "synthetic" in result["run"]["data"]
    assert "preset smoke" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--attack", "nope"],
     "unknown attack 'nope'; choose one of: badnets, blended, bpp, iad, lc, sig, wanet"),
    (["--arch", "nope"], "unknown model 'nope'; choose one of:"),
    (["--preset", "nope"], "unknown preset 'nope'; choose one of: smoke, cpu, paper"),
    (["--ratio", "1.5"], "poison ratio 1.5 is outside (0, 1)"),
    (["--reserve", "0"], "reserve ratio 0.0 is outside (0, 1)"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    preset = [] if "--preset" in argv else ["--preset", "smoke"]
    assert main(["train", *preset, *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["defend", "--defense", "nc"], "unknown defense 'nc'; choose one of: abl, anp, fp, ft, ibau"),
    (["defend", "--defense", "ft", "--no-projection"], "--no-projection and --repair apply to upgp"),
    (["defend", "--defense", "ft", "--repair", "5"], "--no-projection and --repair apply to upgp"),
    (["defend", "--defense", "upgp_repair", "--repair", "5"],
     "with_repair on a config that already repairs (repair_steps 60)"),
    (["defend", "--defense", "ft", "--set", "epoch=3"], "unknown FTConfig field(s) ['epoch']"),
    (["defend", "--defense", "upgp_trigger_repair", "--set", "repair_select=best"],
     "unknown repair selection 'best'; choose one of: holdout, stamped"),
    (["defend", "--defense", "upgp_trigger_repair", "--set", "repair_trigger=warp"],
     "unknown trigger form 'warp'; choose one of: shift, affine"),
    (["train", "--attack", "sig", "--label-mode", "all2all"], "needs a dirty-label attack"),
    (["train", "--attack", "bpp", "--attack-param", "cros_ratio=0"],
     "unknown parameter(s) cros_ratio for attack 'bpp'; allowed: squeeze_num, dithering, cross_ratio"),
])
def test_bad_defense_input_is_one_line(argv, message, capsys):
    assert main([*argv, "--preset", "smoke", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_defend_with_a_baseline_and_sweep(tmp_path, capsys):
    out, table = tmp_path / "ft.json", tmp_path / "sweep.csv"
    common = ["--attack", "blended", "--preset", "smoke", "--epochs", "2", "--quiet"]
    assert main(["defend", "--defense", "ft", *common, "--set", "epochs=1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["defense"] == "ft" and result["config"]["epochs"] == 1
    assert set(result["after"]) == {"acc", "asr", "ra"} and "der" in result
    assert "after ft:" in capsys.readouterr().out
    assert main(["sweep", "--defenses", "ft", "fp", "--attacks", "blended", "--preset", "smoke",
                 "--out", str(table), "--quiet"]) == 0
    assert table.read_text().count("\n") == 3  # header + one row per defense


def test_defend_with_repair_builds_the_repaired_config(tmp_path):
    out = tmp_path / "rep.json"
    assert main(["defend", "--attack", "blended", "--preset", "smoke", "--epochs", "2", "--quiet",
                 "--repair", "3", "--rounds", "1", "--no-projection",
                 "--set", "removal_max_steps=5", "--out", str(out)]) == 0
    config = json.loads(out.read_text())["config"]
    assert (config["repair_steps"], config["removal_rounds"]) == (3, 1)
    assert config["stop_flagged_accuracy"] == 0.05  # 0.1 less the repair's allowed rise
    assert config["projection"] == "none" and config["repair_project"] is False


def test_defend_upgp_repair_is_the_repaired_upgp(tmp_path):
    out = tmp_path / "rep.json"
    assert main(["defend", "--defense", "upgp_repair", "--attack", "blended", "--preset", "smoke",
                 "--epochs", "2", "--quiet", "--set", "removal_max_steps=5", "--set", "repair_steps=3",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["defense"] == "upgp_repair" and "detection" in result
    assert (result["config"]["repair_steps"], result["config"]["removal_rounds"]) == (3, 3)
    assert result["config"]["stop_flagged_accuracy"] == 0.05


def test_cli_results_collect_into_one_row(tmp_path):
    common = ["--attack", "blended", "--preset", "smoke", "--epochs", "2", "--quiet"]
    assert main(["train", *common, "--out", str(tmp_path / "train-blended-preact_resnet18.json")]) == 0
    assert main(["defend", *common, "--set", "removal_max_steps=5",
                 "--out", str(tmp_path / "upgp-blended-preact_resnet18.json")]) == 0
    rows = cli_runs(tmp_path)
    assert len(rows) == 1 and rows.loc[0, "attack"] == "blended" and rows.loc[0, "width"] == 8
    assert {"ACC", "ASR", "UPGP ASR", "AUROC", "UPGP stop", "commit"} <= set(rows.columns)
    assert rows.loc[0, "attack params"] == "default" and rows.loc[0, "poison ratio"] == 0.1
    assert "no-proj ASR" not in rows.columns  # that run is absent
    assert rows.loc[0, "epochs"] == 2
    train = tmp_path / "train-blended-preact_resnet18.json"
    old = json.loads(train.read_text())
    del old["run"]["epochs"]  # as files written before runs recorded their epochs
    train.write_text(json.dumps(old))
    assert cli_runs(tmp_path).loc[0, "epochs"] == 2  # from training time x throughput
    assert cli_runs(tmp_path / "none").empty


def test_models_parameter_parses_and_rejects_malformed_parts():
    assert model_seeds("vgg19_bn:0,1,2; preact_resnet18:0") == {"vgg19_bn": [0, 1, 2],
                                                                "preact_resnet18": [0]}
    for bad in ("vgg19_bn", "vgg19_bn:0;:1", "vgg19_bn:0,x", "vgg19_bn:"):
        with pytest.raises(ValueError, match=f"bad models part .* in '{bad}'; write architecture"):
            model_seeds(bad)
