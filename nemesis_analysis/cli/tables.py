"""The commands that read the tables (plot frequency|trajectory|heatmap|norms, summary) and write figures or CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from nemesis_analysis.cli.options import DEFAULT_REPORTS, ReportsOpt, console, handle_errors
from nemesis_analysis.errors import ConfigError

FigureOutOpt = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Figure file to write (default: REPORTS/figures/<name>.<format>).")
]
FdrOpt = Annotated[
    float,
    typer.Option(
        "--fdr",
        help="False-discovery rate: an effect is significant when its Benjamini-Hochberg q-value (per sweep) is below this.",
    ),
]
FigureFormatOpt = Annotated[
    Optional[str],
    typer.Option("--format", "-f", help="png (300 dpi), pdf or svg (default: the --out suffix, else png)."),
]


RegularizerOpt = Annotated[
    Optional[str],
    typer.Option("--regularizer", help="Only runs of this regularizer (coop, nemesis-pun, nemesis-pan, ...)."),
]
# --method was this option's name before the regularizer column was renamed; kept working, not shown.
RegularizerAliasOpt = Annotated[Optional[str], typer.Option("--method", hidden=True)]


def _regularizer(regularizer: str | None, alias: str | None) -> str | None:
    """--regularizer, or the former --method spelling of it."""
    if regularizer is not None and alias is not None and regularizer != alias:
        raise ConfigError(f"--regularizer {regularizer} and --method {alias} disagree; pass --regularizer only")
    return regularizer if regularizer is not None else alias


def _write_figure(build, reports: Path, name: str, out: Path | None, format: str | None) -> None:
    """Check the output first (a bad --format fails before any work), build, save, print the path."""
    from nemesis_analysis.report import figures

    path, format = figures.resolve_output(reports, name, out, format)
    path = figures.save(build(), path, format)
    console.print(str(path), highlight=False, soft_wrap=True)


@handle_errors
def plot_frequency_command(
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Only this backbone.")] = None,
    regularizer: RegularizerOpt = None,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Only these datasets, comma-separated.")] = None,
    min_delta: Annotated[
        float,
        typer.Option("--min-delta", help="Count a corruption when it raises accuracy by more than this (points)."),
    ] = 0.0,
    reports: ReportsOpt = DEFAULT_REPORTS,
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
    measure: Annotated[
        str, typer.Option("--as", help="percent (of norm-reducing corruptions) or count (as the paper's Figure 1(b)).")
    ] = "percent",
    fdr: FdrOpt = 0.05,
    method: RegularizerAliasOpt = None,
) -> None:
    """Figure 1(b): Low-Norm Effect frequency against shots, one line per dataset, 95% intervals over seeds and
    the BH-significant share (from reports/corruptions)."""
    from nemesis_analysis.report import figures

    regularizer = _regularizer(regularizer, method)
    build = lambda: figures.frequency_figure(reports, backbone, regularizer, datasets, min_delta, measure, fdr)  # noqa: E731
    _write_figure(build, reports, figures.figure_name("frequency"), out, format)


@handle_errors
def plot_trajectory_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset of the runs.")],
    shots: Annotated[int, typer.Option("--shots", "-k", help="Shots per class of the runs.")],
    seed: Annotated[int, typer.Option("--seed", help="Split seed of the runs.")],
    backbone: Annotated[
        Optional[str], typer.Option("--backbone", help="Backbone (needed when several were trained).")
    ] = None,
    per_position: Annotated[
        bool, typer.Option("--per-position", help="One panel per regularizer, a line per position.")
    ] = False,
    reports: ReportsOpt = DEFAULT_REPORTS,
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Figure 3: norm and test accuracy per epoch, CoOp against each Nemesis variant (from reports/trajectories)."""
    from nemesis_analysis.report import figures

    build = lambda: figures.trajectory_figure(reports, dataset, shots, seed, backbone, per_position)  # noqa: E731
    name = figures.figure_name("trajectory", dataset=dataset, shots=shots, seed=seed, per_position=per_position)
    _write_figure(build, reports, name, out, format)


@handle_errors
def plot_heatmap_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset of the corrupted runs.")],
    regularizer: Annotated[
        Optional[str], typer.Option("--regularizer", help="Regularizer of the runs (default: coop, or the only one).")
    ] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Only this backbone.")] = None,
    shots: Annotated[Optional[int], typer.Option("--shots", "-k", help="Only this shot count.")] = None,
    reports: ReportsOpt = DEFAULT_REPORTS,
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
    fdr: FdrOpt = 0.05,
    method: RegularizerAliasOpt = None,
) -> None:
    """Accuracy delta by position x factor/std, one panel per op, seeds averaged; framed cells survive BH (from reports/corruptions)."""
    from nemesis_analysis.report import figures

    regularizer = _regularizer(regularizer, method)
    build = lambda: figures.heatmap_figure(reports, dataset, regularizer, backbone, shots, fdr=fdr)  # noqa: E731
    _write_figure(build, reports, figures.figure_name("heatmap", dataset=dataset), out, format)


@handle_errors
def plot_norms_command(
    run: Annotated[str, typer.Option("--run", help="Run id (or a unique prefix of it).")],
    reports: ReportsOpt = DEFAULT_REPORTS,
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Per-position norms of a trained prompt; positions where shrinking raised accuracy highlighted."""
    from nemesis_analysis.report import figures

    _write_figure(
        lambda: figures.norms_figure(reports, run), reports, figures.figure_name("norms", run_id=run), out, format
    )


@handle_errors
def summary(
    reports: ReportsOpt = DEFAULT_REPORTS,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Folder for summary_*.csv/.md (default: REPORTS).")
    ] = None,
    min_delta: Annotated[
        float, typer.Option("--min-delta", help="Low-Norm Effect threshold for the frequency (points).")
    ] = 0.0,
    table_kind: Annotated[
        Optional[str], typer.Option("--table", help="A paper table instead: fewshot, base2new, dg or crossdataset.")
    ] = None,
    table_format: Annotated[str, typer.Option("--format", help="With --table: md, latex or csv.")] = "md",
    compare: Annotated[
        Optional[str],
        typer.Option("--compare", help="With --table: 'paper' adds the published values and the difference."),
    ] = None,
    fdr: FdrOpt = 0.05,
    compare_to: Annotated[
        Optional[str],
        typer.Option(
            "--compare-to",
            help="Compare every other regularizer with this one (e.g. coop) on matched runs: mean difference, 95% interval, paired t-test.",
        ),
    ] = None,
) -> None:
    """Accuracy tables, mean ± std over seeds per (dataset, shots, regularizer); saved as CSV and Markdown."""
    from nemesis_analysis.report import analysis, summaries

    if table_kind is not None or compare is not None or table_format != "md":
        for path in summaries.print_paper_table(reports, out, table_kind, table_format, compare, echo=console.out):
            console.print(str(path), highlight=False, soft_wrap=True)
        return
    tables = summaries.summary_tables(reports, min_delta=min_delta, fdr=fdr, compare_to=compare_to)
    titles = {
        "runs": "trained runs: test accuracy (%), zero-shot accuracy (%), mean context norm",
        "corruptions": "corruptions: uncorrupted accuracy (%) and accuracy change (points) per op",
        "frequency": "Low-Norm Effect frequency (%), all and BH-significant, 95% intervals over seeds",
        "comparison": f"paired comparison with {compare_to}: accuracy difference (points) on matched runs",
        "frequency_counts": "Low-Norm Effect count per seed: n_effect of n_reducing norm-reducing corruptions",
    }
    for name, frame in tables.items():
        shown = summaries.display_table(frame)
        table = Table(title=titles.get(name, name))
        for column in shown.columns:
            table.add_column(str(column), overflow="fold")
        for row in shown.itertuples(index=False, name=None):
            table.add_row(*(analysis.format_cell(value) for value in row))
        console.print(table)
    for name in ("runs", "corruptions"):
        if name not in tables:
            console.print(f"no {name} rows yet in {reports / name}", highlight=False)
    for path in summaries.write_summary(tables, out if out is not None else reports):
        console.print(str(path), highlight=False, soft_wrap=True)
