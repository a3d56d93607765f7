"""Chapter 06's tables (``upgp.ablations``) on the smoke model."""

from __future__ import annotations

from upgp import ablations
from upgp.method import UPGPConfig


def test_repair_variants_change_only_the_repair():
    base = UPGPConfig()
    variants = ablations.repair_variants(base, steps=7, rounds=2)
    assert variants["none (four steps)"] == base
    one = variants["projected, 1 round"]
    assert (one.repair_steps, one.removal_rounds, one.repair_project) == (7, 1, True)
    plain = variants["plain fine-tuning, no stop"]
    assert not plain.repair_project and plain.repair_max_flagged_rise == 1.0
    main = variants["projected, up to 2 rounds, with_repair"]
    assert main.stop_flagged_accuracy < base.stop_flagged_accuracy  # aims under the target


def test_flagged_sets_put_the_oracle_beside_the_detected_set(smoke_scenario):
    table = ablations.flagged_sets(smoke_scenario, UPGPConfig(), seed=0)
    rows = table.set_index("flagged set")
    assert list(rows.index) == ["detected", "random (same size)", "oracle (true poisons)"]
    assert rows.loc["oracle (true poisons)", "precision"] == 1.0
    assert rows.loc["oracle (true poisons)", "size"] == int(smoke_scenario.train.is_poisoned.sum())
    assert rows.loc["random (same size)", "size"] == rows.loc["detected", "size"]
