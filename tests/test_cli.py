import json

import pytest

from upgp.cli import main


def test_train_writes_result(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--preset", "smoke", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["no_defense"]) == {"acc", "asr", "ra"}
    assert result["run"]["preset"] == "smoke" and result["run"]["seed"] == 0
    assert "synthetic" in result["run"]["data"]
    assert "preset smoke" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--attack", "nope"], "unknown attack 'nope'; choose one of: badnets, blended, bpp, iad, lc, sig, wanet"),
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
