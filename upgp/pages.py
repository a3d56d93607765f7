"""What the chapters share to put numbers on a page: names made from labels, and ``glue_table``,
which glues every cell of a table indexed by label, so prose quotes a number by what it is and
never by where its row happens to sit."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd


def slug(*parts: Any) -> str:
    """A glue name from labels: ('blended', 'UPGP + repair', 0.05) -> 'blended_upgp_repair_0.05'."""
    return "_".join(filter(None, (re.sub(r"[^a-z0-9.]+", "_", str(p).lower()).strip("_")
                                  for p in parts)))


def shown(value: Any, digits: int = 2) -> Any:
    """A value as a page shows it: ints and strings as they are, floats rounded (to an int at 0
    digits), NaN as '-', and never '-0.0' (a value that rounds to zero shows as 0)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if math.isnan(value):
        return "-"
    return (round(value) if digits == 0 else round(value, digits)) + 0  # + 0 turns -0.0 into 0.0


def glue_table(prefix: str, table: pd.DataFrame, digits: int = 2) -> None:
    """Glue every cell of ``table`` as ``slug(prefix, *row label, column)`` (a MultiIndex row
    joins its levels). Returns nothing, so that a cell ending with it shows nothing."""
    from myst_nb import glue

    for label, row in table.astype(object).iterrows():  # each column keeps its type
        for column, value in row.items():
            name = slug(prefix, *(label if isinstance(label, tuple) else (label,)), column)
            glue(name, shown(value, digits), display=False)
