"""The Low-Norm Effect frequency on base versus new classes of base2new runs: the table and its figure (torch-free)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from nemesis_analysis.errors import NoDataError
from nemesis_analysis.report import analysis
from nemesis_analysis.storage import store

BY: tuple[str, ...] = (*analysis.GROUP_COLUMNS, "eval_classes")
SUBSETS: tuple[str, ...] = ("base", "new")


def base_new_frequency(corruptions: pd.DataFrame, min_delta: float = 0.0) -> pd.DataFrame:
    """analysis.low_norm_frequency per (dataset, backbone, shots, regularizer, eval_classes) for base and new rows.

    Rows of other subsets ("all") are left out; seeds are compared on the cells they all measured.
    """
    corruptions = analysis.rows_for_view(corruptions, BY)  # every subset, eval_classes filled where missing
    rows = corruptions[corruptions["eval_classes"].isin(SUBSETS)]
    if rows.empty:
        raise NoDataError(
            "no corruption rows on base or new classes; run `nemesis corrupt` on a --protocol base2new run"
        )
    return analysis.low_norm_frequency(rows, min_delta=min_delta, by=BY, same_grid=True)


def base_new_frequency_figure(frequency: pd.DataFrame) -> Figure:
    """Grouped bars: one group per (dataset, shots, regularizer), a base and a new bar (mean, sample-std error bar)."""
    groups = frequency.assign(
        group=frequency["dataset"]
        + " "
        + frequency["shots"].astype(int).astype(str)
        + "-shot\n"
        + frequency["regularizer"]
    )
    labels = sorted(groups["group"].unique())
    figure = Figure(figsize=(max(4.0, 1.4 * len(labels) + 1.5), 3.6))
    axes = figure.add_subplot()
    width = 0.38
    for k, subset in enumerate(SUBSETS):
        part = groups[groups["eval_classes"] == subset].set_index("group").reindex(labels)
        positions = [i + (k - 0.5) * width for i in range(len(labels))]
        errors = part["frequency_std"].fillna(0.0)
        axes.bar(positions, part["frequency_mean"], width, yerr=errors, capsize=3, label=f"{subset} classes")
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylabel("Low-Norm Effect frequency (%)")
    axes.set_title("Low-Norm Effect on base (seen) vs new (unseen) classes", fontsize=10)
    axes.legend(fontsize=8)
    figure.text(0.01, 0.01, analysis.FREQUENCY_SHORT, fontsize=6)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def base_new_figure(reports_dir: Path | str, min_delta: float = 0.0) -> Figure:
    """The base-vs-new figure from ``reports_dir``'s corruptions table."""
    return base_new_frequency_figure(base_new_frequency(store.read_table(reports_dir, "corruptions"), min_delta))
