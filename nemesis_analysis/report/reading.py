"""Reading a table for a view (figure or summary): the rows, or one line naming the command that writes them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nemesis_analysis.errors import NoDataError
from nemesis_analysis.storage import store

# What to run when a table is empty: the command that writes it.
PRODUCERS: dict[str, str] = {
    "corruptions": "`nemesis corrupt --dataset digits`",
    "trajectories": "`nemesis train --dataset digits` (or `nemesis demo`)",
    "runs": "`nemesis train --dataset digits` (or `nemesis demo`)",
}
_ROW_NAMES = {"corruptions": "corruption", "trajectories": "trajectory", "runs": "run"}


def read_nonempty(reports_dir: Path | str, table: str) -> pd.DataFrame:
    """The table, or NoDataError naming the command that writes it."""
    frame = store.read_table(reports_dir, table)
    if frame.empty:
        raise NoDataError(
            f"no {_ROW_NAMES[table]} rows in {store.table_path(reports_dir, table)}; run {PRODUCERS[table]} first"
        )
    return frame
