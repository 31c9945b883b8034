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
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from nemesis_analysis import stats
from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.storage import schema

logger = logging.getLogger(__name__)

# What a paper table aggregates over: seeds vary inside a group, nothing else does.
GROUP_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "shots", "prompt_method", "regularizer")
# One corruption observation within the table: run_id plus schema.CORRUPTION_KEY.
_KEY: tuple[str, ...] = schema.KEYS["corruptions"]
CORRUPTION_OPS: tuple[str, ...] = ("rescale", "replace")
ALL_CLASSES = "all"  # eval_classes of a sweep over every class (fewshot runs); base2new sweeps write base and new
DEFAULT_FDR = 0.05  # the false-discovery rate of frequency_significant
# The family of one Benjamini-Hochberg correction: one sweep, i.e. the rows of one run on one class subset.
FDR_FAMILY: tuple[str, ...] = ("run_id", "eval_classes")

FREQUENCY_DEFINITION = (
    "Low-Norm Effect frequency: for a trained soft prompt, take every single-position "
    "corruption that lowers the L2 norm of the corrupted context vector "
    "(RESCALE by a factor, or REPLACE by a Gaussian vector, with norm_after < norm_before; "
    "the uncorrupted baseline is excluded); the frequency is the percentage of these "
    "norm-reducing corruptions whose test accuracy is higher than the uncorrupted prompt's "
    "(delta > min_delta points, min_delta = 0 by default). It is computed separately for "
    "each seed and reported as mean ± sample standard deviation over seeds, with the number of seeds n "
    "and the 95% Student-t interval of the mean (none with one seed). frequency_significant counts only "
    "the effects that survive false-discovery control: each row's exact two-sided McNemar p-value "
    "(n_gained vs n_lost test images) is adjusted by Benjamini-Hochberg over its sweep (one run, one "
    "class subset), and an effect counts when its q-value is below the FDR (0.05 by default)."
)
# Short form for figure captions.
FREQUENCY_SHORT = (
    "Frequency = % of norm-reducing single-position corruptions (rescale/replace) "
    "that raise test accuracy; mean over seeds, error bars: 95% t-interval;\n"
    "hatched: effects whose exact McNemar test survives Benjamini-Hochberg control per sweep (q < FDR)."
)


# --------------------------------------------------------------------------- helpers


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise NoDataError naming the columns of `what` that `df` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise NoDataError(
            f"{what} lacks column(s) {', '.join(missing)}; got: {', '.join(map(str, df.columns)) or 'none'}"
        )


def dedupe_corruptions(corruptions: pd.DataFrame) -> pd.DataFrame:
    """Keep the last row per (run_id, op, position, factor, rep, eval_classes); later rows are newer results."""
    corruptions = schema.with_column_defaults("corruptions", corruptions)  # e.g. eval_classes, prompt_method
    key = [c for c in _KEY if c in corruptions.columns]
    if not key or corruptions.empty:
        return corruptions.reset_index(drop=True)
    # The baseline row's key is ("none", -1, 1.0, 0) (schema.BASELINE_KEY), so it dedupes like any row.
    return corruptions.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def rows_for_view(corruptions: pd.DataFrame, by: Sequence[str] = (), eval_classes: str = ALL_CLASSES) -> pd.DataFrame:
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


def interval_columns(stem: str) -> list[str]:
    """The columns of one value aggregated over seeds: mean, std, n and the 95% Student-t interval."""
    return [f"{stem}_{s}" for s in ("mean", "std", "n", "ci95_low", "ci95_high")]


def aggregate_over_seeds(per_seed: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std (ddof=1), n (non-NaN values) and the 95% Student-t interval of the mean over the seeds of
    each group, for one value column (interval NaN below two values)."""
    grouped = per_seed.groupby(by, sort=True, dropna=False)[value]
    intervals = grouped.agg(lambda values: stats.t_interval(values.to_numpy(float)))
    return pd.DataFrame(
        {
            f"{value}_mean": grouped.mean(),
            f"{value}_std": grouped.agg(sample_std),
            f"{value}_n": grouped.count(),
            f"{value}_ci95_low": intervals.map(lambda pair: pair[0]),
            f"{value}_ci95_high": intervals.map(lambda pair: pair[1]),
        }
    )


# --------------------------------------------------------------------------- grids


def grid_gaps(corruptions: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> pd.DataFrame:
    """Per group and run: the corruption cells the run lacks that another run of its group has.

    A cell is a key (op, position, factor, rep) of a non-baseline row. Columns: the `by` columns,
    `seed`, `run_id`, `n_cells` (the run's cells), `n_union` (cells of the group), `missing` (sorted
    list of the keys it lacks). Only runs with at least one missing cell appear.
    """
    table = dedupe_corruptions(rows_for_view(corruptions, by))
    by = identity_by(table, by)
    columns = [*by, "seed", "run_id", "n_cells", "n_union", "missing"]
    table = table[table["op"] != "none"]
    out = []
    for group, rows in table.groupby(by, sort=True, dropna=False):
        cells = {
            run: set(part[list(schema.CORRUPTION_KEY)].itertuples(index=False, name=None))
            for run, part in rows.groupby("run_id")
        }
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
    corruptions = rows_for_view(corruptions, by)
    by = identity_by(corruptions, by)
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


# --------------------------------------------------------------------------- run settings

# Columns a run carries that are outcomes or bookkeeping; every other column of the runs table (and of
# RunIdentity) is a setting: rows that differ in one are different experiments, never seeds of one.
NOT_SETTINGS = frozenset(
    {"run_id", "seed", "recipe", "final_test_acc", "zero_shot_acc", "mean_norm", "checkpoint", "seconds"}
)


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` that are run settings (identity or runs-table config columns, less the seed)."""
    known = {*schema.IDENTITY_COLUMNS, *schema.columns("runs")}
    return [c for c in frame.columns if c in known and c not in NOT_SETTINGS]


def with_run_settings(frame: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` (rows with a ``run_id``) with the settings of its runs that it lacks, joined from ``runs``
    (e.g. ``norm_weight``, ``epochs``, ``protocol``); rows of runs the table lacks get NaN."""
    if runs is None or runs.empty or "run_id" not in runs.columns or "run_id" not in frame.columns:
        return frame
    settings = runs.drop_duplicates("run_id", keep="last").set_index("run_id")
    extra = [c for c in setting_columns(settings) if c not in frame.columns]
    return frame.join(settings[extra], on="run_id") if extra else frame


def identity_by(frame: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """``by`` plus every setting column of ``frame`` that differs between runs of one ``by`` group.

    The one grouping rule of every summary, paper table and figure: rows are pooled over seeds only,
    never over runs that differ in another setting (norm weight, epochs, protocol, n_ctx, precision, ...).
    """
    by = list(by)
    candidates = [c for c in setting_columns(frame) if c not in by]
    if not candidates or frame.empty:
        return by
    per_run = frame.drop_duplicates("run_id") if "run_id" in frame.columns else frame
    present = [c for c in by if c in frame.columns]  # a column the rows lack cannot differ between them
    if not present:
        per_run = per_run.assign(_all=0)
    grouped = per_run.groupby(present or ["_all"], sort=True, dropna=False)
    return by + [c for c in candidates if (grouped[c].nunique(dropna=False) > 1).any()]


def differing_settings(frame: pd.DataFrame, by: Sequence[str]) -> str:
    """ "norm_weight (1, 20); epochs (50, 100)": the settings that differ within a ``by`` group, or ""."""
    extra = identity_by(frame, by)[len(list(by)) :]
    return "; ".join(f"{c} ({', '.join(sorted(map(str, frame[c].drop_duplicates())))})" for c in extra)


def refuse_pooled_settings(frame: pd.DataFrame, by: Sequence[str], what: str) -> None:
    """ConfigError when rows of one ``by`` group come from runs that differ in a setting other than the seed."""
    differing = differing_settings(frame, by)
    if differing:
        raise ConfigError(
            f"{what} come from runs that differ in {differing}, which would be averaged as if they were seeds; "
            "keep one setting (filter the rows, or move the other runs' parts aside)"
        )


# --------------------------------------------------------------------------- frequency


def with_q_values(corruptions: pd.DataFrame) -> pd.DataFrame:
    """The deduplicated rows with a ``q_value`` column: each corrupted row's ``p_value`` adjusted by
    Benjamini-Hochberg within its sweep (:data:`FDR_FAMILY`: one run on one class subset), over the rows
    present; NaN for the baseline and for rows without a p-value (parts written before it existed)."""
    table = dedupe_corruptions(corruptions)
    q = pd.Series(np.nan, index=table.index, dtype=float)
    corrupted = table[table["op"] != "none"]
    for _, rows in corrupted.groupby(list(FDR_FAMILY), sort=False, dropna=False):
        q[rows.index] = stats.bh_q_values(rows["p_value"].to_numpy(float))
    return table.assign(q_value=q)


def low_norm_frequency_per_seed(
    corruptions: pd.DataFrame,
    min_delta: float = 0.0,
    by: Sequence[str] = GROUP_COLUMNS,
    fdr: float = DEFAULT_FDR,
) -> pd.DataFrame:
    """One row per group and seed: `n_reducing`, `n_effect`, `frequency`, `n_significant` and
    `frequency_significant` (percent).

    `n_reducing` counts the norm-reducing corruption rows (op != "none" and
    norm_after < norm_before), `n_effect` those among them with delta > `min_delta`, and
    frequency = 100 * n_effect / n_reducing (NaN when nothing reduced the norm). `n_significant` counts
    the effects whose q-value (``q_value`` when the frame has one, else :func:`with_q_values` of the rows
    given) is below `fdr`; frequency_significant = 100 * n_significant / n_reducing, NaN when a
    norm-reducing row lacks its p-value (fill it with `nemesis fill-counts`). Groups whose rows are all
    baselines (op == "none") do not appear.
    """
    corruptions = rows_for_view(corruptions, by)
    by = identity_by(corruptions, by)
    columns = [
        *by,
        "seed",
        "n_reducing",
        "n_effect",
        "frequency",
        "n_significant",
        "frequency_significant",
        "n_invisible",
    ]
    require_columns(corruptions, [*by, "seed", *_KEY, "delta", "norm_before", "norm_after"], "corruption table")
    check_fdr(fdr)
    table = corruptions if "q_value" in corruptions.columns else with_q_values(corruptions)
    table = dedupe_corruptions(table)
    table = table[table["op"] != "none"]
    if table.empty:
        return pd.DataFrame(columns=columns)

    reducing = _norm_reducing(table)
    effect = reducing & (table["delta"] > min_delta)  # NaN delta compares False: never an effect
    counts = pd.DataFrame(
        {
            "n_reducing": reducing.astype(int),
            "n_effect": effect.astype(int),
            "n_significant": (effect & (table["q_value"] < fdr)).astype(int),
            "unknown": (reducing & table["q_value"].isna()).astype(int),
            "n_invisible": _invisible(table).astype(int),
        }
    )
    keys = [table[c] for c in [*by, "seed"]]
    out = counts.groupby(keys, sort=True, dropna=False).sum().reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = 100.0 * out["n_effect"] / out["n_reducing"]
        significant = 100.0 * out["n_significant"] / out["n_reducing"]
    out["frequency"] = frequency.where(out["n_reducing"] > 0)
    out["frequency_significant"] = significant.where((out["n_reducing"] > 0) & (out["unknown"] == 0))
    return out[columns]


def check_fdr(fdr: float) -> None:
    if not 0 < fdr < 1:
        raise ConfigError(f"--fdr must be between 0 and 1 (exclusive), got {fdr}")


def low_norm_frequency(
    corruptions: pd.DataFrame,
    min_delta: float = 0.0,
    by: Sequence[str] = GROUP_COLUMNS,
    same_grid: bool = False,
    fdr: float = DEFAULT_FDR,
) -> pd.DataFrame:
    """One row per group: `frequency` and `frequency_significant` over seeds, and totals.

    Columns: the `by` columns; for `frequency` and `frequency_significant` each, `_mean`, `_std`
    (ddof=1), `_n` (seeds with a defined value) and `_ci95_low`/`_ci95_high` (95% Student-t interval of
    the mean; NaN with one seed); `num_seeds` (seeds with a defined frequency), `n_effect`,
    `n_significant` and `n_reducing` (summed over seeds) and `frequency_pooled` = 100 * n_effect /
    n_reducing over all seeds together, `n_invisible` (rows left out as invisible); pass
    ``by=[..., "layer"]`` for one row per prompted layer (MaPLe). q-values are computed per sweep before any grid restriction.
    With `same_grid`, each group first keeps only the cells all its runs measured
    (:func:`restrict_to_common_grid`; the figures and `nemesis summary` use this).
    See FREQUENCY_DEFINITION.
    """
    corruptions = rows_for_view(corruptions, by)
    by = identity_by(corruptions, by)
    if "q_value" not in corruptions.columns:  # q-values over each whole sweep, before any grid restriction
        corruptions = with_q_values(corruptions)
    if same_grid:
        corruptions = restrict_to_common_grid(corruptions, by)
    values = ("frequency", "frequency_significant")
    columns = [*by, *(c for v in values for c in interval_columns(v)), "num_seeds", "n_effect", "n_significant",
               "n_reducing", "frequency_pooled", "n_invisible"]  # fmt: skip
    per_seed = low_norm_frequency_per_seed(corruptions, min_delta=min_delta, by=by, fdr=fdr)
    if per_seed.empty:
        return pd.DataFrame(columns=columns)
    out = pd.concat([aggregate_over_seeds(per_seed, by, v) for v in values], axis=1)
    grouped = per_seed.groupby(by, sort=True, dropna=False)
    out["num_seeds"] = grouped["frequency"].count()
    for total in ("n_effect", "n_significant", "n_reducing", "n_invisible"):
        out[total] = grouped[total].sum()
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
    `count_std` (ddof=1; NaN with one seed), `count_n`, `count_ci95_low`/`count_ci95_high` of `n_effect`,
    `n_reducing_mean` (the denominator the percentage would use) and `num_seeds`.
    """
    by = identity_by(rows_for_view(corruptions, by), by)
    columns = [*by, *interval_columns("count"), "n_reducing_mean", "num_seeds"]
    if same_grid:
        corruptions = restrict_to_common_grid(corruptions, by)
    per_seed = low_norm_frequency_per_seed(corruptions, min_delta=min_delta, by=by)
    if per_seed.empty:
        return pd.DataFrame(columns=columns)
    per_seed = per_seed.astype({"n_effect": float, "n_reducing": float}).assign(count=lambda f: f["n_effect"])
    grouped = per_seed.groupby(by, sort=True, dropna=False)
    out = aggregate_over_seeds(per_seed, by, "count")
    out["n_reducing_mean"] = grouped["n_reducing"].mean()
    out["num_seeds"] = grouped["seed"].nunique()
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

    A run_id that appears twice keeps its last row. Columns: the `by` columns, then for
    `final_test_acc` and `zero_shot_acc` each `_mean`, `_std`, `_n`, `_ci95_low`, `_ci95_high`
    (:func:`interval_columns`), and `num_seeds`.
    """
    by = list(by)
    runs = schema.with_column_defaults("runs", runs)  # e.g. prompt_method for rows from before it
    values = ["final_test_acc", "zero_shot_acc"]
    columns = [*by, *(c for v in values for c in interval_columns(v)), "num_seeds"]
    require_columns(runs, [*by, "seed", *values], "runs table")
    if runs.empty:
        return pd.DataFrame(columns=columns)
    table = runs.drop_duplicates(subset=["run_id"], keep="last") if "run_id" in runs.columns else runs
    by = identity_by(table, by)
    columns = [*by, *(c for v in values for c in interval_columns(v)), "num_seeds"]
    parts = [aggregate_over_seeds(table, by, v) for v in values]
    out = pd.concat(parts, axis=1)
    out["num_seeds"] = table.groupby(by, sort=True, dropna=False)["seed"].nunique()
    return out.reset_index()[columns]


def summarize_corruptions(corruptions: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> pd.DataFrame:
    """Per group and corruption op: best, worst and mean delta, uncorrupted accuracy over seeds.

    Columns: the `by` columns, `op`, `best_delta` (max), `worst_delta` (min), `mean_delta`
    (over every corruption row of every seed), `acc_original_mean`, `_std`, `_n`, `_ci95_low` and
    `_ci95_high` (over seeds: the uncorrupted accuracy, one value per seed), `num_seeds`,
    `n_rows` and `n_low_norm_effect` (rows flagged `low_norm_effect`). The baseline rows
    (op == "none") are left out.
    """
    corruptions = rows_for_view(corruptions, by)
    by = identity_by(corruptions, by)
    columns = [
        *by,
        "op",
        "best_delta",
        "worst_delta",
        "mean_delta",
        *interval_columns("acc_original"),
        "num_seeds",
        "n_rows",
        "n_low_norm_effect",
    ]
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
    acc = aggregate_over_seeds(per_seed, keys, "acc_original")
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


def significance_grid(
    corruptions: pd.DataFrame,
    dataset: str | None = None,
    op: str = "rescale",
    *,
    regularizer: str | None = None,
    fdr: float = DEFAULT_FDR,
    eval_classes: str = ALL_CLASSES,
) -> pd.DataFrame:
    """Position x factor table (as :func:`delta_grid`) of booleans: True where some row of the cell (any
    seed or rep) changed accuracy significantly, its McNemar p-value surviving Benjamini-Hochberg control
    within its sweep (q < ``fdr``). Rows without a p-value never count."""
    check_fdr(fdr)
    table = with_q_values(rows_for_view(corruptions, eval_classes=eval_classes))
    mask = table["op"] == op
    for column, value in (("dataset", dataset), ("regularizer", regularizer)):
        if value is not None:
            mask &= table[column] == value
    table = table[mask]
    significant = (table["q_value"] < fdr).groupby([table["position"].astype(int), table["factor"]], sort=True).any()
    if significant.empty:
        return pd.DataFrame(dtype=bool)
    grid = significant.unstack("factor", fill_value=False).sort_index().sort_index(axis=1)
    grid.index.name, grid.columns.name = "position", "factor"
    return grid.astype(bool)


# --------------------------------------------------------------------------- paired comparisons

# Runs are paired when they agree on these (and differ in the regularizer): the same split, model and prompt.
MATCH_COLUMNS: tuple[str, ...] = ("dataset", "backbone", "pretrained", "shots", "seed", "prompt_method", "protocol",
                                  "n_ctx", "csc", "class_token_position", "precision")  # fmt: skip
COMPARISON_DEFINITION = (
    "Paired comparison: each regularizer's runs against the baseline's runs of the same dataset, backbone, shots, "
    "seed, prompt method, protocol and prompt layout. mean_diff is the mean over pairs of the accuracy "
    "difference (regularizer - baseline, points), ci95_low/ci95_high its 95% Student-t interval, n_pairs the "
    "number of pairs and p_value the two-sided paired t-test (none below two pairs)."
)


def paired_comparisons(runs: pd.DataFrame, baseline: str = "coop", value: str = "final_test_acc") -> pd.DataFrame:
    """Each regularizer (and Nemesis weight) against ``baseline`` on matched runs (:data:`MATCH_COLUMNS`).

    One row per group (the match columns but the seed) and regularizer: `regularizer`, `norm_weight`,
    `baseline`, `n_pairs`, `regularizer_mean`, `baseline_mean` (over the pairs), `mean_diff`, `ci95_low`, `ci95_high`
    (:func:`stats.paired_difference`) and `p_value` (paired t-test). A run_id that appears twice keeps its
    last row; of several runs with the same match key and regularizer, the last one is paired.
    """
    runs = schema.with_column_defaults("runs", runs)
    require_columns(runs, ["run_id", "regularizer", value, *MATCH_COLUMNS], "runs table")
    table = runs.drop_duplicates("run_id", keep="last")
    if "norm_weight" not in table.columns:
        table = table.assign(norm_weight=math.nan)
    table = table.assign(norm_weight=table["norm_weight"].where(table["regularizer"] != baseline))
    regularizers = sorted(table["regularizer"].dropna().unique())
    if baseline not in regularizers:
        raise NoDataError(f"no {baseline} runs to compare with (regularizers: {', '.join(regularizers) or 'none'}); "
                          f"pass --compare-to one of them")  # fmt: skip
    match, group = list(MATCH_COLUMNS), [c for c in MATCH_COLUMNS if c != "seed"]
    base = table[table["regularizer"] == baseline].drop_duplicates(match, keep="last")[[*match, value]]
    treated = table[table["regularizer"] != baseline].drop_duplicates(
        [*match, "regularizer", "norm_weight"], keep="last"
    )
    pairs = treated.merge(base, on=match, suffixes=("", "_baseline"))
    out = []
    for key, rows in pairs.groupby([*group, "regularizer", "norm_weight"], sort=True, dropna=False):
        diff = stats.paired_difference(rows[value].to_numpy(float), rows[f"{value}_baseline"].to_numpy(float))
        out.append([*key, baseline, diff.n_pairs, float(rows[value].mean()), float(rows[f"{value}_baseline"].mean()),
                    diff.mean_diff, diff.ci95_low, diff.ci95_high, diff.p_value])  # fmt: skip
    columns = [*group, "regularizer", "norm_weight", "baseline", "n_pairs", "regularizer_mean", "baseline_mean", "mean_diff",
               "ci95_low", "ci95_high", "p_value"]  # fmt: skip
    return pd.DataFrame(out, columns=columns)


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
    """Replace each `x_mean`/`x_std` column pair by one string column `x` ("71.23 ± 0.45"), and an
    `x_ci95_low`/`x_ci95_high` pair, when present, by the column `x 95% CI` ("[70.11, 72.35]") after it.

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
        low, high = f"{stem}_ci95_low", f"{stem}_ci95_high"
        if low in out.columns and high in out.columns:
            shown = [format_interval(a, b, fmt) for a, b in zip(out[low], out[high])]
            out = out.drop(columns=[low, high])
            out.insert(
                list(out.columns).index(stem) + 1, f"{stem} 95% CI", pd.Series(shown, index=out.index, dtype=object)
            )
    return out


def format_cell(value, float_fmt: str = "{:.2f}", na: str = "–") -> str:
    """One table cell as text (Markdown, the terminal): floats through `float_fmt`, None and NaN as `na`."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return na
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return float_fmt.format(float(value))
    return str(value)


def format_interval(low: float, high: float, fmt: str = "{:.2f}") -> str:
    """`[70.11, 72.35]`; empty when the interval is NaN (one seed)."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{fmt.format(low)}, {fmt.format(high)}]"


def format_table_markdown(df: pd.DataFrame, float_fmt: str = "{:.2f}", na: str = "–") -> str:
    """A GitHub pipe table: cells through :func:`format_cell`, numbers right-aligned."""

    def cell(value) -> str:
        return format_cell(value, float_fmt, na).replace("|", "\\|").replace("\n", " ")

    header = [str(c).replace("|", "\\|") for c in df.columns]
    rows = [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    widths = [max([len(h), 3, *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
