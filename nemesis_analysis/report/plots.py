"""Draws the publication figures from table DataFrames, each function returning a matplotlib Figure.

Nothing here saves (except `save_figure`), shows, or imports torch. Figures are built with
`matplotlib.figure.Figure` directly, not through pyplot, so a notebook neither shows them
twice nor keeps them alive in pyplot's registry; Jupyter renders a returned Figure inline.

Colours come from colour-blind-safe palettes (Okabe-Ito for regularizers, seaborn's
"colorblind" for datasets) and are fixed per name, so a regularizer (coop, nemesis-pun, ...) keeps its
colour in every figure: `regularizer_color("nemesis-pun")` is always vermillion.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, NullLocator

from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.report import analysis
from nemesis_analysis.storage import fsio, schema

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- style

# Okabe & Ito (2008), the colour-blind-safe qualitative palette.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
REGULARIZER_COLORS: dict[str, str] = {
    "coop": OKABE_ITO["blue"],
    "nemesis-pun": OKABE_ITO["vermillion"],
    "nemesis-pan": OKABE_ITO["green"],
    "zero-shot": OKABE_ITO["black"],
}
# Other regularizers (e.g. nemesis-beta0.5) draw from these by a stable hash of their name.
# Yellow is left out: it is unreadable as a thin line on white.
_EXTRA_REGULARIZER_COLORS: tuple[str, ...] = (
    OKABE_ITO["orange"],
    OKABE_ITO["purple"],
    OKABE_ITO["sky_blue"],
    "#7F7F7F",
)
# seaborn's "colorblind" palette, written out so that importing this module stays light.
COLORBLIND10: tuple[str, ...] = (
    "#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC",
    "#CA9161", "#FBAFE4", "#949494", "#ECE133", "#56B4E9",
)  # fmt: skip
# Datasets: the same palette without its yellow and pale pink, too faint as lines on white.
DATASET_COLORS: tuple[str, ...] = tuple(c for c in COLORBLIND10 if c not in ("#ECE133", "#FBAFE4"))
# 7 markers against 8 colours (coprime): the first 56 datasets get distinct pairs.
DATASET_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X")
# Spellings of dataset names other than the registry's; keys are lower-cased with non-alphanumerics removed.
_DATASET_ALIASES: dict[str, str] = {"flowers102": "oxfordflowers", "pets": "oxfordpets", "aircraft": "fgvcaircraft"}

NORM_LABELS: dict[str, str] = {
    "norm": "L2 norm ‖p_i‖₂",
    "norm_l1": "L1 norm ‖p_i‖₁",
    "norm_inf": "L∞ norm ‖p_i‖∞",
}
DELTA_LABEL = "Δ accuracy (points)"
_OP_TITLES = {"rescale": "RESCALE: p_i ← s · p_i", "replace": "REPLACE: p_i ← N(0, σ²I)"}
_OP_XLABELS = {"rescale": "Scale factor s", "replace": "Replacement std σ"}
_CONTEXT_COLUMNS = ("dataset", "backbone", "shots", "regularizer")

STYLE: dict[str, object] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "legend.frameon": False,
    "svg.hashsalt": "nemesis-analysis",  # deterministic ids in saved SVGs
}


def _styled(function):
    """Build the figure under STYLE; artists keep the style after the context ends."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def _stable_index(name: str, modulo: int) -> int:
    # crc32, not hash(): Python salts str hashes per process, colours must not change.
    return zlib.crc32(name.encode("utf-8")) % modulo


def regularizer_color(regularizer: str) -> str:
    """The colour of a regularizer in every figure (Okabe-Ito)."""
    if regularizer in REGULARIZER_COLORS:
        return REGULARIZER_COLORS[regularizer]
    return _EXTRA_REGULARIZER_COLORS[_stable_index(regularizer, len(_EXTRA_REGULARIZER_COLORS))]


def regularizer_label(regularizer: str) -> str:
    """Display name: coop -> CoOp, nemesis-pun -> Nemesis (PUN), nemesis-beta0.5 -> Nemesis (β = 0.5)."""
    fixed = {
        "coop": "CoOp",
        "nemesis-pun": "Nemesis (PUN)",
        "nemesis-pan": "Nemesis (PAN)",
        "zero-shot": "Zero-shot CLIP",
    }
    if regularizer in fixed:
        return fixed[regularizer]
    beta = re.fullmatch(r"nemesis-beta([0-9.]+)", regularizer)
    if beta:
        return f"Nemesis (β = {beta.group(1)})"
    return str(regularizer)


def _dataset_key(dataset: str) -> str:
    key = re.sub(r"[^0-9a-z]", "", str(dataset).lower())
    return _DATASET_ALIASES.get(key, key)


@functools.cache
def _known_datasets() -> dict[str, tuple[int, str]]:
    """{key: (registration index, display name)} of the registered datasets (data.registry declares them)."""
    from nemesis_analysis.data.registry import DATASETS

    return {_dataset_key(name): (i, entry.label) for i, (name, entry) in enumerate(DATASETS.items())}


def dataset_label(dataset: str) -> str:
    """Display name of a dataset: oxford_pets -> OxfordPets; unknown names unchanged."""
    known = _known_datasets().get(_dataset_key(dataset))
    return known[1] if known else str(dataset)


def dataset_style(dataset: str) -> tuple[str, str]:
    """(colour, marker) of a dataset in every figure, fixed by its place in the registry."""
    key = _dataset_key(dataset)
    known = _known_datasets().get(key)
    index = known[0] if known else len(_known_datasets()) + _stable_index(key, 1000)
    return DATASET_COLORS[index % len(DATASET_COLORS)], DATASET_MARKERS[index % len(DATASET_MARKERS)]


def _format_value(column: str, value) -> str:
    if column == "regularizer":
        return regularizer_label(value)
    if column == "dataset":
        return dataset_label(value)
    if column == "shots":
        return f"{int(value)}-shot"
    return str(value)


def _context(df: pd.DataFrame, columns: Sequence[str] = _CONTEXT_COLUMNS) -> str:
    """'OxfordPets · ViT-B-16 · 16-shot' from the columns with a single value."""
    parts = []
    for column in columns:
        if column in df.columns:
            values = df[column].dropna().unique()
            if len(values) == 1:
                parts.append(_format_value(column, values[0]))
    return " · ".join(parts)


def _varying(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in df.columns and df[c].nunique(dropna=False) > 1]


def _series_label(key: dict[str, object]) -> str:
    return " · ".join(_format_value(c, v) for c, v in key.items())


def _title(base: str, context: str, override: str | None) -> str:
    if override is not None:
        return override
    # The context goes on its own line: a title wider than its axes would make constrained
    # layout shrink the axes on every draw.
    return f"{base}\n{context}" if context else base


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """NoDataError when the table is missing, empty, or lacks a needed column."""
    if df is None or not isinstance(df, pd.DataFrame):
        raise NoDataError(f"{what}: expected a DataFrame, got {type(df).__name__}")
    analysis.require_columns(df, columns, what)
    if df.empty:
        raise NoDataError(f"{what} is empty: nothing to plot")


# --------------------------------------------------------------------------- frequency


def _as_frequency_table(table: pd.DataFrame) -> pd.DataFrame:
    """Accept the aggregate, the per-seed table, or raw corruption rows."""
    if "frequency_mean" in table.columns:
        return table
    if "frequency" in table.columns and "seed" in table.columns:
        by = [c for c in analysis.GROUP_COLUMNS if c in table.columns]
        per_seed = table.dropna(subset=["frequency"])
        grouped = per_seed.groupby(by, sort=True, dropna=False)["frequency"]
        return pd.DataFrame(
            {
                "frequency_mean": grouped.mean(),
                "frequency_std": grouped.agg(analysis.sample_std),
                "num_seeds": grouped.count(),
            }
        ).reset_index()
    if {"op", "norm_before", "norm_after", "delta"} <= set(table.columns):
        return analysis.low_norm_frequency(table)
    return table  # _require below names what is missing


FREQUENCY_MEASURES: tuple[str, ...] = ("percent", "count")
_MEASURE_TEXT = {
    "percent": ("Low-Norm Effect frequency (%)", "Low-Norm Effect frequency", analysis.FREQUENCY_SHORT),
    "count": (
        "Corruptions with the Low-Norm Effect (count)",
        "Low-Norm Effect count",
        "Count = norm-reducing single-position corruptions (rescale/replace) that raise test accuracy; "
        "mean over seeds, error bars: 95% t-interval.",
    ),
}


def _measured(freq: pd.DataFrame, measure: str) -> pd.DataFrame:
    """The table to draw, with the measure's mean/std in `frequency_mean`/`frequency_std`."""
    if measure not in FREQUENCY_MEASURES:
        raise ConfigError(f"unknown frequency measure {measure!r}; choose one of: {', '.join(FREQUENCY_MEASURES)}")
    if not isinstance(freq, pd.DataFrame):
        return freq
    if measure == "percent":
        return _as_frequency_table(freq)
    if "count_mean" not in freq.columns and {"op", "norm_before", "norm_after", "delta"} <= set(freq.columns):
        freq = analysis.low_norm_counts(freq)
    _require(freq, ["dataset", "shots", "count_mean"], "Low-Norm Effect count table")
    std = freq["count_std"] if "count_std" in freq.columns else np.nan
    freq = freq.assign(frequency_mean=freq["count_mean"], frequency_std=std)
    if {"count_ci95_low", "count_ci95_high"} <= set(freq.columns):
        freq = freq.assign(frequency_ci95_low=freq["count_ci95_low"], frequency_ci95_high=freq["count_ci95_high"])
    return freq


def _series_keys(freq: pd.DataFrame) -> tuple[list[str], list[tuple]]:
    columns = _varying(freq, ["prompt_method", "regularizer", "backbone"])
    if not columns:
        return columns, [()]
    return columns, [tuple(k) for k in freq[columns].drop_duplicates().sort_values(columns).itertuples(index=False)]


def _series_rows(freq: pd.DataFrame, columns: list[str], key: tuple) -> pd.DataFrame:
    rows = freq
    for column, value in zip(columns, key):
        rows = rows[rows[column] == value]
    return rows


def _error_bars(rows: pd.DataFrame) -> np.ndarray:
    """(2, n) lower/upper error-bar lengths: the 95% Student-t interval over seeds when the table has one,
    else the std; NaN (no bar) with one seed."""
    mean = rows["frequency_mean"].to_numpy(float)
    if {"frequency_ci95_low", "frequency_ci95_high"} <= set(rows.columns):
        return np.vstack(
            [mean - rows["frequency_ci95_low"].to_numpy(float), rows["frequency_ci95_high"].to_numpy(float) - mean]
        )
    std = rows["frequency_std"].to_numpy(float)
    return np.vstack([std, std])


def _significant_bars(ax, x, rows: pd.DataFrame, width: float, first: bool) -> None:
    """The share of each bar that survives false-discovery control, drawn hatched inside the bar."""
    if "frequency_significant_mean" not in rows.columns:
        return
    heights = rows["frequency_significant_mean"].to_numpy(float)
    if np.isnan(heights).all():
        return
    ax.bar(x, np.nan_to_num(heights), width, fill=False, hatch="////", edgecolor="#222222", linewidth=0.0,
           label="BH-significant share" if first else None)  # fmt: skip
    for at, height in zip(np.atleast_1d(x), heights):
        if np.isfinite(height):
            ax.annotate(f"{height:.1f} sig.", (at, height), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "lw": 0})  # fmt: skip


def _frequency_bars(ax, freq: pd.DataFrame, integer: bool) -> None:
    """One bar per dataset (and series) for a single shot count; the BH-significant share hatched inside."""
    series_columns, series_keys = _series_keys(freq)
    datasets = sorted(freq["dataset"].unique(), key=dataset_label)
    x = np.arange(len(datasets))
    width = 0.8 / len(series_keys)
    for i, key in enumerate(series_keys):
        rows = _series_rows(freq, series_columns, key).groupby("dataset").first().reindex(datasets)
        offset = (i - (len(series_keys) - 1) / 2) * width
        if series_columns:
            label = _series_label(dict(zip(series_columns, key)))
            color = (
                regularizer_color(key[0]) if series_columns[0] == "regularizer" else COLORBLIND10[i % len(COLORBLIND10)]
            )
        else:
            label, color = None, [dataset_style(d)[0] for d in datasets]
        bars = ax.bar(
            x + offset,
            rows["frequency_mean"].to_numpy(float),
            width * 0.92,
            yerr=_error_bars(rows),
            color=color,
            edgecolor="black",
            linewidth=0.4,
            capsize=3,
            error_kw={"elinewidth": 0.8, "ecolor": "black"},
            label=label,
        )
        ax.bar_label(bars, fmt="%.0f" if integer else "%.1f", padding=2, fontsize=7)
        _significant_bars(ax, x + offset, rows, width * 0.92, first=i == 0)
    crowded = len(datasets) > 4
    ax.set_xticks(
        x, [dataset_label(d) for d in datasets], rotation=30 if crowded else 0, ha="right" if crowded else "center"
    )
    ax.set_xlabel("Dataset")
    ax.grid(axis="x", visible=False)
    handles, labels = ax.get_legend_handles_labels()
    if labels:  # the series first, the significant share last
        order = sorted(range(len(labels)), key=lambda i: labels[i] == "BH-significant share")
        ax.legend([handles[i] for i in order], [labels[i] for i in order],
                  title=" · ".join(c.capitalize() for c in series_columns) or None)  # fmt: skip


def _frequency_lines(ax, freq: pd.DataFrame, shots: list[int]) -> None:
    """One line per dataset (and series) against shots on a log2 axis."""
    series_columns, series_keys = _series_keys(freq)
    linestyles = ("-", "--", ":", "-.")
    for i, key in enumerate(series_keys):
        rows = _series_rows(freq, series_columns, key)
        for dataset in sorted(rows["dataset"].unique(), key=dataset_label):
            line = rows[rows["dataset"] == dataset].groupby("shots").first().sort_index()
            color, marker = dataset_style(dataset)
            label = dataset_label(dataset)
            if series_columns:
                label = f"{label} · {_series_label(dict(zip(series_columns, key)))}"
            ax.errorbar(
                line.index.to_numpy(float),
                line["frequency_mean"].to_numpy(float),
                yerr=_error_bars(line),
                color=color,
                marker=marker,
                linestyle=linestyles[i % len(linestyles)],
                capsize=3,
                elinewidth=0.8,
                label=label,
            )
            if "frequency_significant_mean" in line.columns and line["frequency_significant_mean"].notna().any():
                ax.plot(line.index.to_numpy(float), line["frequency_significant_mean"].to_numpy(float), color=color,
                        marker=marker, markerfacecolor="none", linestyle=":", linewidth=0.9,
                        label=f"{label} (BH-significant)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(shots[0] / 1.4, shots[-1] * 1.4)
    ax.set_xlabel("Shots per class (log₂ scale)")
    n_entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(title="Dataset", ncol=2 if n_entries > 6 else 1, loc="best")


@_styled
def plot_frequency(freq: pd.DataFrame, *, title: str | None = None, measure: str = "percent") -> Figure:
    """Figure 1(b): Low-Norm Effect frequency (%) or count against shots per class, one line per dataset.

    `freq` is `analysis.low_norm_frequency(...)` for `measure="percent"` or `analysis.low_norm_counts(...)`
    for `measure="count"` (per-seed or raw corruption rows are aggregated first). Error bars are the 95%
    Student-t interval of the mean over seeds (the std for tables without one; none with one seed); the
    share of effects that survive Benjamini-Hochberg control (`frequency_significant_mean`) is drawn hatched
    inside each bar, or as a dotted line. With a single shot count the figure is one bar per dataset. When several prompt methods,
    regularizers or backbones are present each gets its own line style (lines) or bar group (bars).
    """
    freq = _measured(freq, measure)
    ylabel, name, caption = _MEASURE_TEXT[measure]
    _require(freq, ["dataset", "shots", "frequency_mean"], f"{name} table")
    freq = freq.dropna(subset=["frequency_mean"])
    if freq.empty:
        raise NoDataError(f"{name} table has no defined value (no norm-reducing corruption)")
    freq = freq.assign(frequency_std=freq["frequency_std"] if "frequency_std" in freq.columns else np.nan)
    shots = sorted(int(s) for s in freq["shots"].unique())
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    top = float(np.nanmax(np.append(freq["frequency_mean"].to_numpy(float) + np.nan_to_num(_error_bars(freq)[1]), 0.0)))
    if len(shots) == 1:
        _frequency_bars(ax, freq, integer=measure == "count")
        base = f"{name} ({shots[0]} shots per class)"
    else:
        _frequency_lines(ax, freq, shots)
        base = f"{name} vs. shots"
    context = _context(freq, ("dataset", "backbone", "regularizer"))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(5.0, top * 1.15))
    ax.set_title(_title(base, context, title))
    fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", color="#444444")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# --------------------------------------------------------------------------- trajectory


def _run_column(df: pd.DataFrame) -> str | None:
    for column in ("run_id", "seed"):
        if column in df.columns:
            return column
    return None


def _series_groups(df: pd.DataFrame) -> list[tuple[dict[str, object], pd.DataFrame]]:
    """Split by regularizer plus whichever of dataset/backbone/shots vary, in a stable order."""
    columns = ["regularizer", *_varying(df, ("dataset", "backbone", "shots"))]
    groups = []
    for key, rows in df.groupby(columns, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        groups.append((dict(zip(columns, key)), rows))
    return groups


def _series_colors(groups: list[tuple[dict[str, object], pd.DataFrame]]) -> list[str]:
    regularizers = [key["regularizer"] for key, _ in groups]
    if len(set(regularizers)) == len(regularizers):
        return [regularizer_color(m) for m in regularizers]
    # The same regularizer appears in several series: fall back to distinct palette colours.
    return [COLORBLIND10[i % len(COLORBLIND10)] for i in range(len(groups))]


def _epoch_curves(rows: pd.DataFrame, norm_column: str, run: str | None) -> pd.DataFrame:
    """Per epoch: mean norm over positions then runs, its std over runs, and mean test accuracy."""
    keys = [run, "epoch"] if run else ["epoch"]
    positions = rows[(rows["position"] >= 0) & rows[norm_column].notna()]
    norm = positions.groupby(keys)[norm_column].mean()
    acc = rows.dropna(subset=["test_acc"]).groupby(keys)["test_acc"].mean()
    if run:
        norm_std = norm.groupby(level="epoch").agg(analysis.sample_std)
        norm = norm.groupby(level="epoch").mean()
        acc = acc.groupby(level="epoch").mean()
    else:
        norm_std = pd.Series(np.nan, index=norm.index)
    return pd.DataFrame({"norm": norm, "norm_std": norm_std, "test_acc": acc}).sort_index()


@_styled
def plot_trajectory(
    traj: pd.DataFrame,
    per_position: bool = False,
    *,
    norm_column: str = "norm",
    title: str | None = None,
) -> Figure:
    """Figure 3: context-vector norm (left axis, solid) and test accuracy (right axis, dashed) per epoch.

    One colour per regularizer. Norms are averaged over positions, then over seeds (shaded band:
    std over seeds); accuracy is averaged over seeds. With `per_position=True` each regularizer
    gets a panel in which every position's norm (mean over seeds) is a thin line.
    `norm_column` picks `norm` (L2), `norm_l1` or `norm_inf`.
    """
    _require(traj, ["epoch", "position", norm_column, "test_acc", "regularizer"], "trajectory table")
    run = _run_column(traj)
    groups = _series_groups(traj)
    colors = _series_colors(groups)
    if not per_position:
        return _trajectory_lines(traj, groups, colors, norm_column, run, title)
    return _trajectory_panels(traj, groups, colors, norm_column, run, title)


def _trajectory_lines(traj, groups, colors, norm_column: str, run: str | None, title: str | None) -> Figure:
    """One axes: mean norm per regularizer (solid, left) and test accuracy (dashed, right)."""
    norm_name = NORM_LABELS.get(norm_column, norm_column)
    style_handles = [
        Line2D([], [], color="black", linestyle="-", label=f"Mean {norm_name} (left axis)"),
        Line2D([], [], color="black", linestyle="--", label="Test accuracy (right axis)"),
    ]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax_acc = ax.twinx()
    ax_acc.spines["right"].set_visible(True)
    ax_acc.grid(False)
    regularizer_handles = []
    for (key, rows), color in zip(groups, colors):
        curves = _epoch_curves(rows, norm_column, run)
        label = _series_label(key)
        ax.plot(curves.index, curves["norm"], color=color, linestyle="-", label=label)
        if curves["norm_std"].notna().any():
            low, high = curves["norm"] - curves["norm_std"], curves["norm"] + curves["norm_std"]
            ax.fill_between(curves.index, low, high, color=color, alpha=0.15, linewidth=0)
        acc = curves["test_acc"].dropna()
        ax_acc.plot(acc.index, acc.to_numpy(), color=color, linestyle="--", label=f"{label} (accuracy)")
        regularizer_handles.append(Line2D([], [], color=color, linewidth=3, label=label))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch")
    ax.set_ylabel(f"Mean {norm_name}")
    ax_acc.set_ylabel("Test accuracy (%)")
    context = _context(traj, ("dataset", "backbone", "shots"))
    ax.set_title(_title("Prompt norm and test accuracy during training", context, title))
    fig.legend(
        handles=[*regularizer_handles, *style_handles],
        loc="outside lower center",
        ncol=min(4, len(regularizer_handles) + 2),
    )
    return fig


def _position_lines(ax, rows: pd.DataFrame, color: str, norm_column: str, run: str | None) -> pd.DataFrame:
    """Every position's norm (mean over seeds, thin) and their mean (thick); returns the epoch curves."""
    keys = ["position", "epoch"]
    per_run = rows[(rows["position"] >= 0) & rows[norm_column].notna()]
    if run:
        per_run = per_run.groupby([run, *keys])[norm_column].mean()
        by_position = per_run.groupby(level=keys).mean()
    else:
        by_position = per_run.groupby(keys)[norm_column].mean()
    for _, line in by_position.groupby(level="position"):
        line = line.droplevel("position").sort_index()
        ax.plot(line.index, line.to_numpy(), color=color, linewidth=0.6, alpha=0.45)
    curves = _epoch_curves(rows, norm_column, run)
    ax.plot(curves.index, curves["norm"], color=color, linewidth=2.2, linestyle="-")
    return curves


def _trajectory_panels(traj, groups, colors, norm_column: str, run: str | None, title: str | None) -> Figure:
    """One panel per regularizer: per-position norms and the regularizer's test accuracy."""
    norm_name = NORM_LABELS.get(norm_column, norm_column)
    acc_label = "Test accuracy (%)"
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    acc_axes = []
    for index, (ax, (key, rows), color) in enumerate(zip(axes, groups, colors)):
        curves = _position_lines(ax, rows, color, norm_column, run)
        ax_acc = ax.twinx()
        ax_acc.spines["right"].set_visible(True)
        ax_acc.grid(False)
        acc = curves["test_acc"].dropna()
        ax_acc.plot(acc.index, acc.to_numpy(), color="black", linestyle="--", linewidth=1.4)
        acc_axes.append(ax_acc)
        ax.set_title(_series_label(key))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        # Shared scales: name each axis once per row, on the outer side.
        if index % ncols == 0:
            ax.set_ylabel(norm_name)
        if index % ncols == ncols - 1 or index == len(groups) - 1:
            ax_acc.set_ylabel(acc_label)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    # One accuracy scale for every panel, so panels compare at a glance.
    lows, highs = zip(*(a.get_ylim() for a in acc_axes))
    for a in acc_axes:
        a.set_ylim(min(lows), max(highs))
    fig.suptitle(
        _title("Per-position prompt norms during training", _context(traj, ("dataset", "backbone", "shots")), title)
    )
    handles = [
        Line2D([], [], color="gray", linewidth=0.6, label=f"Per-position {norm_name}"),
        Line2D([], [], color="gray", linewidth=2.2, label=f"Mean {norm_name} (left axis)"),
        Line2D([], [], color="black", linestyle="--", label="Test accuracy (right axis)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    return fig


# --------------------------------------------------------------------------- heatmap


def _heatmap_grids(
    corruptions: pd.DataFrame, dataset: str | None, regularizer: str | None, fdr: float = analysis.DEFAULT_FDR
) -> dict[tuple, tuple[pd.DataFrame, pd.DataFrame]]:
    """{(shots, op): (delta grid, significance grid)}, one facet row per shot count: prompts of different
    shots are not averaged."""
    shot_counts = sorted(corruptions["shots"].dropna().unique()) if "shots" in corruptions.columns else [None]
    grids = {}
    for shots in shot_counts:
        rows = corruptions if shots is None else corruptions[corruptions["shots"] == shots]
        for op in analysis.CORRUPTION_OPS:
            grid = analysis.delta_grid(rows, dataset, op, regularizer=regularizer)
            if not grid.empty:
                marks = analysis.significance_grid(rows, dataset, op, regularizer=regularizer, fdr=fdr)
                marks = marks.reindex(index=grid.index, columns=grid.columns, fill_value=False).astype(bool)
                grids[(None if shots is None else int(shots), op)] = (grid, marks)
    return grids


def _mark_significant(ax, marks: pd.DataFrame) -> None:
    """A black frame around each cell whose effect survives Benjamini-Hochberg control."""
    for (row, column), marked in np.ndenumerate(marks.to_numpy(bool)):
        if marked:
            ax.add_patch(
                Rectangle((column + 0.06, row + 0.06), 0.88, 0.88, fill=False, edgecolor="black", linewidth=1.4)
            )


def _draw_heatmap_panel(ax, grid: pd.DataFrame, op: str, shots: int | None, faceted: bool, norm, cmap, annotate: bool):
    values = np.ma.masked_invalid(grid.to_numpy(float))  # (positions, factors)
    mesh = ax.pcolormesh(values, cmap=cmap, norm=norm, edgecolors="white", linewidth=0.5)
    ax.set_xticks(np.arange(grid.shape[1]) + 0.5, [f"{f:g}" for f in grid.columns])
    ax.set_yticks(np.arange(grid.shape[0]) + 0.5, [str(p) for p in grid.index])
    ax.invert_yaxis()  # position 0 on top, as the prompt reads
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    ax.set_xlabel(_OP_XLABELS[op])
    ax.set_ylabel("Context position i")
    ax.set_title(f"{_OP_TITLES[op]} ({shots}-shot)" if faceted else _OP_TITLES[op])
    if annotate:
        for (row, column), value in np.ndenumerate(grid.to_numpy(float)):
            if np.isfinite(value):
                dark = abs(norm(value) - 0.5) > 0.3
                text = f"{value:+.1f}" if round(value, 1) != 0 else "0.0"  # no "-0.0"
                ax.text(
                    column + 0.5,
                    row + 0.5,
                    text,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if dark else "black",
                )
    return mesh


@_styled
def plot_heatmap(
    corruptions: pd.DataFrame,
    *,
    dataset: str | None = None,
    regularizer: str | None = None,
    annotate: bool | None = None,
    title: str | None = None,
    fdr: float = analysis.DEFAULT_FDR,
) -> Figure:
    """Accuracy delta by position (rows) x factor or std (columns), one panel per corruption op and shot count.

    Cells are `analysis.delta_grid` (reps then seeds averaged) within one shot count; several shot
    counts give one row of panels each. The colour map is diverging and centred at 0 with one
    symmetric scale shared by the panels; grey cells were not measured. A black frame marks a cell where
    some row's accuracy change survives Benjamini-Hochberg control at `fdr` within its sweep
    (:func:`analysis.significance_grid`). `annotate` writes the value in each cell (default: when the grid
    is small).
    """
    corruptions = analysis.rows_for_view(corruptions)  # the "all" rows; base2new subsets have their own figure
    _require(corruptions, [*schema.KEYS["corruptions"], "delta"], "corruption table")
    both = _heatmap_grids(corruptions, dataset, regularizer, fdr)
    grids = {key: grid for key, (grid, _) in both.items()}
    if not grids:
        where = f" for dataset {dataset!r}" if dataset else ""
        raise NoDataError(f"corruption table has no rescale/replace rows to plot{where}")
    halfrange = max(
        float(np.nanmax(np.abs(g.to_numpy()))) if np.isfinite(g.to_numpy()).any() else 0.0 for g in grids.values()
    )
    norm = mcolors.CenteredNorm(vcenter=0.0, halfrange=halfrange if halfrange > 0 else 1.0)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#D9D9D9")
    facets = sorted({shots for shots, _ in grids}, key=lambda k: -1 if k is None else k)
    ops = [op for op in analysis.CORRUPTION_OPS if any(o == op for _, o in grids)]
    n_positions = max(len(g.index) for g in grids.values())
    n_factors = sum(max(len(g.columns) for (_, o), g in grids.items() if o == op) for op in ops)
    if annotate is None:
        annotate = max(len(g.index) * len(g.columns) for g in grids.values()) <= 160
    fig = Figure(
        figsize=(
            min(16.0, 1.6 + 0.55 * n_factors + 1.2 * len(ops)),
            min(12.0 * len(facets), (1.6 + 0.3 * n_positions) * len(facets)),
        ),
        layout="constrained",
    )
    axes = fig.subplots(len(facets), len(ops), squeeze=False)
    for row, shots in enumerate(facets):
        for column, op in enumerate(ops):
            ax = axes[row][column]
            if (shots, op) not in grids:
                ax.set_axis_off()
                continue
            mesh = _draw_heatmap_panel(ax, grids[(shots, op)], op, shots, len(facets) > 1, norm, cmap, annotate)
            _mark_significant(ax, both[(shots, op)][1])
    colorbar = fig.colorbar(mesh, ax=list(axes.ravel()), label=DELTA_LABEL, shrink=0.9)
    colorbar.outline.set_visible(False)
    table = corruptions if dataset is None else corruptions[corruptions["dataset"] == dataset]
    if regularizer is not None:
        table = table[table["regularizer"] == regularizer]
    n_seeds = table["seed"].nunique() if "seed" in table.columns else table["run_id"].nunique()
    context = _context(table)
    suffix = f"mean over {n_seeds} seed{'s' if n_seeds != 1 else ''} and reps"
    context = f"{context} ({suffix})" if context else suffix
    fig.suptitle(_title("Accuracy change from corrupting one context vector", context, title))
    if any(marks.to_numpy().any() for _, marks in both.values()):
        fig.text(0.01, 0.005, f"Framed cells: a row's accuracy change survives Benjamini-Hochberg control within its "
                 f"sweep (exact McNemar test, q < {fdr:g}).", fontsize=7, ha="left", va="bottom", color="#444444")  # fmt: skip
    return fig


# --------------------------------------------------------------------------- norms


def _norms_from_table(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(mean, std over runs) per position, from a trajectory, corruption or plain norm table."""
    run = _run_column(table)
    if "position" not in table.columns:
        raise NoDataError("norm table lacks column position")
    rows = table[table["position"] >= 0]
    if "epoch" in rows.columns and "norm" in rows.columns:  # trajectories: the last epoch of each run
        last = rows.groupby(run)["epoch"].transform("max") if run else rows["epoch"].max()
        rows, value = rows[rows["epoch"] == last], "norm"
    elif "norm_before" in rows.columns:  # corruptions: the trained (uncorrupted) norm
        rows, value = rows[rows["op"] != "none"] if "op" in rows.columns else rows, "norm_before"
    elif "norm" in rows.columns:
        value = "norm"
    else:
        raise NoDataError("norm table needs a norm or norm_before column")
    if rows.empty:
        raise NoDataError("norm table has no per-position rows")
    if run:
        per_run = rows.groupby([run, "position"])[value].mean()
        grouped = per_run.groupby(level="position")
        return grouped.mean(), grouped.agg(analysis.sample_std)
    mean = rows.groupby("position")[value].mean()
    return mean, pd.Series(np.nan, index=mean.index)


@_styled
def plot_norms(
    norms: Sequence[float] | pd.DataFrame,
    highlight: Sequence[int] = (),
    *,
    title: str | None = None,
    ylabel: str = "L2 norm ‖p_i‖₂",
) -> Figure:
    """Per-position norms of a trained prompt as bars; `highlight` positions in a contrasting colour.

    `norms` is a sequence (position i = index i) or a table: trajectories (last epoch),
    corruptions (`norm_before`) or any table with `position` and `norm`; several runs are
    averaged, with their std as error bars. Pass `analysis.low_norm_positions(...)` as
    `highlight` to mark the positions where shrinking the vector raised accuracy.
    """
    if isinstance(norms, pd.DataFrame):
        if norms.empty:
            raise NoDataError("norm table is empty: nothing to plot")
        mean, std = _norms_from_table(norms)
        context = _context(norms)
    else:
        values = np.asarray(list(norms) if norms is not None else [], dtype=float)
        if values.ndim != 1 or values.size == 0:
            raise NoDataError("no norms to plot: expected a non-empty 1-D sequence")
        mean = pd.Series(values, index=np.arange(values.size))
        std = pd.Series(np.nan, index=mean.index)
        context = ""
    positions = mean.index.astype(int).to_numpy()
    highlight = sorted({int(h) for h in highlight})
    unknown = [h for h in highlight if h not in set(positions)]
    if unknown:
        valid = f"{positions.min()}..{positions.max()}"
        raise ConfigError(f"highlight position(s) {unknown} are not context positions; positions are {valid}")
    is_hit = np.isin(positions, highlight)

    fig = Figure(figsize=(max(5.6, 0.3 * len(positions) + 1.5), 3.8), layout="constrained")
    ax = fig.add_subplot()
    error = std.fillna(0).to_numpy(float) if std.notna().any() else None
    groups = [
        (~is_hit, OKABE_ITO["blue"], "Other positions"),
        (is_hit, OKABE_ITO["vermillion"], "Shrinking raised accuracy"),
    ]
    for mask, color, label in groups:
        if mask.any():
            ax.bar(
                positions[mask],
                mean.to_numpy(float)[mask],
                0.8,
                yerr=None if error is None else error[mask],
                color=color,
                edgecolor="black",
                linewidth=0.4,
                capsize=2,
                error_kw={"elinewidth": 0.8},
                label=label if highlight else None,
            )
    ax.axhline(float(mean.mean()), color="#555555", linestyle=":", linewidth=1.0, label="Mean over positions")
    if len(positions) <= 40:
        ax.set_xticks(positions, [str(p) for p in positions])
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("Context position i")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, None)
    # Outside the axes: a legend wider than a narrow axes would push constrained layout around.
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3)
    ax.set_title(_title("Per-position norms of the learned context", context, title))
    return fig


# --------------------------------------------------------------------------- saving


def save_figure(fig: Figure, path: str | os.PathLike, format: str | None = None) -> Path:
    """Save atomically with the umask's permissions (fsio.atomic_path); 300 dpi. Returns the path.

    `format` defaults to the path's suffix, or "png" when it has none (the suffix is then
    added). Parent folders are created.
    """
    path = Path(path)
    supported = fig.canvas.get_supported_filetypes()
    suffix = path.suffix[1:].lower()
    if format is None:
        format = suffix if suffix in supported else "png"
    format = format.lower()
    if format not in supported:
        raise ConfigError(f"unsupported figure format {format!r}; choose one of: {', '.join(sorted(supported))}")
    if suffix in supported and suffix != format:
        raise ConfigError(f"figure path {str(path)!r} has suffix .{suffix} but format is {format!r}")
    if suffix != format:
        path = path.with_name(f"{path.name}.{format}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Dates left out so that re-saving the same figure gives the same bytes.
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(format)
    with (
        fsio.atomic_path(path, "a figure") as temporary,
        matplotlib.rc_context({"svg.hashsalt": STYLE["svg.hashsalt"]}),
    ):
        fig.savefig(temporary, format=format, dpi=300, bbox_inches="tight", metadata=metadata)
    logger.info("saved figure %s", path)
    return path


__all__ = [
    "COLORBLIND10",
    "REGULARIZER_COLORS",
    "OKABE_ITO",
    "dataset_label",
    "dataset_style",
    "regularizer_color",
    "regularizer_label",
    "plot_frequency",
    "plot_heatmap",
    "plot_norms",
    "plot_trajectory",
    "save_figure",
]
