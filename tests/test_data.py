import pytest
import torch
from PIL import Image

from upgp.data import DataUnavailableError, load_dataset, load_image_folder, split_reserve
from upgp.presets import PAIR_EPOCHS, get_preset
from upgp.scenarios import build_scenario


def test_reserve_disjoint_and_seeded():
    train, reserve = split_reserve(1000, 0.05, seed=0)
    assert len(reserve) == 50 and len(train) == 950
    assert not set(train.tolist()) & set(reserve.tolist())
    assert sorted(train.tolist() + reserve.tolist()) == list(range(1000))
    assert torch.equal(split_reserve(1000, 0.05, seed=0)[1], reserve)
    assert not torch.equal(split_reserve(1000, 0.05, seed=1)[1], reserve)


@pytest.mark.parametrize("ratio", [0, 1, 2.5, -0.2])
def test_reserve_ratio_error(ratio):
    with pytest.raises(ValueError, match=rf"reserve ratio {ratio} is outside \(0, 1\)"):
        split_reserve(100, ratio, 0)


def test_missing_data_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("UPGP_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataUnavailableError) as err:
        load_dataset("cifar10")
    assert "\n" not in str(err.value) and "missing" in str(err.value)


def test_torchvision_failure_says_how_to_provide_data(monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("UPGP_DATA", raising=False)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataUnavailableError, match="UPGP_DATA"):
        load_dataset("cifar10")


def test_image_folder_roundtrip_and_cache(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        for c, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), colour).save(root / split / c / f"{i}.png")
    first = load_image_folder(root)
    second = load_image_folder(root)  # from the cache
    assert first.x_train.shape == (6, 3, 32, 32) and first.x_train.dtype == torch.uint8
    assert first.classes == ("a", "b") and first.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.x_train[0, 0, 0, 0] == 255 and first.x_train[3, 2, 0, 0] == 255
    assert torch.equal(first.x_train, second.x_train)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset 'big'; choose one of: smoke, cpu, paper"):
        get_preset("big")
    with pytest.raises(ValueError, match="unknown Preset field"):
        get_preset("cpu", colour=1)
    with pytest.raises(ValueError, match=r"poison ratio 1.2 is outside \(0, 1\)"):
        get_preset("cpu", poison_ratio=1.2)


def test_pair_epochs(monkeypatch):
    assert get_preset("cpu", "wanet", "vgg19_bn").epochs == 24
    assert get_preset("cpu", "wanet", "vgg19_bn", epochs=5).epochs == 5  # the caller's wins
    assert get_preset("cpu", "wanet", "preact_resnet18").epochs == get_preset("cpu").epochs == 12
    monkeypatch.setitem(PAIR_EPOCHS, "smoke", {("badnets", "vgg16_bn"): 3})
    scenario = build_scenario("badnets", "vgg16_bn", "smoke", progress=False)
    assert scenario.preset.epochs == scenario.describe()["epochs"] == 3
    assert build_scenario("badnets", "vgg16_bn", get_preset("smoke"), progress=False
                          ).preset.epochs == 8  # a Preset object is taken as it is


def test_image_folder_from_archive(tmp_path):
    import tarfile

    root = tmp_path / "copy"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(root / split / c / "0.png")
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="copy")
    data = load_dataset("cifar10", archive)
    assert data.x_train.shape == (2, 3, 32, 32) and data.classes == ("a", "b")
