"""The main-results summaries (``upgp.outcomes``): averages by label, the front page's table."""

from __future__ import annotations

import pandas as pd
import pytest

from upgp import outcomes


def _rows():
    def row(attack, variant, asr_before, asr, ra, acc):
        return {"attack": attack, "arch": "vgg19_bn", "variant": variant, "ACC before": 80.0,
                "ASR before": asr_before, "RA before": 5.0, "ACC": acc, "ASR": asr, "RA": ra,
                "clean-model RA": 80.0}

    return pd.DataFrame([
        row("badnets", "UPGP", 95.0, 1.0, 79.0, 79.0),
        row("badnets", "UPGP + trigger repair", 95.0, 0.0, 80.0, 80.0),
        row("blended", "UPGP", 99.0, 9.0, 45.0, 78.0),
        row("blended", "UPGP + trigger repair", 99.0, 1.0, 77.0, 79.0),
        row("bpp", "UPGP", 45.0, 60.0, 30.0, 70.0),  # did not take hold: left out
        row("bpp", "UPGP + trigger repair", 45.0, 60.0, 30.0, 70.0),
    ])


def test_summary_averages_the_models_where_the_attack_took_hold_by_label():
    table = outcomes.summary(_rows())
    assert list(table.index) == ["UPGP", "UPGP + trigger repair"]
    four = table.loc["UPGP"]
    assert four["models"] == 2 and four["ASR at most 5"] == 1
    assert four["ASR reduction"] == pytest.approx(((95 - 1) + (99 - 9)) / 2)
    assert four["RA gain"] == pytest.approx(((79 - 5) + (45 - 5)) / 2)
    assert four["ACC change"] == pytest.approx(((79 - 80) + (78 - 80)) / 2)
    assert four["RA of clean RA (%)"] == pytest.approx(100 * (79 / 80 + 45 / 80) / 2)


def test_headline_sets_the_book_beside_the_paper_and_backdoorbench():
    table = outcomes.headline(outcomes.summary(_rows()), "cpu preset")
    assert len(table) == 4
    paper = table.loc[[i for i in table.index if i.startswith("UPGP (paper")][0]]
    assert (paper["ASR reduction"], paper["RA gain"]) == (96.34, 83.68)
    anp = table.loc[[i for i in table.index if i.startswith("ANP")][0]]
    # BackdoorBench's ANP over BadNets, Blended, SIG, WaNet, IAD, BPP (issue 24's numbers)
    assert anp[["ASR reduction", "RA gain", "ACC change"]].round(2).tolist() == [95.96, 70.8, -5.88]
    assert table.iloc[0]["ASR reduction"] == pytest.approx(92.0)


def test_before_after_is_indexed_by_stage_so_its_glue_names_say_what_they_are():
    from upgp.pages import slug

    result = {"before": {"acc": 82.0, "asr": 95.0, "ra": 4.0, "n": 1},
              "after": {"acc": 81.0, "asr": 2.0, "ra": 80.0, "n": 1}}
    table = outcomes.before_after(result)
    assert list(table.columns) == ["ACC (%)", "ASR (%)", "RA (%)"]
    assert table.loc["UPGP", "ASR (%)"] == 2.0 and table.loc["no defense", "ACC (%)"] == 82.0
    assert slug("qs", "no defense", "ASR (%)") == "qs_no_defense_asr"
