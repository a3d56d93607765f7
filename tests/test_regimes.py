"""The regime grid's bookkeeping (``upgp.regimes``): selection, resumable rows, the bars."""

from __future__ import annotations

import pandas as pd
import pytest

from upgp import regimes


def test_select_filters_and_names_what_is_unknown():
    rows = regimes.grid("cpu")
    picked = regimes.select(rows, ["preset", "clean"], ["vgg19_bn"], ["blended"])
    assert [(r.name, r.attack_label, r.seed) for r in picked] == [
        ("preset", "blended", 0), ("clean", regimes.CLEAN_ATTACK, 0),
        ("clean", regimes.CLEAN_ATTACK, 1)]
    with pytest.raises(ValueError, match="unknown regime 'reserve 20'; choose one of: preset"):
        regimes.select(rows, ["reserve 20"])  # the small reserve is 500 images at cpu
    with pytest.raises(ValueError, match="unknown attack 'lc'"):
        regimes.select(rows, attacks=["lc"])
    assert "reserve 20" in {r.name for r in regimes.grid("smoke")}  # 1/5 of the smoke reserve


def _row(regime, config, **values):
    base = {"regime": regime.name, "attack": regime.attack_label, "arch": regime.arch,
            "seed": regime.seed, "config": config, "ACC before": 80.0, "ACC after": 79.0,
            "ASR before": 95.0, "ASR after": 3.0, "RA after": 70.0, "clean-model RA": 72.0,
            "flagged share": 0.1, "removal steps": 10}
    return base | values


def test_run_grid_resumes_without_repeating_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("UPGP_RESULTS", str(tmp_path))
    calls = []

    def measure(regime, config, preset, data):
        calls.append((regime.name, regime.attack, config))
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted in the middle of the grid
        return _row(regime, config)

    monkeypatch.setattr(regimes, "measure", measure)
    chosen = regimes.select(regimes.grid("cpu"), ["preset"], ["vgg19_bn"], ["badnets", "sig"])
    with pytest.raises(KeyboardInterrupt):
        regimes.run_grid("cpu", chosen)
    assert len(pd.read_csv(tmp_path / "regimes.csv")) == 2  # what finished was kept
    shown = regimes.run_grid("cpu", chosen, compute=False)  # what the file holds, nothing run
    assert len(shown) == 2 and len(calls) == 3
    table = regimes.run_grid("cpu", chosen)
    assert calls[3:] == [("preset", "sig", "old default"), ("preset", "sig", "new default")]
    assert list(zip(table["attack"], table["config"])) == [
        ("badnets", "old default"), ("badnets", "new default"),
        ("sig", "old default"), ("sig", "new default")]
    assert len(regimes.run_grid("cpu", chosen[:1], ["new default"])) == 1 and len(calls) == 5


def test_bars_count_rows_that_took_hold_apart_from_the_rest():
    held, clean = regimes.Regime("preset", "badnets", "vgg19_bn"), regimes.Regime(
        "clean", "badnets", "vgg19_bn", clean=True)
    table = pd.DataFrame([
        _row(held, "new default"),  # meets every bar
        _row(held, "new default", **{"ASR after": 5.1, "RA after": 66.9, "removal steps": 0}),
        _row(held, "new default", **{"ACC after": 77.9}),  # drop 2.1
        _row(clean, "new default", **{"ASR before": 0.5, "ASR after": 1.5, "ACC after": 79.5,
                                      "flagged share": 0.02}),  # exactly at the bars
        _row(clean, "new default", **{"ASR before": 0.5, "ASR after": 1.6, "flagged share": 0.01,
                                      "ACC after": 80.0}),
    ])
    summary = regimes.bars(table).loc["new default"]
    assert summary["rows held"] == 3 and summary["rows not held"] == 2
    assert summary["ASR<=5 & drop<=2"] == pytest.approx(1 / 3)
    assert summary["RA>=clean-5"] == pytest.approx(2 / 3)
    assert summary["steps>0"] == pytest.approx(2 / 3)
    assert summary["no harm"] == pytest.approx(1 / 2)


def test_mean_changes_average_the_preset_models_where_the_attack_took_hold():
    preset = regimes.Regime("preset", "badnets", "vgg19_bn")
    other = regimes.Regime("reserve 500", "badnets", "vgg19_bn", reserve_size=500)
    table = pd.DataFrame([
        _row(preset, "new default", **{"RA before": 5.0, "ASR after": 1.0}),
        _row(preset, "new default", attack="bpp", **{"ASR before": 45.0, "RA before": 5.0}),
        _row(other, "new default", **{"RA before": 5.0, "ASR after": 50.0}),  # not "preset"
    ])
    means = regimes.mean_changes(table)
    assert means.loc["new default", "models"] == 1
    assert means.loc["new default", "ASR reduction"] == 94.0
    assert means.loc["new default", "RA gain"] == 65.0
    assert means.loc["new default", "ACC change"] == -1.0
