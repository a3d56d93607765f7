"""Execute the book's notebooks with papermill: ``upgp reproduce`` and ``upgp run``.

``reproduce(preset)`` runs every notebook in ``notebooks/`` with ``preset`` injected (at the
smoke preset, with the smaller grid of ``SMOKE_GRID``), several at a time with ``jobs``. The executed
copies of the book's own preset (cpu) go to ``book/notebooks/`` and figures to ``book/figures/``;
other presets write under ``runs/<preset>/`` so they never overwrite the published book; at the
book's preset the figures page (``upgp.gallery``) is written anew. Tidy results go to
``results/<preset>/``. A failing notebook is reported; the others still run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .attacks import create_attack
from .io import atomic_write
from .method import UPGPConfig
from .presets import PRESETS, check_choice, checked_value

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
BOOK_PRESET = "cpu"


def notebooks() -> dict[str, Path]:
    """The book's notebooks by name (file stem), in chapter order."""
    return {p.stem: p for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))}


def resolve(names: Iterable[str] | None) -> list[Path]:
    """Notebook paths for names (a stem, its number prefix or a path); all when None."""
    found = notebooks()
    if not names:
        return list(found.values())
    out = []
    for name in names:
        stem = Path(name).stem
        match = [p for s, p in found.items() if s == stem or s.split("_")[0] == stem]
        if not match:
            raise ValueError(f"unknown notebook {name!r}; choose one of: {', '.join(found)}")
        out.append(match[0])
    return out


def results_dir(preset: str) -> Path:
    """``$UPGP_RESULTS`` (set by the runner) or ``results/<preset>/``."""
    path = Path(os.environ.get("UPGP_RESULTS", ROOT / "results" / preset))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_table(df: pd.DataFrame, name: str, preset: str) -> Path:
    """Write a tidy results table atomically as ``<results dir>/<name>.csv``."""
    path = results_dir(preset) / f"{name}.csv"
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return path


def model_seeds(spec: str) -> dict[str, list[int]]:
    """Parse a notebook's ``models`` parameter, ``"arch:seed,seed;arch:seed"``, into
    {architecture: [seeds]} in the order given; a one-line error for a malformed part."""
    out: dict[str, list[int]] = {}
    for part in spec.split(";"):
        arch, _, seeds = part.strip().partition(":")
        values = seeds.split(",")
        if not arch or not all(v.strip().isdigit() for v in values):
            raise ValueError(f"bad models part {part!r} in {spec!r}; write architecture:seeds "
                             "parts separated by ';', e.g. 'vgg19_bn:0,1,2;preact_resnet18:0'")
        out[arch] = [int(v) for v in values]
    return out


def _epochs_from_throughput(train: dict[str, Any]) -> int:
    """Passes over the training set of an ``upgp train`` file written before runs recorded their
    epochs: training time x throughput / training-set size (the last partial batch is dropped)."""
    info = train["training"]
    return round(info["train_seconds"] * info["images_per_second"] / train["run"]["train_size"])


def cli_runs(folder: Path) -> pd.DataFrame:
    """One row per attack x arch from the JSON files of ``upgp train`` (``train-*.json``) and
    ``upgp defend`` with and without projection (``upgp-*.json``, ``upgp-noproj-*.json``, and
    ``upgp-set-*.json``, ``upgp-noproj-set-*.json`` for runs with ``--set`` overrides, named in
    column *--set*) in ``folder``, as ``scripts/scale_run.sh`` writes them; empty if none."""
    rows = []
    for path in sorted(folder.glob("train-*.json")):
        train = json.loads(path.read_text())
        run, info = train["run"], train["training"]
        defaults = create_attack(run["attack"]).params()
        changed = {k: v for k, v in run["attack_params"].items() if defaults.get(k) != v}
        row = {"attack": run["attack"], "arch": run["arch"], "preset": run["preset"],
               "width": run["width"],
               "epochs": run["epochs"] if "epochs" in run else _epochs_from_throughput(train),
               "seed": run["seed"], "poison ratio": run["poison_ratio"],
               "attack params": ", ".join(f"{k}={v}" for k, v in changed.items()) or "default",
               "machine": info.get("machine", ""),
               "train s": info["train_seconds"], "commit": train.get("commit", "not recorded"),
               **{k.upper(): v for k, v in train["no_defense"].items()}}
        for prefix, label in (("upgp", "UPGP"), ("upgp-noproj", "no-proj"),
                              ("upgp-set", "UPGP --set"), ("upgp-noproj-set", "no-proj --set")):
            other = folder / path.name.replace("train-", f"{prefix}-", 1)
            if other.exists():
                r = json.loads(other.read_text())
                if label == "UPGP --set":
                    default = dataclasses.asdict(UPGPConfig())
                    row["--set"] = ", ".join(f"{k}={v}" for k, v in r["config"].items()
                                             if k not in ("bf16", "seed") and default.get(k) != v)
                row.update({f"{label} {k.upper()}": v for k, v in r["after"].items()})
                row[f"{label} steps"] = r["upgp"]["removal_steps"]
                row[f"{label} stop"] = r["upgp"]["removal_stop"]
                if label == "UPGP":
                    row.update(AUROC=r["detection"]["auroc"], flagged=r["detection"]["flagged"],
                               precision=r["detection"]["precision"],
                               recall=r["detection"]["recall"])
        rows.append(row)
    return pd.DataFrame(rows)


def _declared(notebook: Path) -> dict[str, dict[str, Any]]:
    """The parameters of ``notebook``'s tagged cell, as ``papermill --help-notebook`` lists them."""
    import papermill as pm

    return pm.inspect_notebook(str(notebook))


def parse_parameters(name: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Command-line ``-p NAME VALUE`` pairs for notebook ``name``: a string parameter takes the
    text as written, any other its JSON literal (``3``, ``0.5``, ``true``)."""
    declared = _declared(resolve([name])[0])
    out: dict[str, Any] = {}
    for key, text in pairs:
        if declared.get(key, {}).get("inferred_type_name") == "str":
            out[key] = text
            continue
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """One-line error unless every name in ``parameters`` is a parameter of ``notebook`` (as
    ``papermill --help-notebook`` lists them) with a value of its type, and a ``preset`` is known."""
    declared = _declared(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"notebook {notebook.stem} has no parameter {', '.join(unknown)}; "
                         f"its parameters: {', '.join(declared)}")
    for name, value in parameters.items():
        checked_value(f"notebook {notebook.stem} parameter", name, value,
                      declared[name]["inferred_type_name"])
    if "preset" in parameters:
        check_choice("preset", parameters["preset"], PRESETS)


@contextmanager
def _kernel_environment(figures: Path, results: Path) -> Iterator[None]:
    """Set what the kernels inherit from the runner (the figure and results folders); the
    runner's environment is restored after."""
    figures.mkdir(parents=True, exist_ok=True)
    env = {"UPGP_FIGURES": str(figures), "UPGP_RESULTS": str(results)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _checkout_relative(path: str) -> str:
    """``path`` relative to the checkout (its file name if it lies outside)."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return Path(path).name


def _drop_local_paths(output: Path) -> None:
    """papermill records the absolute paths it read and wrote; an executed notebook keeps them
    relative to the checkout, so that no committed file names the machine it ran on."""
    import nbformat

    nb = nbformat.read(output, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = _checkout_relative(meta[key])
    nbformat.write(nb, output)


def _papermill(notebook: Path, output: Path, parameters: dict[str, Any]) -> float:
    """Run one notebook with papermill in the current environment; returns its wall time."""
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=parameters,
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, kernel_name="python3")
    finally:
        if output.exists():
            _drop_local_paths(output)
    return time.perf_counter() - start


def execute(notebook: Path, output: Path, parameters: dict[str, Any], figures: Path,
            results: Path) -> float:
    """Run one notebook with papermill; returns its wall time in seconds."""
    with _kernel_environment(figures, results):
        return _papermill(notebook, output, parameters)


# The smoke preset checks that every chapter runs end to end on synthetic data; it is not a
# result. Its grid is each chapter's own cut down so that every code path still runs once
# (every attack is trained and defended at smoke by tests/test_end_to_end.py): one attack,
# Blended, whose smoke backdoor takes hold; both architectures where one figure sets them side
# by side (01, 03), else one (a figure per architecture is the same code for each).
SMOKE_GRID: dict[str, dict[str, Any]] = {
    "01_unlearning_perturbation": {"attacks": "blended", "sweep_attack": "blended",
                                   "stop_levels": "0.5,0.1"},
    "03_detection": {"attacks": "blended", "roc_attack": "blended"},
    "04_main_results": {"attacks": "blended", "archs": "vgg19_bn", "extra_seeds": "1",
                        "seed_attacks": "blended"},
    "05_baselines": {"attacks": "blended", "arch": "vgg19_bn", "more_archs": ""},
    "06_ablations": {"attack": "blended", "projections": "none,vector", "z_thresholds": "2.5",
                     "strengths": "0.3",
                     "reserve_fractions": "0.4", "removal_budget": 40, "poison_ratios": "0.1",
                     "repair_attacks": "blended", "redirection_attacks": "blended",
                     "removal_losses": "bounded"},
    "07_cost": {"attacks": "blended", "archs": "vgg19_bn", "baseline_attacks": "blended"},
    "08_repair_selection": {"seeds": "0", "attacks": "blended"},
    "09_reemergence": {"seeds": "0", "attacks": "blended"},
    "10_reserve_calibration": {"models": "vgg19_bn:0", "attacks": "blended"},
    "11_projection_seeds": {"models": "vgg19_bn:0", "attacks": "blended"},
    "12_regimes": {"regimes": "preset,clean", "archs": "vgg19_bn", "attacks": "blended",
                   "configs": "new default"},
}


def notebook_parameters(notebook: str, preset: str, parameters: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """What ``reproduce`` runs ``notebook`` with: the preset, at smoke its ``SMOKE_GRID``, then
    ``parameters`` over both."""
    grid = SMOKE_GRID.get(notebook, {}) if preset == "smoke" else {}
    return {"preset": preset, **grid, **(parameters or {})}


def reproduce(preset: str = BOOK_PRESET, only: Iterable[str] | None = None,
              parameters: dict[str, Any] | None = None, jobs: int = 1) -> pd.DataFrame:
    """Execute the notebooks at ``preset``, ``jobs`` at a time; return (and save) a table of
    status, wall time and models trained (added to the cache), in chapter order. Notebooks
    share the model and defense caches, whose writes are atomic. Each kernel keeps torch's
    thread count: a model trained with another thread count has other weights, so the numbers
    do not depend on ``jobs``."""
    selected = resolve(only)
    runs = {nb.stem: notebook_parameters(nb.stem, preset, parameters) for nb in selected}
    for nb in selected:
        check_parameters(nb, runs[nb.stem])
    if jobs < 1:
        raise ValueError(f"jobs {jobs} must be >= 1")
    base = ROOT / "book" if preset == BOOK_PRESET else ROOT / "runs" / preset
    results = ROOT / "results" / preset

    def run(nb: Path) -> dict[str, Any]:
        print(f"{nb.stem} (preset {preset}) ...", flush=True)
        models_before = _cached_models()
        try:
            seconds = _papermill(nb, base / "notebooks" / nb.name, runs[nb.stem])
            print(f"    {nb.stem} ok in {seconds:.0f} s", flush=True)
            row = {"notebook": nb.stem, "status": "ok", "seconds": round(seconds, 1)}
        except Exception as err:  # report and go on with the next notebook
            print(f"    {nb.stem} FAILED: {err}".splitlines()[0][:300], flush=True)
            traceback.print_exc(limit=1)
            row = {"notebook": nb.stem, "status": f"failed: {type(err).__name__}",
                   "seconds": float("nan")}
        return {**row, "models trained": len(_cached_models() - models_before)}

    with _kernel_environment(base / "figures", results):
        with ThreadPoolExecutor(jobs) as pool:
            rows = list(pool.map(run, selected))
    table = pd.DataFrame(rows)
    times = results / "notebook_times.csv"
    merged = table
    if times.exists():
        old = pd.read_csv(times)
        merged = pd.concat([old[~old.notebook.isin(table.notebook)], table]).sort_values("notebook")
    results.mkdir(parents=True, exist_ok=True)
    atomic_write(times, lambda tmp: merged.to_csv(tmp, index=False))
    if preset == BOOK_PRESET:
        from .gallery import write_page  # it reads the TOC and the executed chapters

        write_page()
    return table


def _cached_models() -> set[str]:
    """The model cache's files: a chapter's *models trained* is what its run added to them (with
    ``jobs`` > 1, what the chapters running beside it added too)."""
    from .io import cache_dir

    return {p.name for p in (cache_dir() / "models").glob("*.pt")}


def run_one(name: str, parameters: dict[str, Any], output: Path | None = None) -> Path:
    """Rerun one notebook with other parameters into ``runs/`` (never over the book)."""
    nb = resolve([name])[0]
    check_parameters(nb, parameters)
    tag = "-".join(f"{k}={v}" for k, v in sorted(parameters.items())) or "default"
    base = output or ROOT / "runs" / f"{nb.stem}-{tag}"
    preset = str(parameters.get("preset", BOOK_PRESET))
    from papermill.exceptions import PapermillExecutionError

    try:
        seconds = execute(nb, base / nb.name, parameters, base / "figures", base / "results")
    except PapermillExecutionError as err:  # e.g. a parameter value the notebook refuses
        raise ValueError(f"notebook {nb.stem} stopped in cell [{err.exec_count}] with "
                         f"{err.ename}: {err.evalue} (the executed copy, with its traceback: "
                         f"{base / nb.name})") from None
    print(f"{nb.stem}: ok in {seconds:.0f} s -> {base / nb.name}; "
          f"results in {base / 'results'} (preset {preset})")
    atomic_write(base / "parameters.json", lambda tmp: tmp.write_text(json.dumps(parameters)))
    return base / nb.name
