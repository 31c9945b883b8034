"""The protocol commands: ``nemesis evaluate`` (a learned prompt on any test split) and ``nemesis plot base-new``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from nemesis_analysis.errors import NemesisError

_WIDTH = None if sys.stdout.isatty() else 160  # as in cli.py: no wrapping at 80 columns off a terminal
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

# Own option definitions: importing nemesis_analysis.cli here would be circular (cli registers this command).
CheckpointsOpt = Annotated[Path, typer.Option("--checkpoints", help="Folder for trained prompts and caches.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="Folder for Parquet tables and figures.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="Folder holding the CoOp datasets (default: $NEMESIS_DATA).")
]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="open_clip weights cache.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; say which file is missing.")]

FigureOutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (default: reports/figures/).")]
FigureFormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="png (300 dpi), pdf or svg.")]
RunOpt = Annotated[Optional[str], typer.Option("--run", help="Run id of a trained prompt (under --checkpoints).")]
PromptOpt = Annotated[Optional[Path], typer.Option("--prompt", help="A prompt folder saved by `nemesis train`.")]
EvalDatasetOpt = Annotated[
    Optional[str], typer.Option("--dataset", "-d", help="Dataset whose test split to evaluate (default: the run's own).")
]
ClassesOpt = Annotated[str, typer.Option("--classes", help="all, base or new (base2new's class halves).")]


def _fail(error: NemesisError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def evaluate_command(
    run: RunOpt = None,
    prompt: PromptOpt = None,
    dataset: EvalDatasetOpt = None,
    classes: ClassesOpt = "all",
    data_root: DataRootOpt = None,
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    checkpoints: CheckpointsOpt = Path("checkpoints"),
    reports: ReportsOpt = Path("reports"),
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a learned prompt on a dataset's test split (all, base or new classes); append to reports/evaluations."""
    from nemesis_analysis.evaluate import evaluate_saved
    from nemesis_analysis.session import Session

    session = Session(checkpoints, reports, device, offline, data_root, cache_dir, progress=not quiet)
    try:
        learned, result = evaluate_saved(session, run_id=run, prompt_path=prompt, dataset=dataset, classes=classes)
    except NemesisError as error:
        raise _fail(error) from None
    state = "already recorded" if result.reused else "recorded"
    console.print(
        f"run {learned.identity['run_id']} on {result.eval_dataset} ({result.eval_classes} classes, "
        f"{result.n_classes}-way, {result.n_test} test images): accuracy {result.acc:.2f}% ({state})",
        highlight=False,
    )


def plot_base_new_command(
    min_delta: Annotated[
        float, typer.Option("--min-delta", help="Count a corruption when it raises accuracy by more than this (points).")
    ] = 0.0,
    reports: ReportsOpt = Path("reports"),
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Low-Norm Effect frequency on base (seen) vs new (unseen) classes of base2new runs."""
    from nemesis_analysis import figures
    from nemesis_analysis.figures_protocols import base_new_figure

    try:
        path, format = figures.resolve_output(reports, "frequency_base_new", out, format)
        path = figures.save(base_new_figure(reports, min_delta), path, format)
    except NemesisError as error:
        raise _fail(error) from None
    console.print(str(path), highlight=False, soft_wrap=True)
