import pytest
import torch

import upgp.analyses as analyses
from upgp.analyses import reemergence
from upgp.attacks import create_attack
from upgp.reemergence import RetuneConfig, retune, retune_config, retuning_set
from upgp.scenarios import clean_reference_model


def test_retuning_set_poisons_by_the_attack_rule():
    x = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(200) % 10
    clean = retuning_set(create_attack("badnets"), x, y, 0, target=0, seed=0)
    assert clean.x is x and clean.y is y and len(clean.poison_idx) == 0
    dirty = retuning_set(create_attack("badnets"), x, y, 7, target=0, seed=0)
    assert len(dirty.poison_idx) == 7 and (dirty.y[dirty.poison_idx] == 0).all()
    assert (y[dirty.poison_idx] != 0).all()  # drawn outside the target class
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[dirty.poison_idx] = False
    assert torch.equal(dirty.x[untouched], x[untouched])
    label_kept = retuning_set(create_attack("sig"), x, y, 5, target=3, seed=0)
    assert (y[label_kept.poison_idx] == 3).all() and torch.equal(label_kept.y, y)
    with pytest.raises(ValueError, match="retuning poisons 200 is outside 0..199"):
        retuning_set(create_attack("badnets"), x, y, 200, target=0, seed=0)


def test_retune_checkpoints_and_leaves_the_model(smoke_scenario):
    sc = smoke_scenario
    before = [p.clone() for p in sc.model.parameters()]
    data = retuning_set(sc.attack, sc.reserve_x, sc.reserve_y, 0, 0, 0)
    rows = retune(sc.model, data, sc.attack, RetuneConfig(epochs=3, every=2, batch_size=32),
                  sc.evaluate)
    assert [r["epoch"] for r in rows] == [0, 2, 3]  # every 2 epochs, and the end
    assert rows[0] == {"epoch": 0, **sc.evaluate()}
    assert all(torch.equal(a, b) for a, b in zip(before, sc.model.parameters()))


def test_retuning_attack_teaches_a_clean_model_the_backdoor(smoke_scenario):
    """The probe can fail a model: poisons in the retuning set raise a clean model's ASR, which
    the same fine-tuning without them leaves near zero."""
    sc = smoke_scenario
    clean = clean_reference_model(sc, progress=False)
    asr = {}
    for k in (0, 40):
        data = retuning_set(sc.attack, sc.reserve_x, sc.reserve_y, k, sc.preset.target, 0)
        rows = retune(clean, data, sc.attack, RetuneConfig(epochs=20, every=20, lr=0.05,
                                                           batch_size=32), sc.evaluate)
        asr[k] = rows[-1]["asr"]
    assert asr[0] < 10 and asr[40] > asr[0] + 30, asr


def test_reemergence_is_cached_and_rejects_unknown_models(smoke_scenario, monkeypatch):
    sc = smoke_scenario
    probe = retune_config(sc.preset, 0)
    assert (probe.epochs, probe.every) == (2, 1)  # the smoke preset's shorter probe
    runs = []
    real_defend = analyses.defend
    monkeypatch.setattr(analyses, "defend", lambda *a, **k: runs.append(1) or real_defend(*a, **k))
    poisoned = retune_config(sc.preset, 0, poisons=10)
    first = reemergence(sc, "ft", [probe, poisoned])
    assert len(runs) == 1  # one defense for both probes
    assert [[r["epoch"] for r in rows] for rows in first] == [[0, 1, 2], [0, 1, 2]]
    assert first[0][0] == first[1][0]  # both start from the same defended model
    monkeypatch.setattr(analyses, "defend", lambda *a, **k: pytest.fail("not cached"))
    assert reemergence(sc, "ft", [probe, poisoned]) == first
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        reemergence(sc, "nope", [probe])


def test_endpoints_sum_each_probe_curve_up():
    import pandas as pd

    from upgp.reemergence import ENDPOINTS, endpoints

    curves = pd.DataFrame({"model": ["UPGP"] * 3 + ["FT"] * 2, "epoch": [0, 1, 2, 0, 1],
                           "asr": [2.0, 40.0, 30.0, 5.0, 6.0], "acc": [80.0, 79.0, 81.0, 70, 71],
                           "ra": [70.0, 50.0, 55.0, 60, 61]})
    table = endpoints(curves, ["model"])
    assert list(table.index) == ["UPGP", "FT"] and list(table.columns) == ENDPOINTS
    assert table.loc["UPGP"].tolist() == [2.0, 40.0, 30.0, 81.0, 55.0]
