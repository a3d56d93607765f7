"""The same models trained serially and as local Ray tasks, back to back (issue 25).

    python benchmarks/ray_vs_serial.py [--preset cpu] [--arch vgg19_bn] [--seed 2]
                                       [--attacks clean badnets blended sig]
                                       [--ray-cache DIR] [--serial-cache DIR]

Serial: one process trains the models one after another with torch at every core. Ray: a local
Ray with one task per model, each task one thread, as many at a time as there are cores
(``upgp.parallel.run_cells``, what ``upgp reproduce --ray`` does). Each path trains into its own
model cache lacking these models (both share the decoded data memo, so neither times the JPEG
decode): ``--ray-cache`` defaults to ``$UPGP_CACHE``, so the Ray path's models are the ones kept;
``--serial-cache`` to a scratch folder beside it. Ray runs first. Prints a Markdown table of
each model's training seconds and each path's wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from upgp.io import cache_dir
from upgp.parallel import run_cells
from upgp.plan import REFERENCE, ModelNeed, cache_name, train_model


def timed_train(cell: tuple[ModelNeed, str, str | None]) -> tuple[str, float]:
    """Train one model; its cache file name and the seconds it took."""
    start = time.perf_counter()
    name = train_model(cell)
    return name, time.perf_counter() - start


def _fresh(cache: Path, names: list[str]) -> None:
    """``cache`` must lack the models timed; it shares the data memo of ``$UPGP_CACHE``."""
    present = [n for n in names if (cache / "models" / n).exists()]
    if present:
        raise SystemExit(f"{cache} already holds {', '.join(present)}: pick another cache")
    if not (cache / "data").exists() and (cache_dir() / "data").exists() \
            and cache != cache_dir():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "data").symlink_to((cache_dir() / "data").resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--arch", default="vgg19_bn")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--attacks", nargs="+", default=[REFERENCE, "badnets", "blended", "sig"])
    parser.add_argument("--ray-cache", type=Path, default=None)
    parser.add_argument("--serial-cache", type=Path, default=None)
    args = parser.parse_args()
    data = os.environ.get("UPGP_DATA")
    ray_cache = args.ray_cache or cache_dir()
    serial_cache = args.serial_cache or ray_cache.parent / f"{ray_cache.name}-serial-benchmark"
    cells = [(ModelNeed(a, args.arch, args.seed, (), "badnets" if a == REFERENCE else ""),
              args.preset, data) for a in args.attacks]
    names = [cache_name(c[0], args.preset, data) for c in cells]
    for cache in (ray_cache, serial_cache):
        _fresh(cache, names)
    cores = os.cpu_count() or 1
    seconds: dict[tuple[str, str], float] = {}

    os.environ["UPGP_CACHE"] = str(ray_cache)
    start = time.perf_counter()
    errors = run_cells(timed_train, cells, address="local", cpus=1,
                       on_done=lambda cell, out: seconds.__setitem__(("ray", out[0]), out[1]))
    ray_wall = time.perf_counter() - start
    if errors:
        raise SystemExit("; ".join(e.error for e in errors))

    os.environ["UPGP_CACHE"] = str(serial_cache)
    torch.set_num_threads(cores)
    start = time.perf_counter()
    for cell in cells:
        name, s = timed_train(cell)
        seconds[("serial", name)] = s
    serial_wall = time.perf_counter() - start
    shutil.rmtree(serial_cache / "models", ignore_errors=True)  # the Ray path's copies are kept

    print(f"# {len(cells)} models, preset {args.preset}, {args.arch}, seed {args.seed}: "
          f"serial ({cores} threads) vs local Ray ({cores} tasks at a time, 1 thread each); "
          f"{platform.machine()}, {cores} cores, torch {torch.__version__}")
    print("| model | serial s | Ray s |")
    print("|---|---|---|")
    for attack, name in zip(args.attacks, names):
        print(f"| {attack} | {seconds[('serial', name)]:,.0f} | {seconds[('ray', name)]:,.0f} |")
    print(f"| **wall time** | **{serial_wall:,.0f}** | **{ray_wall:,.0f}** |")
    print(f"\nRay / serial wall time: {ray_wall / serial_wall:.2f}")


if __name__ == "__main__":
    main()
