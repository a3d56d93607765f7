"""Baseline defenses: one interface, same architecture out, no test data in, resumable sweep."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import upgp.runs as runs
import upgp.sweep as sweep_module
from upgp.defenses import DEFENSES, defend, defense_config
from upgp.defenses.upgp import UPGP_DEFENSES
from upgp.method import UPGPConfig
from upgp.presets import get_preset
from upgp.sweep import defense_means, defense_table, read_table, sweep

BASELINES = sorted(set(DEFENSES) - set(UPGP_DEFENSES))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", BASELINES)
def test_defense_returns_same_architecture_and_leaves_input(smoke_scenario, name):
    sc = smoke_scenario
    before = _state(sc.model)
    config = defense_config(name, sc.preset, sc.seed)
    train_set = (sc.train.x, sc.train.y) if DEFENSES[name].needs_train_set else None
    model, report = defend(name, sc.model, (sc.reserve_x, sc.reserve_y), config, train_set)
    assert type(model) is type(sc.model) and model is not sc.model
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].shape == v.shape for k, v in before.items())
    assert all(torch.equal(v, sc.model.state_dict()[k]) for k, v in before.items())
    assert isinstance(report, dict)
    metrics = sc.evaluate(model)
    assert all(0 <= metrics[k] <= 100 for k in ("acc", "asr", "ra"))


class Trap(torch.Tensor):
    """A tensor that records any torch operation on it."""

    touched = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        Trap.touched = True
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("name", ["anp", "fp"])
def test_pruning_defenses_never_read_test_data(smoke_scenario, monkeypatch, name):
    sc = smoke_scenario
    saved = {k: getattr(sc, k) for k in ("x_test", "y_test", "x_triggered", "y_triggered",
                                            "t_triggered")}
    seen = {}
    real_defend = runs.defend

    def watched(*args, **kwargs):
        Trap.touched = False
        out = real_defend(*args, **kwargs)
        seen["touched"] = Trap.touched
        seen["model"] = out[0]
        return out

    monkeypatch.setattr(runs, "defend", watched)
    try:
        for k, v in saved.items():
            setattr(sc, k, v.as_subclass(Trap))
        runs.run_defense(sc, name, use_cache=False)
    finally:
        for k, v in saved.items():
            setattr(sc, k, v)
    assert seen["touched"] is False
    # the same defense without any test data in reach gives the same model
    alone, _ = defend(name, sc.model, (sc.reserve_x, sc.reserve_y),
                      defense_config(name, sc.preset, sc.seed))
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(),
                                                  seen["model"].state_dict().values()))


def test_configs_scale_per_preset_and_reject_bad_fields():
    assert defense_config("anp", get_preset("paper")).iterations == 2000
    assert defense_config("anp", get_preset("smoke")).iterations < 2000
    assert defense_config("ft", get_preset("smoke"), seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown FTConfig field"):
        defense_config("ft", get_preset("cpu"), epoch=3)
    with pytest.raises(ValueError, match="unknown defense 'nc'; choose one of: abl"):
        defense_config("nc", get_preset("cpu"))
    cpu = get_preset("cpu")  # upgp_repair: the main-results chapter's "+ repair" config
    assert (defense_config("upgp_repair", cpu, seed=2)
            == UPGPConfig(seed=2, bf16=cpu.bf16).with_repair(60, 3))
    assert defense_config("upgp_repair", cpu, repair_steps=7).repair_steps == 7
    trig = defense_config("upgp_trigger_repair", cpu, seed=2)  # the same, stamping half a batch
    assert trig == UPGPConfig(seed=2, bf16=cpu.bf16).with_repair(60, 3).replace(
        repair_trigger_share=0.5)
    assert defense_config("upgp_trigger_repair", cpu,
                          repair_trigger_share=0.25).repair_trigger_share == 0.25


def test_abl_requires_the_training_set(smoke_scenario):
    sc = smoke_scenario
    with pytest.raises(ValueError, match="needs the poisoned training set"):
        defend("abl", sc.model, (sc.reserve_x, sc.reserve_y))


def test_sweep_resumes_without_duplicating_rows(smoke_scenario, tmp_path, monkeypatch):
    out = tmp_path / "sweep.csv"
    calls = []
    real = sweep_module.run_defense

    def interrupted(scenario, defense, config):
        calls.append(defense)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine goes away mid-sweep
        return real(scenario, defense, config, use_cache=False)

    monkeypatch.setattr(sweep_module, "run_defense", interrupted)
    args = (["ft", "fp"], ["blended"], ["preact_resnet18"], [0], "smoke", out)
    with pytest.raises(KeyboardInterrupt):
        sweep(*args, progress=False)
    first = read_table(out)
    assert list(first.defense) == ["ft"]
    calls.clear()
    table = sweep(*args, progress=False)
    assert calls == ["fp"]  # the finished row was not recomputed
    assert sorted(table.defense) == ["fp", "ft"]
    rows = defense_table(table, ["fp", "ft"])  # the backdoored model first, then in this order
    assert rows.defense.tolist() == ["none", "fp", "ft"]
    assert rows.acc.iloc[0] == table.acc_before.iloc[0] and rows.wall_seconds.iloc[0] == 0
    assert defense_means(rows).index.tolist() == ["none", "fp", "ft"]
    assert table.loc[table.defense == "ft", "acc"].item() == first.acc.item()
    calls.clear()
    again = sweep(*args, progress=False)
    assert calls == [] and len(again) == 2 and not again.duplicated(["defense", "attack"]).any()
    stale = read_table(out).iloc[:1].assign(config_id="0ld0c0nf")  # a row of an older config
    pd.concat([read_table(out), stale]).to_csv(out, index=False)
    assert sweep(*args, progress=False).config_id.tolist() == again.config_id.tolist()
    read_table(out).drop(columns="epochs").to_csv(out, index=False)  # before epochs joined the key
    recomputed = []
    monkeypatch.setattr(sweep_module, "run_defense",
                        lambda sc, d, c: recomputed.append(d) or real(sc, d, c, use_cache=False))
    assert len(sweep(*args, progress=False)) == 2 and sorted(recomputed) == ["fp", "ft"]
