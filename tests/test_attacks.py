import pytest
import torch

from upgp.attacks import (
    ATTACKS,
    create_attack,
    per_batch_poisoning,
    poison_dataset,
    triggered_test_set,
)
from upgp.data import synthetic_data
from upgp.models import create_model
from upgp.train import fit, random_crop_flip


@pytest.fixture(scope="module")
def data():
    return synthetic_data(n_train=600, n_test=200, seed=1)


def make_attack(name: str, **params):
    """``create_attack`` made usable without training: an untrained surrogate for attacks that
    craft poisons against one, untrained (seeded) trigger networks for attacks that learn them."""
    torch.manual_seed(0)
    attack = create_attack(name, **params)
    if attack.learned:
        state = attack.trigger_state()
        last = [k for k in state["mask"] if k.endswith("bias")][-1]
        state["mask"][last].fill_(1.0)  # open the untrained mask: m(x) ~ 1
        attack.load_trigger_state(state)
    if attack.needs_surrogate:
        torch.manual_seed(0)
        attack.set_surrogate(create_model("preact_resnet18", 10, 8), "untrained-test-surrogate")
    return attack


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_changes_exactly_the_recorded_samples(name, data):
    attack = make_attack(name)
    out = poison_dataset(attack, data.x_train, data.y_train, ratio=0.1, target=0, seed=3)
    changed_pixels = (out.x != data.x_train).flatten(1).any(1)
    changed_labels = out.y != data.y_train
    touched = torch.zeros(len(out.y), dtype=torch.bool)
    touched[out.poison_idx] = True
    touched[out.cross_idx] = True
    # nothing outside the record changes, byte for byte
    assert not changed_pixels[~touched].any()
    assert not changed_labels[~touched].any()
    assert torch.equal(out.x[~touched], data.x_train[~touched])
    # every poisoned sample carries the target label; only dirty-label poisons change label
    assert (out.y[out.poison_idx] == 0).all()
    if attack.clean_label:
        assert not changed_labels.any()
        assert (data.y_train[out.poison_idx] == 0).all()
    else:
        assert torch.equal(changed_labels.nonzero().flatten(), out.poison_idx)
    # the noise-mode samples keep their labels and are disjoint from the poisons
    assert not changed_labels[out.cross_idx].any()
    assert not set(out.cross_idx.tolist()) & set(out.poison_idx.tolist())
    assert changed_pixels[out.poison_idx].float().mean() > 0.9


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_a_pure_deterministic_transform(name, data):
    attack = make_attack(name)
    x = data.x_test[:16].clone()
    a, b = attack.apply(x), make_attack(name).apply(x)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)
    assert torch.equal(x, data.x_test[:16])  # input untouched


def test_dirty_label_ratio_counts_and_seed(data):
    attack = create_attack("badnets")
    a = poison_dataset(attack, data.x_train, data.y_train, 0.1, 0, seed=3)
    b = poison_dataset(attack, data.x_train, data.y_train, 0.1, 0, seed=3)
    c = poison_dataset(attack, data.x_train, data.y_train, 0.1, 0, seed=4)
    assert len(a.poison_idx) == 60
    assert torch.equal(a.poison_idx, b.poison_idx) and not torch.equal(a.poison_idx, c.poison_idx)


def test_wanet_noise_mode_size(data):
    out = poison_dataset(create_attack("wanet"), data.x_train, data.y_train, 0.1, 0, seed=0)
    assert len(out.cross_idx) == 2 * len(out.poison_idx)


def test_triggered_test_set_excludes_target(data):
    x, y, t = triggered_test_set(create_attack("badnets"), data.x_test, data.y_test, target=2)
    assert (y != 2).all() and len(y) == int((data.y_test != 2).sum()) and (t == 2).all()
    assert (x[..., -3:, -3:] == 255).all()


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "bpp"])
def test_all_to_all_maps_every_class(name, data):
    attack = create_attack(name, label_mode="all2all")
    out = poison_dataset(attack, data.x_train, data.y_train, 0.2, 0, seed=0)
    before, after = data.y_train[out.poison_idx], out.y[out.poison_idx]
    assert torch.equal(after, (before + 1) % 10)
    assert set(before.tolist()) == set(range(10))  # poisons come from every class
    x, y, t = triggered_test_set(attack, data.x_test, data.y_test, 0, 10)
    assert len(y) == len(data.y_test) and torch.equal(t, (y + 1) % 10)
    assert create_attack(name).params() != attack.params()  # all-to-all models cache apart


def test_all_to_all_rejects_clean_label_and_bad_modes():
    with pytest.raises(ValueError, match="needs a dirty-label attack"):
        create_attack("sig", label_mode="all2all")
    with pytest.raises(ValueError, match="unknown label mode 'one2one'; choose one of: all2one"):
        create_attack("badnets", label_mode="one2one")


def test_bpp_quantises_with_dithering_and_negatives_keep_labels(data):
    attack = create_attack("bpp")
    x = data.x_train[:64]
    levels = torch.round(torch.arange(8) / 7 * 255)
    assert torch.isin(attack.apply(x).float(), levels).all()  # 8 levels per channel
    plain = create_attack("bpp", dithering=False).apply(x)
    assert not torch.equal(plain, attack.apply(x))  # dithering spreads the rounding error
    out = poison_dataset(attack, data.x_train, data.y_train, 0.1, 0, seed=0)
    assert len(out.cross_idx) == 2 * len(out.poison_idx)
    assert torch.equal(out.y[out.cross_idx], data.y_train[out.cross_idx])


def test_badnets_and_blended_triggers():
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert (create_attack("badnets").apply(x)[..., -3:, -3:] == 255).all()
    blended = create_attack("blended", alpha=0.2).apply(x).float()
    assert 0 < blended.mean() < 0.2 * 255


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio_is_one_line_error(ratio, data):
    with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
        poison_dataset(create_attack("badnets"), data.x_train, data.y_train, ratio, 0, seed=0)


def test_unknown_attack_lists_valid_names():
    with pytest.raises(ValueError, match="unknown attack 'nope'; choose one of: badnets"):
        create_attack("nope")


def test_lc_keeps_labels_and_stays_within_eps(data):
    attack = create_attack("lc")
    with pytest.raises(ValueError, match="needs a surrogate model"):
        attack.adversarial(data.x_train[:4], data.y_train[:4])
    attack = make_attack("lc")
    out = poison_dataset(attack, data.x_train, data.y_train, 0.05, 3, seed=0)
    assert torch.equal(out.y, data.y_train)  # clean-label: no label changes
    assert (data.y_train[out.poison_idx] == 3).all()
    before = data.x_train[out.poison_idx].int()
    after = out.x[out.poison_idx].int()
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    diff = (after - before)[inner].abs()
    assert diff.max() <= 8 and diff.float().mean() > 1  # a real PGD perturbation, within 8/255
    board = attack.checkerboard().int()
    for rows in (slice(0, 3), slice(-3, None)):
        for cols in (slice(0, 3), slice(-3, None)):
            assert (after[..., rows, cols] == board).all()
    rest = torch.ones(len(data.y_train), dtype=torch.bool)
    rest[out.poison_idx] = False
    assert torch.equal(out.x[rest], data.x_train[rest])


def test_iad_trains_with_the_classifier_and_triggers_differ_between_inputs(tmp_path):
    from upgp.scenarios import backdoored_model, build_scenario

    sc = backdoored_model("iad", "preact_resnet18", "smoke", seed=0, progress=False)
    assert sc.info["cache_hit"] is False and sc.info["attack_cost"]["trigger"]["cache_hit"] is False
    weights = [v for v in sc.model.state_dict().values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)  # training did not diverge
    assert sc.metrics["acc"] > 50, sc.metrics
    x = sc.x_test[:32]
    delta = sc.attack.apply(x).int() - x.int()
    assert (delta != 0).any()
    flat = delta.flatten(1).float()
    assert not torch.allclose(flat[0], flat[1]) and flat.std(0).mean() > 0  # input-aware
    # cross-trigger samples (another image's trigger) keep their labels
    assert torch.equal(sc.train.y[sc.train.cross_idx], sc.train.y[sc.train.cross_idx])
    assert len(sc.train.cross_idx) == len(sc.train.poison_idx)
    # a rebuilt scenario loads the cached generator: identical triggers, no retraining
    again = build_scenario("iad", "preact_resnet18", "smoke", seed=0)
    assert again.info["attack_cost"]["trigger"]["cache_hit"] is True
    assert torch.equal(again.x_triggered, sc.x_triggered)
    with pytest.raises(ValueError, match="no trained generator"):
        create_attack("iad").apply(x)


def test_lc_surrogate_is_shared_across_poisoning_ratios():
    from upgp.scenarios import build_scenario

    first = build_scenario("lc", "preact_resnet18", "smoke", progress=False, epochs=1)
    other = build_scenario("lc", "preact_resnet18", "smoke", progress=False, epochs=1,
                           poison_ratio=0.05, target=2)
    cost = first.info["attack_cost"]["surrogate"], other.info["attack_cost"]["surrogate"]
    assert cost[1]["cache_hit"] and cost[1]["model"] == cost[0]["model"]


@pytest.mark.parametrize("name", ["wanet", "bpp"])
def test_per_batch_poisoning_triggers_augmented_batches(name, data):
    attack = create_attack(name, per_batch=True)
    assert "per_batch" not in create_attack(name).params()  # keys of older models stay valid
    assert attack.params()["per_batch"] is True
    x, y = data.x_train, data.y_train
    ps = poison_dataset(attack, x, y, 0.1, 0, seed=0)
    assert torch.equal(ps.clean_x, x) and poison_dataset(create_attack(name), x, y, 0.1, 0,
                                                         seed=0).clean_x is None
    transform = per_batch_poisoning(attack, ps)
    idx = torch.arange(0, len(y), 2)
    batch = random_crop_flip(x[idx], torch.Generator().manual_seed(0))
    out = transform(idx, batch, torch.Generator().manual_seed(1))
    poison, cross = ps.is_poisoned[idx], torch.isin(idx, ps.cross_idx)
    assert poison.any() and cross.any()
    assert torch.equal(out[~poison & ~cross], batch[~poison & ~cross])  # the rest untouched
    assert torch.equal(out[poison], attack.apply(batch[poison]))  # trigger after augmentation
    again = transform(idx, batch, torch.Generator().manual_seed(2))
    assert torch.equal(again[poison], out[poison]) and not torch.equal(again[cross], out[cross])


def test_fit_applies_the_batch_transform_after_augmentation(data):
    seen = []

    def spy(idx, xb, generator):
        seen.append((idx.clone(), xb.clone()))
        return xb

    model = create_model("preact_resnet18", 10, 4)
    fit(model, data.x_train[:64], data.y_train[:64], epochs=1, batch_size=32, lr=0.01,
        batch_transform=spy)
    assert len(seen) == 2 and all(xb.dtype == torch.uint8 for _, xb in seen)
    assert not torch.equal(seen[0][1], data.x_train[:64][seen[0][0]])  # cropped/flipped first
