"""Image data as uint8 tensors in memory: CIFAR-10 (torchvision or an ImageFolder copy) or synthetic.

All images are ``(N, 3, H, W)`` uint8 tensors with int64 labels; models receive ``x / 255`` and
normalise internally. Decoding happens once; the decoded tensors are cached on disk.

Where CIFAR-10 comes from, in order: the ``data`` argument (``--data PATH``), the ``UPGP_DATA``
environment variable (an ImageFolder directory with train/ and test/, or a .tar.gz of one), else
torchvision's download into the cache folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .io import cache_dir, config_hash, load_tensors, save_tensors
from .presets import DATASETS, check_choice

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


class DataUnavailableError(RuntimeError):
    """Raised when no dataset can be found or downloaded; the message says how to provide one."""


@dataclass
class ImageData:
    """A train/test split of uint8 images with labels and a human-readable source."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def synthetic_data(
    n_train: int = 2000, n_test: int = 500, num_classes: int = 10, size: int = 32, seed: int = 0
) -> ImageData:
    """A small learnable dataset: each class is a smooth random colour template plus pixel noise.

    Used by tests and the ``smoke`` preset; a small CNN separates the classes in a few epochs.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=gen) * 170 + 40
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gen)]
        x = templates[y] + torch.randn(n, 3, size, size, generator=gen) * 30
        return x.round().clamp(0, 255).to(torch.uint8), y.long()

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    classes = tuple(f"class{i}" for i in range(num_classes))
    return ImageData(x_train, y_train, x_test, y_test, classes, f"synthetic (seed {seed})")


def _read_image_folder(root: Path) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Decode ``root/<class>/*`` into (images, labels, class names); a folder without class
    folders, an empty class, an unreadable image or one of another size is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not classes:
        raise DataUnavailableError(f"no class folders under {root}: the layout is "
                                   f"{root.name}/<class>/<image>, one folder per class")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = [f for f in sorted((root / name).iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
        if not files:
            raise DataUnavailableError(
                f"class folder {root / name} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))}); "
                "add its images or remove the folder")
        for file in files:
            try:
                with Image.open(file) as img:
                    pixels = np.asarray(img.convert("RGB"))
            except (OSError, UnidentifiedImageError) as err:
                raise DataUnavailableError(f"image {file} cannot be decoded ({type(err).__name__}); "
                                           "replace or remove it") from None
            if images and pixels.shape != images[0].shape:
                h, w = images[0].shape[:2]
                raise DataUnavailableError(
                    f"image {file} is {pixels.shape[1]}x{pixels.shape[0]} pixels, the others "
                    f"{w}x{h}: resize it or remove it (every image must have the same size)")
            images.append(pixels)
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), classes


def _folder_fingerprint(root: Path) -> list[int]:
    """Number of files and total bytes under ``root``: cheap, and changes when the copy changes."""
    count = size = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            count += 1
            size += os.path.getsize(os.path.join(dirpath, f))
    return [count, size]


def unpack_archive(archive: Path) -> Path:
    """Extract a .tar/.tar.gz/.tgz once into the cache; return the folder holding train/ and test/."""
    import gzip
    import shutil
    import tarfile
    import tempfile
    import zlib

    key = config_hash("archive", str(archive), archive.stat().st_size, archive.stat().st_mtime)
    target = cache_dir() / "data" / f"{archive.name.split('.')[0]}-{key}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            tmp.rename(target)  # atomic: a half-extracted folder never carries the final name
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataUnavailableError(
                f"archive {archive} cannot be unpacked ({reason}): it is truncated or corrupt; "
                "copy it again, or point UPGP_DATA / --data at an unpacked folder") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = [p.parent for p in sorted(target.rglob("train")) if (p.parent / "test").is_dir()]
    if not found:
        raise DataUnavailableError(f"archive {archive} holds no folder with train/ and test/")
    return found[0]


def load_image_folder(path: str | Path) -> ImageData:
    """Load ``path/train/<class>/*`` and ``path/test/<class>/*`` (decoded once, then cached).

    ``path`` may also be a .tar.gz/.tgz/.tar archive of such a folder (unpacked once).
    """
    root = Path(path).expanduser().resolve()
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        root = unpack_archive(root)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataUnavailableError(
            f"data folder {root} must contain train/ and test/ with one folder per class"
        )
    key = config_hash("imagefolder", str(root), _folder_fingerprint(root))
    cache_file = cache_dir() / "data" / f"imagefolder-{key}.pt"
    cached = load_tensors(cache_file)
    if cached is None:
        x_train, y_train, classes = _read_image_folder(root / "train")
        x_test, y_test, test_classes = _read_image_folder(root / "test")
        if test_classes != classes:
            raise DataUnavailableError(f"train and test class folders differ under {root}")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataUnavailableError(
                f"test images under {root / 'test'} are {x_test.shape[3]}x{x_test.shape[2]} "
                f"pixels, training images {x_train.shape[3]}x{x_train.shape[2]}: both must match")
        cached = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      classes=list(classes))
        save_tensors(cache_file, cached)
    copy = Path(path).name  # the copy's name, never a local path (results name it)
    source = f"ImageFolder {copy}"
    if tuple(cached["classes"]) == CIFAR10_CLASSES:
        source = f"CIFAR-10, JPEG copy ({copy})"
    return ImageData(cached["x_train"], cached["y_train"], cached["x_test"], cached["y_test"],
                     tuple(cached["classes"]), source)


def load_torchvision_cifar10() -> ImageData:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (downloads into the cache on first use)."""
    from torchvision.datasets import CIFAR10

    root = cache_dir() / "torchvision"
    try:
        train = CIFAR10(str(root), train=True, download=True)
        test = CIFAR10(str(root), train=False, download=True)
    except Exception as err:
        raise DataUnavailableError(
            f"CIFAR-10 could not be downloaded ({type(err).__name__}); offline, pass --data PATH "
            "or set UPGP_DATA to a folder with train/ and test/ class folders"
        ) from None

    def to_tensors(ds: CIFAR10) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.long)

    x_train, y_train = to_tensors(train)
    x_test, y_test = to_tensors(test)
    return ImageData(x_train, y_train, x_test, y_test, CIFAR10_CLASSES,
                     "CIFAR-10 (torchvision, original)")


def load_dataset(name: str = "cifar10", data: str | Path | None = None, seed: int = 0) -> ImageData:
    """Load ``cifar10`` (from ``data``, ``$UPGP_DATA`` or torchvision) or ``synthetic``."""
    if name == "synthetic":
        return synthetic_data(seed=seed)
    check_choice("dataset", name, DATASETS)
    path = data or os.environ.get("UPGP_DATA")
    if path:
        if not Path(path).expanduser().exists():
            raise DataUnavailableError(f"data path {path} does not exist (from --data or UPGP_DATA)")
        return load_image_folder(path)
    return load_torchvision_cifar10()


def split_reserve(n: int, reserve_ratio: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into (training indices, clean reserve indices), disjoint, fixed by seed."""
    if not 0.0 < reserve_ratio < 1.0:
        raise ValueError(f"reserve ratio {reserve_ratio} is outside (0, 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_reserve = max(1, round(n * reserve_ratio))
    return perm[n_reserve:].sort().values, perm[:n_reserve].sort().values
