"""Loads the published numbers of the Nemesis paper (package data, one CSV per table) for `--compare paper`.

Each row carries its ``source`` (figure or table of Fu et al., ICLR 2024), ``read_off_plot`` (True
where the value was read off a figure, with the precision in ``note``) and a ``note`` (e.g. that the
paper's "omega" label in the domain-generalization and base-to-new tables most likely means the
Nemesis weight, our ``norm_weight``, which is not confirmed). Tables: fewshot (average over 11
datasets per shot count), dg, base2new, frequency (figure 1(b) counts).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from nemesis_analysis.errors import ConfigError

PAPER_TABLES: tuple[str, ...] = ("fewshot", "dg", "base2new", "frequency")
# The caveat shown wherever a DG or base-to-new comparison is printed.
OMEGA_CAVEAT = (
    "The paper labels Nemesis rows 'omega = 1/10/20'; most likely the Nemesis weight (our --alpha, "
    "column norm_weight), not the sigmoid schedule. This mapping is not confirmed."
)


def load(table: str) -> pd.DataFrame:
    """The published values of ``table`` as a DataFrame (one row per value, with source and note)."""
    if table not in PAPER_TABLES:
        raise ConfigError(f"no published numbers for table {table!r}; tables: {', '.join(PAPER_TABLES)}")
    with resources.files(__name__).joinpath(f"{table}.csv").open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, keep_default_na=False, na_values=[""], dtype={"norm_weight": "float64"})
    frame["read_off_plot"] = frame["read_off_plot"].astype(str).str.lower() == "true"
    frame["note"] = frame["note"].fillna("")
    return frame
