import pytest
import torch

from upgp.attacks import ATTACKS, create_attack, poison_dataset, triggered_test_set
from upgp.data import synthetic_data


@pytest.fixture(scope="module")
def data():
    return synthetic_data(n_train=600, n_test=200, seed=1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_changes_exactly_the_recorded_samples(name, data):
    attack = create_attack(name)
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
    attack = create_attack(name)
    x = data.x_test[:16].clone()
    a, b = attack.apply(x), create_attack(name).apply(x)
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
    x, y = triggered_test_set(create_attack("badnets"), data.x_test, data.y_test, target=2)
    assert (y != 2).all() and len(y) == int((data.y_test != 2).sum())
    assert (x[..., -3:, -3:] == 255).all()


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
