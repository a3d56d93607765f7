"""What a chapter will train before it runs: ``upgp plan`` (issue 25).

``needs(notebook, parameters)`` lists the models a chapter loads or trains: its backdoored models
(attack, architecture, seed, preset overrides) and the backdoor-free ones it compares with
(``clean_reference``, the LC surrogate), read from the chapter's parameters by the rules its cells
follow. ``plan`` names each one's cache file, says which are cached and estimates the training
time of the others from the training rate of models of the same architecture and size: the
cached ones' (this machine's), else the rate the committed ``results/<preset>/train-*.json``
record (the machine that produced them), over the images the missing model trains on. The
slow book test runs every chapter at the smoke preset with ``UPGP_RECORD_MODELS`` set and
checks that the models the chapters used are exactly the ones planned.
"""

from __future__ import annotations

import ast
import functools
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .attacks import create_attack
from .io import load_tensors
from .models import MODELS, create_model
from .presets import Preset, get_preset
from .regimes import TRAIN_IMAGES, grid, select
from .reproduce import _declared, model_seeds, notebook_parameters, resolve

REFERENCE = "clean"  # the attack column of a backdoor-free model


@dataclass(frozen=True)
class ModelNeed:
    """One model a chapter needs: backdoored by ``attack`` (``REFERENCE``: the backdoor-free
    model a scenario of ``of_attack`` compares with, or that LC crafts its poisons against)."""

    attack: str
    arch: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()
    of_attack: str = ""  # for a clean model: the attack whose preset it is trained at

    def preset(self, name: str) -> Preset:
        return get_preset(name, self.of_attack or self.attack, self.arch, **dict(self.overrides))


@dataclass
class Chapter:
    """The models of one chapter, as ``needs`` adds them."""

    out: list[ModelNeed] = field(default_factory=list)

    def add(self, attacks: Iterable[str], archs: Iterable[str], seeds: Iterable[int],
            clean: bool = False, **overrides: Any) -> None:
        """Every attack x arch x seed; with ``clean``, its backdoor-free reference model too.
        An LC model brings its clean PreAct-ResNet18 surrogate."""
        o = tuple(sorted(overrides.items()))
        for arch in archs:
            for seed in seeds:
                for attack in attacks:
                    self.out.append(ModelNeed(attack, arch, seed, o))
                    if attack == "lc":
                        self.out.append(ModelNeed(REFERENCE, "preact_resnet18", seed, o, attack))
                    if clean:
                        self.out.append(ModelNeed(REFERENCE, arch, seed, o, attack))


def _names(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def needs(notebook: str, parameters: dict[str, Any] | None = None) -> list[ModelNeed]:
    """The models ``notebook`` needs with ``parameters`` over its declared defaults (the
    preset's smoke grid included, as ``upgp reproduce`` runs it), each once, in first-use order."""
    path = resolve([notebook])[0]
    declared = {k: v["default"] for k, v in _declared(path).items()}
    p = {**{k: ast.literal_eval(v) for k, v in declared.items()},
         **notebook_parameters(path.stem, str((parameters or {}).get("preset", "cpu")),
                               parameters)}
    c, chapter = Chapter(), path.stem.split("_")[0]
    seed = int(p.get("seed", 0))
    if chapter in ("00", "02"):
        c.add([p["attack"]], [p["arch"]], [seed])
    elif chapter in ("01", "03", "07"):
        c.add(_names(p["attacks"]), _names(p["archs"]), [seed])
        if chapter == "01":
            c.add([p["sweep_attack"]], _names(p["archs"])[:1], [seed])
        if chapter == "07":
            c.add(_names(p["baseline_attacks"]), _names(p["archs"])[:1], [seed])
    elif chapter == "04":
        c.add(_names(p["attacks"]), _names(p["archs"]), [seed], clean=True)
        extra = [int(s) for s in _names(p["extra_seeds"])]
        if extra:
            c.add(_names(p["seed_attacks"]), _names(p["seed_archs"]), [seed, *extra], clean=True)
    elif chapter == "05":
        c.add(_names(p["attacks"]), [p["arch"], *_names(p["more_archs"])], [seed])
    elif chapter == "06":
        c.add([p["attack"]], [p["arch"]], [seed])
        for ratio in (float(r) for r in _names(p["poison_ratios"])):
            c.add([p["attack"]], [p["arch"]], [seed], poison_ratio=ratio)
        c.add(_names(p["repair_attacks"]), [p["arch"]], [seed])
        c.add(_names(p["redirection_attacks"]), [p["redirection_arch"]], [seed], clean=True)
    elif chapter in ("08", "09"):
        c.add(_names(p["attacks"]), [p["arch"]], [int(s) for s in _names(p["seeds"])],
              clean=True)
    elif chapter in ("10", "11"):
        for arch, seeds in model_seeds(p["models"]).items():
            c.add(_names(p["attacks"]), [arch], seeds, clean=True)
    elif chapter == "12":
        for r in select(grid(p["preset"]), _names(p["regimes"]), _names(p["archs"]),
                        _names(p["attacks"])):
            c.add([r.attack], [r.arch], [r.seed], clean=True, **r.overrides)
    else:
        raise ValueError(f"no plan for notebook {path.stem}; plan.needs knows chapters 00-12")
    return list(dict.fromkeys(c.out))


def cache_name(need: ModelNeed, preset: str, data: str | None) -> str:
    """The model cache file of ``need`` at ``preset`` (the data copy is read for its
    fingerprint, which every model's key holds)."""
    from .scenarios import backdoored_model_path, clean_model_path, load_data_cached

    settings = need.preset(preset)
    _, fingerprint = load_data_cached(settings, data, need.seed)
    if need.attack == REFERENCE:
        return clean_model_path(need.arch, settings, need.seed, fingerprint).name
    return backdoored_model_path(create_attack(need.attack), need.arch, settings, need.seed,
                                 fingerprint).name


def _size(state: dict[str, Any]) -> int:
    return sum(v.numel() for v in state.values())


@functools.cache
def _model_size(arch: str, width: int) -> int:
    """Parameters and buffers of ``arch`` at ``width`` (10 classes), built once per pair."""
    return _size(create_model(arch, 10, width).state_dict())


def _medians(rates: Iterable[tuple[tuple[str, int], float]]) -> dict[tuple[str, int], float]:
    """The median rate per (architecture, model size) key."""
    seen: dict[tuple[str, int], list[float]] = {}
    for key, rate in rates:
        seen.setdefault(key, []).append(rate)
    return {k: statistics.median(v) for k, v in seen.items()}


def _throughput(models: Path) -> dict[tuple[str, int], float]:
    """Median training images per second of the cached models, by (architecture, model size):
    the rate this cache's machine trained each kind of model at."""
    def rates() -> Iterator[tuple[tuple[str, int], float]]:
        for path in sorted(models.glob("*.pt")):
            cached = load_tensors(path) or {}
            rate = cached.get("info", {}).get("images_per_second")
            arch = next((a for a in MODELS if f"-{a}-" in path.name), None)
            if rate and arch:
                yield (arch, _size(cached["state_dict"])), rate
    return _medians(rates())


def _recorded_throughput(preset: str) -> dict[tuple[str, int], float]:
    """Median training images per second by (architecture, model size) that the committed
    training records of ``preset`` (``results/<preset>/train-*.json``) hold: the rate of the
    machine that produced the book's results, for a cache with no model of a kind."""
    from .io import load_json
    from .reproduce import results_dir

    def rates() -> Iterator[tuple[tuple[str, int], float]]:
        for path in sorted(results_dir(preset).glob("train-*.json")):
            record = load_json(path) or {}
            run, rate = record.get("run", {}), record.get("training", {}).get("images_per_second")
            if rate and run.get("arch") in MODELS and run.get("width"):
                yield (run["arch"], _model_size(run["arch"], run["width"])), rate
    return _medians(rates())


def training_images(settings: Preset) -> int:
    """Images one training run passes over: epochs x the full batches of the training set
    left after the reserve is split off."""
    train = round(TRAIN_IMAGES[settings.dataset] * (1 - settings.reserve_ratio))
    return settings.epochs * (train // settings.batch_size) * settings.batch_size


def _needed(notebooks: Iterable[str], preset: str, parameters: dict[str, Any] | None,
            data: str | None) -> dict[str, tuple[ModelNeed, list[str]]]:
    """cache file -> (the model, the chapters that need it), each model once, in chapter order."""
    out: dict[str, tuple[ModelNeed, list[str]]] = {}
    for nb in notebooks:
        stem = resolve([nb])[0].stem
        for need in needs(stem, {**(parameters or {}), "preset": preset}):
            chapters = out.setdefault(cache_name(need, preset, data), (need, []))[1]
            if stem[:2] not in chapters:
                chapters.append(stem[:2])
    return out


def plan(notebooks: Iterable[str], preset: str, parameters: dict[str, Any] | None = None,
         data: str | None = None) -> pd.DataFrame:
    """One row per model the notebooks need (each once, with the chapters that use it): its
    cache file, whether it is cached, its training seconds (*train s*) at the rate of this
    cache's models of its architecture and width, else at the rate ``results/<preset>`` records
    (*timed by*: ``cache``, ``results`` or ``untimed``, with NaN seconds), and the seconds left to
    train it (*estimated s*: 0 when cached)."""
    from .io import cache_dir

    rates = {"cache": _throughput(cache_dir() / "models"),
             "results": _recorded_throughput(preset)}
    rows = []
    for name, (need, chapters) in _needed(notebooks, preset, parameters, data).items():
        settings = need.preset(preset)
        cached = (cache_dir() / "models" / name).exists()
        key = (need.arch, _model_size(need.arch, settings.width))
        timed_by = next((source for source, rate in rates.items() if key in rate), "untimed")
        rate = rates[timed_by][key] if timed_by in rates else float("nan")
        seconds = training_images(settings) / rate
        rows.append({"chapters": ", ".join(chapters), "attack": need.attack, "arch": need.arch,
                     "seed": need.seed, "epochs": settings.epochs, "width": settings.width,
                     "poison ratio": settings.poison_ratio, "cached": cached,
                     "train s": seconds, "timed by": timed_by,
                     "estimated s": 0.0 if cached else seconds, "cache file": name})
    return pd.DataFrame(rows)


def train_model(cell: tuple[ModelNeed, str, str | None]) -> str:
    """Train (or load) one planned model into the model cache; returns its cache file name."""
    from .scenarios import backdoored_model, build_scenario, clean_reference_model

    need, preset, data = cell
    overrides = dict(need.overrides)
    if need.attack == REFERENCE:  # the scenario only lends its data split: any attack will do
        clean_reference_model(build_scenario("badnets", need.arch, need.preset(preset),
                                             need.seed, data, progress=False), data, False)
    else:
        backdoored_model(need.attack, need.arch, preset, need.seed, data, progress=False,
                         **overrides)
    return cache_name(need, preset, data)


def train_missing(notebooks: Iterable[str], preset: str, data: str | None = None, *,
                  parameters: dict[str, Any] | None = None, address: str | None = None,
                  cpus: int = 1, gpus: float = 0.0) -> list[str]:
    """Train the models the notebooks need and the cache lacks as Ray tasks
    (``parallel.run_cells``): the backdoor-free ones first (LC crafts its poisons against one),
    then the backdoored ones (``parameters``: the notebooks', as ``needs`` takes them). Returns
    the errors of cells that raised ('file: error')."""
    from .io import cache_dir
    from .parallel import run_cells

    missing = [need for name, (need, _) in _needed(notebooks, preset, parameters, data).items()
               if not (cache_dir() / "models" / name).exists()]
    errors: list[str] = []
    for clean in (True, False):
        cells = [(need, preset, data) for need in missing if (need.attack == REFERENCE) == clean]
        done = lambda cell, name: print(f"    trained {name}", flush=True)  # noqa: E731
        errors += [f"{cache_name(e.cell[0], preset, data)}: {e.error}"
                   for e in run_cells(train_model, cells, address=address, cpus=cpus, gpus=gpus,
                                      on_done=done)]
    return errors
