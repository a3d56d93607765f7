"""Defenses x attacks x architectures x seeds over cached backdoored models, one table row per run.

``sweep(...)`` appends one row per finished run to a CSV table and rewrites it atomically after
each run, so an interrupted sweep loses nothing: rerun the same call and it skips every row
already there (matched on preset, epochs, defense, attack, arch, seed and the defense config's
hash) and computes only the rest. Backdoored models and defense results are also cached on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import product
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from .attacks import create_attack
from .defenses import defense_config
from .io import atomic_write, config_hash
from .models import MODELS
from .presets import check_choice, get_preset
from .runs import run_defense
from .scenarios import backdoored_model


class SweepIncomplete(RuntimeError):
    """Some cells of a sweep raised; the others finished and are in the table."""


KEY = ["preset", "epochs", "defense", "attack", "arch", "seed", "config_id"]


def result_row(result: dict[str, Any], config_id: str) -> dict[str, Any]:
    """Flatten a defense result (``run_defense``) into one tidy row."""
    run = result["run"]
    row = {"preset": run["preset"], "epochs": run["epochs"], "defense": result["defense"],
           "attack": run["attack"], "arch": run["arch"], "seed": run["seed"],
           "config_id": config_id, "width": run["width"], "data": run["data"],
           "scale": run["scale"]}
    row.update({f"{k}_before": v for k, v in result["before"].items()})
    row.update(result["after"])
    row.update(der=result["der"], wall_seconds=result["wall_seconds"],
               train_epoch_seconds=result["train_epoch_seconds"])
    for k in ("auroc", "precision", "recall", "fpr", "flagged"):
        if k in result.get("detection", {}):
            row[f"detection_{k}"] = result["detection"][k]
    return row


def defense_table(table: pd.DataFrame, defenses: Iterable[str]) -> pd.DataFrame:
    """ACC, ASR, RA, DER and wall time per defense and attack from sweep rows, led by a "none"
    row per attack (the backdoored model before any defense), defenses in the given order."""
    cols = ["defense", "attack", "acc", "asr", "ra", "der", "wall_seconds"]
    none = (table.drop_duplicates("attack")[["attack", "acc_before", "asr_before", "ra_before"]]
            .rename(columns=lambda c: c.replace("_before", ""))
            .assign(defense="none", der=float("nan"), wall_seconds=0.0))
    rank = {d: i for i, d in enumerate(["none", *defenses])}
    return (pd.concat([none[cols], table[cols]], ignore_index=True)
            .sort_values(["defense", "attack"],
                         key=lambda s: s.map(rank) if s.name == "defense" else s))


def defense_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ACC, ASR, RA, DER and wall time over the attacks, one row per defense of a
    ``defense_table`` (in its order)."""
    mean = rows.groupby("defense", sort=False)[["acc", "asr", "ra", "der", "wall_seconds"]].mean()
    mean.columns = ["mean ACC", "mean ASR", "mean RA", "mean DER", "mean wall s"]
    return mean


def read_table(path: Path) -> pd.DataFrame:
    """The sweep table at ``path`` (empty if absent); a file that cannot be parsed is an error."""
    if not path.exists():
        return pd.DataFrame(columns=KEY)
    try:
        table = pd.read_csv(path, dtype={"config_id": str, "epochs": "Int64"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"sweep table {path} is corrupt ({err}); move it away to start over") from err
    if "epochs" not in table:  # written before epochs were part of the key: matches nothing now
        table.insert(1, "epochs", pd.NA)
    return table


def _model_rows(cell: tuple, on_row: Callable[[dict[str, Any]], None] | None = None
                ) -> list[dict[str, Any]]:
    """One backdoored model's runs: ``cell`` = (attack, arch, seed, preset, data, [(defense,
    config, key), ...]); one row per defense, each also handed to ``on_row`` as it is done. A
    Ray task of ``sweep(..., ray=...)``."""
    attack, arch, seed, preset, data, runs = cell
    scenario = backdoored_model(attack, arch, preset, seed, data, progress=False)
    rows = []
    for defense, config, key in runs:
        rows.append(result_row(run_defense(scenario, defense, config), key[-1]))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def sweep(defenses: Iterable[str], attacks: Iterable[str], archs: Iterable[str],
          seeds: Iterable[int] = (0,), preset: str = "cpu", out: str | Path = "sweep.csv",
          data: str | Path | None = None, settings: dict[str, dict[str, Any]] | None = None,
          progress: bool = True, ray: str | None = None, ray_cpus: int = 1,
          ray_gpus: float = 0.0) -> pd.DataFrame:
    """Run every combination not yet in the table at ``out``; returns the rows of this call's
    combinations (the file may also hold rows of other combinations or of older configs), in
    the order of the combinations.

    ``settings`` maps a defense name to config changes (as ``upgp defend --set``). ``ray``: run
    each backdoored model's defenses as one Ray task (``parallel.run_cells``; "local" starts a
    Ray for the call, else a cluster address such as "auto"), each with ``ray_cpus`` threads and
    ``ray_gpus`` of a GPU; a model whose task raises is reported in one line after the others
    have finished, and its rows are missing from the table (a rerun computes only them).
    """
    out = Path(out)
    table = read_table(out)
    done = {tuple(str(v) for v in r) for r in table[KEY].itertuples(index=False)}
    for attack in attacks:  # every name and setting is checked before the first run
        create_attack(attack)
    for arch in archs:
        check_choice("model", arch, sorted(MODELS))
    cells: dict[tuple, list] = {}  # (attack, arch, seed, preset) -> runs still to do
    order = []
    for attack, arch, seed, defense in product(attacks, archs, seeds, defenses):
        preset_ = get_preset(preset, attack, arch)
        config = defense_config(defense, preset_, seed, **(settings or {}).get(defense, {}))
        key = (preset, str(preset_.epochs), defense, attack, arch, str(seed),
               config_hash(config, length=8))
        order.append(key)
        if key not in done:
            cells.setdefault((attack, arch, seed, preset_), []).append((defense, config, key))
    todo = [(*model, data, runs) for model, runs in cells.items()]

    def record(rows: list[dict[str, Any]]) -> None:  # the file is whole after every write
        nonlocal table
        new = pd.DataFrame(rows)
        table = new if table.empty else pd.concat([table, new], ignore_index=True)
        atomic_write(out, lambda tmp, t=table: t.to_csv(tmp, index=False))

    if ray is None:  # a row is written as each run ends: an interruption loses nothing finished
        for cell in tqdm(todo, disable=not progress, desc="sweep"):
            _model_rows(cell, on_row=lambda row: record([row]))
        errors = []
    else:
        from .parallel import run_cells

        errors = run_cells(_model_rows, todo, address=ray,
                           cpus=ray_cpus, gpus=ray_gpus,
                           on_done=lambda cell, rows: record(rows))
    rank = {key: i for i, key in enumerate(order)}
    keys = [tuple(str(v) for v in r) for r in table[KEY].itertuples(index=False)]
    others = [i for i, k in enumerate(keys) if k not in rank]
    ours = sorted((i for i, k in enumerate(keys) if k in rank), key=lambda i: rank[keys[i]])
    if others + ours != list(range(len(table))):  # Ray's rows arrive as tasks end
        table = table.iloc[others + ours].reset_index(drop=True)
        atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
    if errors:
        failed = "; ".join(f"{e.cell[0]}/{e.cell[1]}/seed {e.cell[2]}: {e.error}" for e in errors)
        raise SweepIncomplete(f"{len(errors)} of {len(todo)} models failed ({failed}); the other "
                           f"rows are in {out}, and a rerun computes only the missing ones")
    return table.iloc[len(others):].reset_index(drop=True)
