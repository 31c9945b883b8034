"""The protocol commands: ``nemesis evaluate`` (a learned prompt on any test split) and ``nemesis plot base-new``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nemesis_analysis.cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_REPORTS,
    CacheDirOpt,
    CheckpointsOpt,
    DataRootOpt,
    DeviceOpt,
    OfflineOpt,
    QuietOpt,
    ReportsOpt,
    build_session,
    console,
    handle_errors,
)
from nemesis_analysis.cli.tables import FigureFormatOpt, FigureOutOpt

RunOpt = Annotated[Optional[str], typer.Option("--run", help="Run id of a trained prompt (under --checkpoints).")]
PromptOpt = Annotated[Optional[Path], typer.Option("--prompt", help="A prompt folder saved by `nemesis train`.")]
EvalDatasetOpt = Annotated[
    Optional[str],
    typer.Option("--dataset", "-d", help="Dataset whose test split to evaluate (default: the run's own)."),
]
ClassesOpt = Annotated[str, typer.Option("--classes", help="all, base or new (base2new's class halves).")]
MinDeltaOpt = Annotated[
    float, typer.Option("--min-delta", help="Count a corruption when it raises accuracy by more than this (points).")
]


def run_evaluation(session, *, run_id, prompt_path, dataset, classes):
    """Evaluate one prompt on one dataset's test split (tests patch this call)."""
    from nemesis_analysis.evaluate import evaluate_saved

    return evaluate_saved(session, run_id=run_id, prompt_path=prompt_path, dataset=dataset, classes=classes)


@handle_errors
def evaluate_command(
    run: RunOpt = None,
    prompt: PromptOpt = None,
    dataset: EvalDatasetOpt = None,
    classes: ClassesOpt = "all",
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    reports: ReportsOpt = DEFAULT_REPORTS,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a learned prompt on a dataset's test split (all, base or new classes) into reports/evaluations."""
    session = build_session(checkpoints=checkpoints, reports=reports, data_root=data_root, device=device,
                            offline=offline, cache_dir=cache_dir, quiet=quiet)  # fmt: skip
    learned, result = run_evaluation(session, run_id=run, prompt_path=prompt, dataset=dataset, classes=classes)
    state = "already recorded" if result.reused else "recorded"
    console.print(
        f"run {learned.identity['run_id']} on {result.eval_dataset} ({result.eval_classes} classes, "
        f"{result.n_classes}-way, {result.n_test} test images): accuracy {result.acc:.2f}% ({state})",
        highlight=False,
    )


@handle_errors
def plot_base_new_command(
    min_delta: MinDeltaOpt = 0.0,
    reports: ReportsOpt = DEFAULT_REPORTS,
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Low-Norm Effect frequency on base (seen) vs new (unseen) classes of base2new runs."""
    from nemesis_analysis.report import figures
    from nemesis_analysis.report.figures_protocols import base_new_figure

    path, format = figures.resolve_output(reports, "frequency_base_new", out, format)
    path = figures.save(base_new_figure(reports, min_delta), path, format)
    console.print(str(path), highlight=False, soft_wrap=True)
