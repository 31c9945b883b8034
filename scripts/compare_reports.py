"""Check that two reports folders hold the same tables (columns and values), e.g. `nemesis demo` before and after a refactor.

    python scripts/compare_reports.py REPORTS_A REPORTS_B

Timing and checkpoint-path columns are ignored; rows are compared in key order, exactly. Tables are read
through the store, so a folder written before a column's rename (``method``, now ``regularizer``) compares
with one written after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from nemesis_analysis.storage import store
from nemesis_analysis.storage.schema import KEYS, TABLES

IGNORED = ("seconds", "checkpoint")  # wall-clock time and the folder the run was written to


def compare(a: Path, b: Path) -> list[str]:
    """One line per table: identical, or what differs."""
    lines = []
    for table in TABLES:
        paths = (a / table, b / table)
        if not any(p.exists() for p in paths):
            continue
        if not all(p.exists() for p in paths):
            lines.append(f"{table}: only in {next(p for p in paths if p.exists()).parent}")
            continue
        x, y = (
            store.read_table(p.parent, table, dedupe=False).drop(columns=list(IGNORED), errors="ignore") for p in paths
        )
        if list(x.columns) != list(y.columns):
            lines.append(f"{table}: columns differ: {list(x.columns)} vs {list(y.columns)}")
            continue
        key = list(KEYS[table])
        x, y = (f.sort_values(key).reset_index(drop=True) for f in (x, y))
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
            lines.append(f"{table}: identical ({len(x)} rows)")
        except AssertionError as error:
            lines.append(f"{table}: values differ: {str(error).splitlines()[0]}")
    return lines


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    lines = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(lines))
    return 0 if lines and all("identical" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
