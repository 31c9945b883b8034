"""Per-seed values side by side with their mean, sample std and Student-t 95% interval (``stats.t_interval``)."""

from __future__ import annotations

import math

import pandas as pd

from nemesis_analysis.stats import t_interval


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (row, column): the value of each seed (columns ``seed <s>``), n, mean, std, ci_low, ci_high.

    ``per_seed`` has columns row, column, seed, value (``tables.per_seed_values``); rows keep its order.
    """
    if per_seed.empty:
        return pd.DataFrame(columns=["row", "column", "n", "mean", "std", "ci_low", "ci_high"])
    seeds = sorted(int(s) for s in per_seed["seed"].unique())
    records = []
    for (row, column), group in per_seed.groupby(["row", "column"], sort=False):
        values = group.set_index("seed")["value"].dropna()
        low, high = t_interval(values.to_numpy(float))
        record = {"row": row, "column": column}
        record.update({f"seed {s}": float(values[s]) if s in values.index else math.nan for s in seeds})
        record.update(
            n=int(values.size), mean=float(values.mean()) if values.size else math.nan,
            std=float(values.std(ddof=1)) if values.size > 1 else math.nan, ci_low=low, ci_high=high,
        )  # fmt: skip
        records.append(record)
    return pd.DataFrame(records)
