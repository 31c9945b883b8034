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

# What the paper's numbers were measured on, for judging whether a comparison is like with like. The
# base-to-new table states neither backbone nor dataset set; CoCoOp's protocol uses the 11 datasets.
PAPER_DATASETS: tuple[str, ...] = (
    "caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "oxford_flowers", "oxford_pets",
    "stanford_cars", "sun397", "ucf101",
)  # fmt: skip
PAPER_BACKBONES: dict[str, str | None] = {"fewshot": "RN50", "dg": "RN50", "base2new": None, "frequency": "RN50"}


def load(table: str) -> pd.DataFrame:
    """The published values of ``table`` as a DataFrame (one row per value, with source and note)."""
    if table not in PAPER_TABLES:
        raise ConfigError(f"no published numbers for table {table!r}; tables: {', '.join(PAPER_TABLES)}")
    with resources.files(__name__).joinpath(f"{table}.csv").open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, keep_default_na=False, na_values=[""], dtype={"norm_weight": "float64"})
    frame["read_off_plot"] = frame["read_off_plot"].astype(str).str.lower() == "true"
    frame["note"] = frame["note"].fillna("")
    return frame
