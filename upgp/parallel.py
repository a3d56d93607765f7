"""Cells of a sweep as Ray tasks: the optional ``[ray]`` extra (``pip install -e ".[ray]"``).

``run_cells(fn, cells)`` runs ``fn(cell)`` for every cell as a Ray task with declared resources
(``cpus`` threads, a ``gpus`` fraction so that several tasks share one GPU), hands each result to
``on_done`` in the driver as it arrives, and returns the cells that raised with their error,
after every other cell has finished. With ``address`` None (or "local", what ``--ray`` alone
gives) a local Ray is started for the call and stopped after; otherwise the call joins that
cluster ("auto", "ray://host:10001", ...).
Workers see the driver's ``UPGP_CACHE`` and ``UPGP_DATA``, so the model and defense caches live
in a folder every worker reaches; cache writes are atomic, so two workers that finish the same
key leave one valid entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .io import cache_dir


@dataclass(frozen=True)
class CellError:
    cell: Any
    error: str  # 'ExceptionType: message', first line


def _in_worker(fn: Callable[[Any], Any], cell: Any, threads: int) -> Any:
    """Run one cell with torch at ``threads`` threads (a task's declared CPUs)."""
    import torch

    torch.set_num_threads(threads)
    return fn(cell)


def run_cells(fn: Callable[[Any], Any], cells: Iterable[Any], *, address: str | None = None,
              cpus: int = 1, gpus: float = 0.0,
              on_done: Callable[[Any, Any], None] | None = None) -> list[CellError]:
    """Every ``fn(cell)`` as a Ray task; ``on_done(cell, result)`` in the driver as each ends."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install -e \".[ray]\"") from None
    env = {"UPGP_CACHE": str(cache_dir()),
           **({"UPGP_DATA": os.environ["UPGP_DATA"]} if os.environ.get("UPGP_DATA") else {})}
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    task = ray.remote(_in_worker).options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                          runtime_env={"env_vars": env})
    pending = {task.remote(fn, cell, cpus): cell for cell in cells}
    errors = []
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # a cell that raised: report it, let the others finish
                cause = getattr(err, "cause", None) or err
                errors.append(CellError(cell, f"{type(cause).__name__}: {cause}".splitlines()[0]))
                continue
            if on_done is not None:
                on_done(cell, result)
    finally:
        if started:
            ray.shutdown()
    return errors
