"""Glue by label (``upgp.pages``)."""

from __future__ import annotations

import pandas as pd

from upgp import pages


def test_slug_makes_glue_names_from_labels():
    assert pages.slug("blended", "clean (no poison)", "-") == "blended_clean_no_poison"
    assert pages.slug("SIG", "UPGP + repair", 0.05) == "sig_upgp_repair_0.05"


def test_glue_table_names_every_cell_by_its_labels(monkeypatch):
    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.update({name: value}))
    table = pd.DataFrame({"ASR": [1.234, float("nan")], "models": [3, 4]},
                         index=pd.MultiIndex.from_tuples([("vgg19_bn", "new default"),
                                                          ("vgg19_bn", "old default")]))
    assert pages.glue_table("rg", table) is None  # a cell ending with it shows nothing
    assert list(glued) == ["rg_vgg19_bn_new_default_asr", "rg_vgg19_bn_new_default_models",
                           "rg_vgg19_bn_old_default_asr", "rg_vgg19_bn_old_default_models"]
    assert glued == {"rg_vgg19_bn_new_default_asr": 1.23, "rg_vgg19_bn_new_default_models": 3,
                     "rg_vgg19_bn_old_default_asr": "-", "rg_vgg19_bn_old_default_models": 4}
    assert type(glued["rg_vgg19_bn_new_default_models"]) is int  # shown as 3, not 3.0
    assert pages.shown(69.04, 0) == 69 and type(pages.shown(69.04, 0)) is int


def test_a_value_that_rounds_to_zero_is_not_shown_negative():
    from upgp.pages import shown

    assert str(shown(-0.003)) == "0.0" and str(shown(-0.4, digits=0)) == "0"
    assert shown(-0.01) == -0.01 and shown(float("nan")) == "-"
