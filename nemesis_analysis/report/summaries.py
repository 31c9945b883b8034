"""Summary and paper tables written from the tables under a reports folder (CSV, Markdown, LaTeX; no torch).

:func:`summary_tables` builds the mean ± std tables over seeds (runs, corruptions, Low-Norm Effect
frequency) and :func:`write_summary` saves them as CSV and Markdown (``nemesis summary``, a study's
outputs); :func:`paper_table` and :func:`print_paper_table` write the paper's result tables
(``nemesis summary --table``), built by :mod:`nemesis_analysis.report.tables`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.report import analysis, tables
from nemesis_analysis.report.reading import PRODUCERS
from nemesis_analysis.storage import fsio, store


def _with_mean_norm(summary: pd.DataFrame, runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    table = runs.drop_duplicates("run_id", keep="last")
    norms = analysis.aggregate_over_seeds(table, by, "mean_norm").reset_index()
    out = summary.merge(norms, on=by, how="left")
    order = [c for c in out.columns if c != "num_seeds"] + ["num_seeds"]
    return out[order]


def summary_tables(
    reports_dir: Path | str, min_delta: float = 0.0, fdr: float = analysis.DEFAULT_FDR, compare_to: str | None = None
) -> dict[str, pd.DataFrame]:
    """Numeric summary tables (mean, std, n and 95% Student-t interval over seeds per dataset, backbone,
    shots, prompt method, regularizer).

    "runs": final test, zero-shot accuracy and mean context norm (from reports/runs);
    "corruptions": per op, uncorrupted accuracy over seeds and best/worst/mean delta (per ``eval_classes``
    too when base2new runs were swept on base and new classes);
    "frequency": the Low-Norm Effect frequency (analysis.FREQUENCY_DEFINITION), seeds compared on
    their common corruption cells; "frequency_counts": per seed, the count of Low-Norm Effect
    corruptions `n_effect` out of the `n_reducing` norm-reducing ones (the paper plots counts), and
    `n_significant`/`frequency_significant`: the effects that survive Benjamini-Hochberg control at ``fdr``;
    "comparison" (with ``compare_to``, a baseline method such as coop): each other method against it on
    matched runs (:func:`analysis.paired_comparisons`).
    Tables without rows are left out; NoDataError when neither runs nor corruptions exist.
    """
    analysis.check_fdr(fdr)
    by = list(analysis.GROUP_COLUMNS)
    runs = store.read_table(reports_dir, "runs")
    corruptions = store.read_table(reports_dir, "corruptions")
    if runs.empty and corruptions.empty:
        raise NoDataError(
            f"no rows in {store.table_path(reports_dir, 'runs')} or {store.table_path(reports_dir, 'corruptions')}; "
            f"run {PRODUCERS['runs']} first"
        )
    tables: dict[str, pd.DataFrame] = {}
    if not runs.empty:
        run_by = analysis.identity_by(runs.drop_duplicates("run_id", keep="last"), by)  # as summarize_runs groups
        tables["runs"] = _with_mean_norm(analysis.summarize_runs(runs, by), runs, run_by)
        if compare_to is not None:
            tables["comparison"] = analysis.paired_comparisons(runs, compare_to)
    if not corruptions.empty:
        corruptions = analysis.with_run_settings(corruptions, runs)  # e.g. norm_weight: never pooled as seeds
        # base2new sweeps measured base and new classes apart: their rows say which (column eval_classes).
        by = by + ["eval_classes"] if (corruptions["eval_classes"] != analysis.ALL_CLASSES).any() else by
        summary = analysis.summarize_corruptions(corruptions, by)
        if not summary.empty:
            tables["corruptions"] = summary
        common = analysis.restrict_to_common_grid(analysis.with_q_values(corruptions), by)  # q-values per whole sweep
        frequency = analysis.low_norm_frequency(common, min_delta=min_delta, by=by, fdr=fdr)
        if not frequency.empty:
            tables["frequency"] = frequency
            tables["frequency_counts"] = analysis.low_norm_frequency_per_seed(common, min_delta=min_delta, by=by,
                                                                              fdr=fdr)  # fmt: skip
    return tables


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean/std column pairs merged into "71.23 ± 0.45" strings."""
    return analysis.merge_mean_std(table)


def write_summary(tables: dict[str, pd.DataFrame], out_dir: Path | str) -> list[Path]:
    """summary_<name>.csv (numeric mean/std columns) and summary_<name>.md (mean ± std) per table."""
    out_dir = Path(out_dir)
    paths = []
    for name, table in tables.items():
        csv = out_dir / f"summary_{name}.csv"
        markdown = out_dir / f"summary_{name}.md"
        fsio.atomic_write_text(csv, table.to_csv(index=False), "a summary table")
        text = {"frequency": f"{analysis.FREQUENCY_DEFINITION}\n\n",
                "comparison": f"{analysis.COMPARISON_DEFINITION}\n\n"}.get(name, "")  # fmt: skip
        fsio.atomic_write_text(
            markdown, text + analysis.format_table_markdown(display_table(table)) + "\n", "a summary table"
        )
        paths += [csv, markdown]
    return paths


TABLE_SUFFIXES = {"md": "md", "latex": "tex", "csv": "csv"}


def paper_table(
    reports_dir: Path | str, kind: str | None, format: str = "md", compare: str | None = None
) -> tuple[str, str]:
    """(file name, text) of the paper table ``kind`` built from reports/runs and reports/evaluations."""
    if kind is None:
        raise ConfigError(f"--compare and --format need --table; choose one of: {', '.join(tables.TABLE_KINDS)}")
    if compare not in (None, "paper"):
        raise ConfigError(f"--compare takes 'paper'; got {compare!r}")
    if format not in tables.FORMATS:
        raise ConfigError(f"unknown --format {format!r} for --table; choose one of: {', '.join(tables.FORMATS)}")
    runs = store.read_table(reports_dir, "runs")
    evaluations = store.read_table(reports_dir, "evaluations")
    table = tables.build(kind, runs, evaluations)
    if compare == "paper":
        table = tables.compare_paper(table)
    suffix = "_vs_paper" if compare else ""
    return f"table_{kind}{suffix}.{TABLE_SUFFIXES[format]}", tables.render(table, format)


def print_paper_table(reports_dir, out_dir, kind, format="md", compare=None, echo=print) -> list[Path]:
    """Print the paper table and save it under ``out_dir`` (default: the reports folder); returns the path."""
    name, text = paper_table(reports_dir, kind, format, compare)
    echo(text.rstrip("\n"))
    path = Path(out_dir if out_dir is not None else reports_dir) / name
    return [fsio.atomic_write_text(path, text, "a summary table")]


__all__ = [
    "TABLE_SUFFIXES",
    "display_table",
    "paper_table",
    "print_paper_table",
    "summary_tables",
    "write_summary",
]
