"""Low-Norm Effect frequency and seed aggregates computed from the tables' DataFrames (pure pandas).

Every function takes the tidy tables (runs, trajectories, corruptions, evaluations: one row per observation,
identity columns first; see :mod:`nemesis_analysis.storage.schema`) as DataFrames and returns a
new DataFrame; nothing here trains, loads a model or imports torch, so a notebook can
load tables and figures in a fraction of a second.

Corruption tables may hold the same observation twice (a resumed or repeated run appends
it again); every function first keeps the *last* row per `schema.KEYS["corruptions"]`. A base2new
run's rows are measured on its base and on its new classes (`eval_classes`); a view aggregates the
"all" rows unless it groups by `eval_classes` (:func:`rows_for_view`), so subsets are never pooled.
Identity columns, table keys and the corruption key live in :mod:`nemesis_analysis.storage.schema`.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from nemesis_analysis.storage import schema
from nemesis_analysis.errors import ConfigError, NoDataError

logger = logging.getLogger(__name__)

# What a paper table aggregates over: seeds vary inside a group, nothing else does.
GROUP_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "shots", "prompt_method", "regularizer")
# One corruption observation within the table: run_id plus schema.CORRUPTION_KEY.
_KEY: tuple[str, ...] = schema.KEYS["corruptions"]
CORRUPTION_OPS: tuple[str, ...] = ("rescale", "replace")
ALL_CLASSES = "all"  # eval_classes of a sweep over every class (fewshot runs); base2new sweeps write base and new

FREQUENCY_DEFINITION = (
    "Low-Norm Effect frequency: for a trained soft prompt, take every single-position "
    "corruption that lowers the L2 norm of the corrupted context vector "
    "(RESCALE by a factor, or REPLACE by a Gaussian vector, with norm_after < norm_before; "
    "the uncorrupted baseline is excluded); the frequency is the percentage of these "
    "norm-reducing corruptions whose test accuracy is higher than the uncorrupted prompt's "
    "(delta > min_delta points, min_delta = 0 by default). It is computed separately for "
    "each seed and reported as mean ± sample standard deviation over seeds."
)
# Short form for figure captions.
FREQUENCY_SHORT = (
    "Frequency = % of norm-reducing single-position corruptions (rescale/replace) "
    "that raise test accuracy; mean ± std over seeds."
)


# --------------------------------------------------------------------------- helpers


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise NoDataError naming the columns of `what` that `df` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise NoDataError(f"{what} lacks column(s) {', '.join(missing)}; got: {', '.join(map(str, df.columns)) or 'none'}")


def dedupe_corruptions(corruptions: pd.DataFrame) -> pd.DataFrame:
    """Keep the last row per (run_id, op, position, factor, rep, eval_classes); later rows are newer results."""
    corruptions = schema.with_column_defaults("corruptions", corruptions)  # e.g. eval_classes, prompt_method
    key = [c for c in _KEY if c in corruptions.columns]
    if not key or corruptions.empty:
        return corruptions.reset_index(drop=True)
    # The baseline row's key is ("none", -1, 1.0, 0) (schema.BASELINE_KEY), so it dedupes like any row.
    return corruptions.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def rows_for_view(
    corruptions: pd.DataFrame, by: Sequence[str] = (), eval_classes: str = ALL_CLASSES
) -> pd.DataFrame:
    """The rows a view aggregates: every class subset when ``by`` groups by ``eval_classes``, else only the
    rows of ``eval_classes`` (default "all"), so base2new's base and new rows are never pooled with them."""
    corruptions = schema.with_column_defaults("corruptions", corruptions)  # e.g. eval_classes, prompt_method
    if "eval_classes" in by or "eval_classes" not in corruptions.columns:
        return corruptions
    return corruptions[corruptions["eval_classes"] == eval_classes]


def _invisible(corruptions: pd.DataFrame) -> pd.Series:
    """Mask of corrupted rows whose scores equal the original's (``invisible``; older parts: none)."""
    if "invisible" not in corruptions.columns:
        return pd.Series(False, index=corruptions.index)
    return (corruptions["op"] != "none") & corruptions["invisible"].fillna(False).astype(bool)


def _norm_reducing(corruptions: pd.DataFrame) -> pd.Series:
    """Mask of visible rows that corrupt a position and lower its norm (an invisible corruption, e.g. a
    positive rescale that a LayerNorm undoes, changes nothing by construction and is left out)."""
    reducing = (corruptions["op"] != "none") & (corruptions["norm_after"] < corruptions["norm_before"])
    return reducing & ~_invisible(corruptions)


def sample_std(values: pd.Series) -> float:
    """Sample std (ddof=1) of the non-NaN values; NaN below two values."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _aggregate_over_seeds(per_seed: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std (ddof=1) and count over the seeds of each group for one value column."""
    grouped = per_seed.groupby(by, sort=True, dropna=False)[value]
    return pd.DataFrame(
        {
            f"{value}_mean": grouped.mean(),
            f"{value}_std": grouped.agg(sample_std),
        }
    )


# --------------------------------------------------------------------------- grids


def grid_gaps(corruptions: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> pd.DataFrame:
    """Per group and run: the corruption cells the run lacks that another run of its group has.

    A cell is a key (op, position, factor, rep) of a non-baseline row. Columns: the `by` columns,
    `seed`, `run_id`, `n_cells` (the run's cells), `n_union` (cells of the group), `missing` (sorted
    list of the keys it lacks). Only runs with at least one missing cell appear.
    """
    by = list(by)
    columns = [*by, "seed", "run_id", "n_cells", "n_union", "missing"]
    table = dedupe_corruptions(rows_for_view(corruptions, by))
    table = table[table["op"] != "none"]
    out = []
    for group, rows in table.groupby(by, sort=True, dropna=False):
        cells = {run: set(part[list(schema.CORRUPTION_KEY)].itertuples(index=False, name=None)) for run, part in rows.groupby("run_id")}
        union = set().union(*cells.values())
        seeds = rows.drop_duplicates("run_id").set_index("run_id")["seed"]
        for run, have in cells.items():
            if have != union:
                missing = sorted(union - have, key=str)
                out.append([*group, int(seeds[run]), run, len(have), len(union), missing])
    return pd.DataFrame(out, columns=columns)


def restrict_to_common_grid(corruptions: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> pd.DataFrame:
    """Keep, per group, only the corruption cells every run of the group measured (baselines stay).

    Seeds swept with different grids (e.g. a full grid for seed 1, eight cells for seeds 2 and 3)
    are otherwise incomparable: a frequency over 200 cells and one over 8 are not averaged. Logs a
    warning naming, per seed, how many cells it lacks and the first few.
    """
    by = list(by)
    corruptions = rows_for_view(corruptions, by)
    gaps = grid_gaps(corruptions, by)
    table = dedupe_corruptions(corruptions)
    if gaps.empty:
        return table
    keep = pd.Series(True, index=table.index)
    key = list(schema.CORRUPTION_KEY)
    for group, rows in table[table["op"] != "none"].groupby(by, sort=True, dropna=False):
        cells = [set(part[key].itertuples(index=False, name=None)) for _, part in rows.groupby("run_id")]
        common = set.intersection(*cells)
        row_keys = list(rows[key].itertuples(index=False, name=None))
        keep[rows.index] = [k in common for k in row_keys]
        group_gaps = gaps[(gaps[by] == pd.Series(group, index=by)).all(axis=1)]
        for gap in group_gaps.itertuples(index=False):
            shown = ", ".join(map(str, gap.missing[:3])) + (", ..." if len(gap.missing) > 3 else "")
            logger.warning(
                "%s: seed %d (run %s) lacks %d of the group's %d corruption cells (%s); "
                "aggregating over the %d cells every seed has",
                "/".join(map(str, group)), gap.seed, gap.run_id, len(gap.missing), gap.n_union, shown, len(common),
            )  # fmt: skip
    return table[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- frequency


def low_norm_frequency_per_seed(
    corruptions: pd.DataFrame,
    min_delta: float = 0.0,
    by: Sequence[str] = GROUP_COLUMNS,
) -> pd.DataFrame:
    """One row per group and seed: `n_reducing`, `n_effect`, `frequency` (percent) and `n_invisible`.

    `n_reducing` counts the visible norm-reducing corruption rows (op != "none",
    norm_after < norm_before, not `invisible`), `n_effect` those among them with delta > `min_delta`, and
    frequency = 100 * n_effect / n_reducing (NaN when nothing reduced the norm); `n_invisible` counts the
    corruption rows left out as invisible. Groups whose rows are all baselines (op == "none") do not appear.
    """
    by = list(by)
    columns = [*by, "seed", "n_reducing", "n_effect", "frequency", "n_invisible"]
    corruptions = rows_for_view(corruptions, by)
    require_columns(corruptions, [*by, "seed", *_KEY, "delta", "norm_before", "norm_after"], "corruption table")
    table = dedupe_corruptions(corruptions)
    table = table[table["op"] != "none"]
    if table.empty:
        return pd.DataFrame(columns=columns)

    reducing = _norm_reducing(table)
    counts = pd.DataFrame(
        {
            "reducing": reducing.astype(int),
            # NaN delta compares False, so an unmeasured row is never an effect.
            "effect": (reducing & (table["delta"] > min_delta)).astype(int),
            "invisible": _invisible(table).astype(int),
        }
    )
    keys = [table[c] for c in [*by, "seed"]]
    out = counts.groupby(keys, sort=True, dropna=False).sum()
    out.columns = ["n_reducing", "n_effect", "n_invisible"]
    out = out.reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = 100.0 * out["n_effect"] / out["n_reducing"]
    out["frequency"] = frequency.where(out["n_reducing"] > 0)
    return out[columns]


def low_norm_frequency(
    corruptions: pd.DataFrame,
    min_delta: float = 0.0,
    by: Sequence[str] = GROUP_COLUMNS,
    same_grid: bool = False,
) -> pd.DataFrame:
    """One row per group: `frequency_mean`, `frequency_std` over seeds, and totals.

    Columns: the `by` columns, `frequency_mean`, `frequency_std` (ddof=1; NaN with one seed),
    `num_seeds` (seeds with a defined frequency), `n_effect` and `n_reducing` (summed over
    seeds), `frequency_pooled` = 100 * n_effect / n_reducing over all seeds together, and `n_invisible`
    (corruptions left out as invisible, summed over seeds). Pass ``by=[..., "layer"]`` for one row per
    prompted layer (MaPLe).
    With `same_grid`, each group first keeps only the cells all its runs measured
    (:func:`restrict_to_common_grid`; the figures and `nemesis summary` use this).
    See FREQUENCY_DEFINITION.
    """
    by = list(by)
    if same_grid:
        corruptions = restrict_to_common_grid(corruptions, by)
    columns = [*by, "frequency_mean", "frequency_std", "num_seeds", "n_effect", "n_reducing", "frequency_pooled",
               "n_invisible"]  # fmt: skip
    per_seed = low_norm_frequency_per_seed(corruptions, min_delta=min_delta, by=by)
    if per_seed.empty:
        return pd.DataFrame(columns=columns)
    out = _aggregate_over_seeds(per_seed, by, "frequency")
    grouped = per_seed.groupby(by, sort=True, dropna=False)
    out["num_seeds"] = grouped["frequency"].count()
    out["n_effect"] = grouped["n_effect"].sum()
    out["n_reducing"] = grouped["n_reducing"].sum()
    out["n_invisible"] = grouped["n_invisible"].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = 100.0 * out["n_effect"] / out["n_reducing"]
    out["frequency_pooled"] = pooled.where(out["n_reducing"] > 0)
    return out.reset_index()[columns]


def low_norm_counts(
    corruptions: pd.DataFrame,
    min_delta: float = 0.0,
    by: Sequence[str] = GROUP_COLUMNS,
    same_grid: bool = False,
) -> pd.DataFrame:
    """One row per group: the count of Low-Norm Effect corruptions, mean and std over seeds.

    The paper's Figure 1(b) plots counts, not percentages. Columns: the `by` columns, `count_mean`,
    `count_std` (ddof=1; NaN with one seed) of `n_effect`, `n_reducing_mean` (the denominator the
    percentage would use) and `num_seeds`.
    """
    by = list(by)
    columns = [*by, "count_mean", "count_std", "n_reducing_mean", "num_seeds"]
    if same_grid:
        corruptions = restrict_to_common_grid(corruptions, by)
    per_seed = low_norm_frequency_per_seed(corruptions, min_delta=min_delta, by=by)
    if per_seed.empty:
        return pd.DataFrame(columns=columns)
    per_seed = per_seed.astype({"n_effect": float, "n_reducing": float})
    grouped = per_seed.groupby(by, sort=True, dropna=False)
    out = pd.DataFrame(
        {
            "count_mean": grouped["n_effect"].mean(),
            "count_std": grouped["n_effect"].agg(sample_std),
            "n_reducing_mean": grouped["n_reducing"].mean(),
            "num_seeds": grouped["seed"].nunique(),
        }
    )
    return out.reset_index()[columns]


def low_norm_positions(corruptions: pd.DataFrame, run_id: str, eval_classes: str = ALL_CLASSES) -> list[int]:
    """Sorted positions of `run_id` where some norm-reducing corruption raised accuracy (delta > 0), on the
    class subset `eval_classes` (a base2new run: "base" or "new")."""
    corruptions = rows_for_view(corruptions, eval_classes=eval_classes)
    require_columns(corruptions, [*_KEY, "delta", "norm_before", "norm_after"], "corruption table")
    table = corruptions[corruptions["run_id"] == run_id]
    if table.empty:
        raise NoDataError(f"no corruption rows for run_id {run_id!r}")
    table = dedupe_corruptions(table)
    hits = table[_norm_reducing(table) & (table["delta"] > 0)]
    return sorted(int(p) for p in hits["position"].unique())


# --------------------------------------------------------------------------- summaries


def summarize_runs(runs: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> pd.DataFrame:
    """Mean and std (ddof=1) over seeds of `final_test_acc` and `zero_shot_acc` per group.

    A run_id that appears twice keeps its last row. Columns: the `by` columns,
    `final_test_acc_mean`, `final_test_acc_std`, `zero_shot_acc_mean`, `zero_shot_acc_std`,
    `num_seeds`.
    """
    by = list(by)
    runs = schema.with_column_defaults("runs", runs)  # e.g. prompt_method for rows from before it
    values = ["final_test_acc", "zero_shot_acc"]
    columns = [*by, *(f"{v}_{s}" for v in values for s in ("mean", "std")), "num_seeds"]
    require_columns(runs, [*by, "seed", *values], "runs table")
    if runs.empty:
        return pd.DataFrame(columns=columns)
    table = runs.drop_duplicates(subset=["run_id"], keep="last") if "run_id" in runs.columns else runs
    parts = [_aggregate_over_seeds(table, by, v) for v in values]
    out = pd.concat(parts, axis=1)
    out["num_seeds"] = table.groupby(by, sort=True, dropna=False)["seed"].nunique()
    return out.reset_index()[columns]


def summarize_corruptions(corruptions: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> pd.DataFrame:
    """Per group and corruption op: best, worst and mean delta, uncorrupted accuracy over seeds.

    Columns: the `by` columns, `op`, `best_delta` (max), `worst_delta` (min), `mean_delta`
    (over every corruption row of every seed), `acc_original_mean` and `acc_original_std`
    (ddof=1, over seeds: the uncorrupted accuracy, one value per seed), `num_seeds`,
    `n_rows` and `n_low_norm_effect` (rows flagged `low_norm_effect`). The baseline rows
    (op == "none") are left out.
    """
    by = list(by)
    columns = [
        *by,
        "op",
        "best_delta",
        "worst_delta",
        "mean_delta",
        "acc_original_mean",
        "acc_original_std",
        "num_seeds",
        "n_rows",
        "n_low_norm_effect",
    ]
    corruptions = rows_for_view(corruptions, by)
    require_columns(corruptions, [*by, "seed", *_KEY, "delta", "acc_original", "low_norm_effect"], "corruption table")
    table = dedupe_corruptions(corruptions)
    table = table[table["op"] != "none"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    table = table.assign(low_norm_effect=table["low_norm_effect"].fillna(False).astype(bool))
    keys = [*by, "op"]
    grouped = table.groupby(keys, sort=True, dropna=False)
    out = pd.DataFrame(
        {
            "best_delta": grouped["delta"].max(),
            "worst_delta": grouped["delta"].min(),
            "mean_delta": grouped["delta"].mean(),
            "n_rows": grouped["delta"].size(),
            "n_low_norm_effect": grouped["low_norm_effect"].sum().astype(int),
        }
    )
    # The uncorrupted accuracy is one number per seed: average its rows first.
    per_seed = table.groupby([*keys, "seed"], sort=True, dropna=False)["acc_original"].mean().reset_index()
    acc = _aggregate_over_seeds(per_seed, keys, "acc_original")
    out = out.join(acc)
    out["num_seeds"] = per_seed.groupby(keys, sort=True, dropna=False)["seed"].nunique()
    return out.reset_index()[columns]


def delta_grid(
    corruptions: pd.DataFrame,
    dataset: str | None = None,
    op: str = "rescale",
    *,
    regularizer: str | None = None,
    backbone: str | None = None,
    shots: int | None = None,
    eval_classes: str = ALL_CLASSES,
    layer: int | None = None,
) -> pd.DataFrame:
    """Position (rows) x factor (columns) table of mean delta for one op, on one class subset (default all).

    The rows of each run are first averaged over reps, then the runs (seeds, and whatever
    else the filters leave) are averaged with equal weight. `None` filters keep everything.
    Missing cells are NaN. Index name "position", columns name "factor". Deep prompts (MaPLe): ``layer``
    keeps one prompted layer; without it, each (layer, position) is its own row, at the flat position
    ``layer * n_ctx + position`` (layers are never averaged together).
    """
    if op not in CORRUPTION_OPS:
        raise ConfigError(f"op must be one of {', '.join(CORRUPTION_OPS)}; got {op!r}")
    corruptions = rows_for_view(corruptions, eval_classes=eval_classes)
    require_columns(corruptions, [*_KEY, "delta"], "corruption table")
    table = dedupe_corruptions(corruptions)
    mask = table["op"] == op
    filters = (("dataset", dataset), ("regularizer", regularizer), ("backbone", backbone), ("shots", shots),
               ("layer", layer))  # fmt: skip
    for column, value in filters:
        if value is not None:
            require_columns(table, [column], "corruption table")
            mask &= table[column] == value
    table = table[mask]
    if table.empty:
        empty = pd.DataFrame(dtype=float)
        empty.index.name, empty.columns.name = "position", "factor"
        return empty
    if table["layer"].nunique() > 1:  # one row per (layer, position)
        table = table.assign(position=table["layer"] * table["n_ctx"] + table["position"])
    per_run = table.groupby(["run_id", "position", "factor"], sort=True)["delta"].mean()
    cells = per_run.groupby(level=["position", "factor"], sort=True).mean()
    grid = cells.unstack("factor").sort_index().sort_index(axis=1)
    grid.index = grid.index.astype(int)
    grid.index.name, grid.columns.name = "position", "factor"
    return grid.astype(float)


# --------------------------------------------------------------------------- formatting


def format_mean_std(mean: float, std: float, fmt: str = "{:.2f}", sep: str = " ± ") -> str:
    """`71.23 ± 0.45`; only the mean when std is NaN (one seed); empty when mean is NaN."""
    if mean is None or pd.isna(mean):
        return ""
    if std is None or pd.isna(std):
        return fmt.format(mean)
    return f"{fmt.format(mean)}{sep}{fmt.format(std)}"


def merge_mean_std(
    df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    fmt: str = "{:.2f}",
    sep: str = " ± ",
) -> pd.DataFrame:
    """Replace each `x_mean`/`x_std` column pair by one string column `x` ("71.23 ± 0.45").

    `columns` names the stems `x` to merge; by default every stem with both columns.
    The merged column takes the place of `x_mean`.
    """
    if columns is None:
        columns = [c[: -len("_mean")] for c in df.columns if c.endswith("_mean") and f"{c[:-5]}_std" in df.columns]
    out = df.copy()
    for stem in columns:
        require_columns(out, [f"{stem}_mean", f"{stem}_std"], "table")
        merged = [format_mean_std(m, s, fmt, sep) for m, s in zip(out[f"{stem}_mean"], out[f"{stem}_std"])]
        at = list(out.columns).index(f"{stem}_mean")
        out = out.drop(columns=[f"{stem}_mean", f"{stem}_std"])
        out.insert(at, stem, pd.Series(merged, index=out.index, dtype=object))
    return out


def format_table_markdown(df: pd.DataFrame, float_fmt: str = "{:.2f}", na: str = "–") -> str:
    """A GitHub pipe table: floats through `float_fmt`, NaN as `na`, numbers right-aligned."""

    def cell(value) -> str:
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return na
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        if isinstance(value, (float, np.floating)):
            return float_fmt.format(float(value))
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [str(c).replace("|", "\\|") for c in df.columns]
    rows = [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    numeric = [
        pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns
    ]
    widths = [max([len(h), 3, *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
