"""The commands that inspect what is installed (datasets, models); they read and never write."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from nemesis_analysis.cli.options import (
    DEFAULT_CHECKPOINTS,
    CacheDirOpt,
    CheckpointsOpt,
    DataRootOpt,
    QuietOpt,
    build_session,
    console,
    handle_errors,
)


@handle_errors
def datasets(
    data_root: DataRootOpt = None,
    sample: Annotated[
        int, typer.Option("--sample", help="Images decoded per split (0: none; existence is always checked).")
    ] = 50,
    dataset: Annotated[
        Optional[list[str]],
        typer.Option(
            "--dataset", "-d", help="Only this dataset: a CoOp name or folder:PATH / manifest:PATH (repeatable)."
        ),
    ] = None,
    shots: Annotated[
        Optional[int], typer.Option("--shots", "-k", help="Also report classes with fewer training images than this.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Report every CoOp dataset under the data root (or the --dataset ones, custom folder:/manifest: specs
    included): found or not, images per split, classes, problems and fixes (with --shots: short classes).

    Reads only; modifies nothing. Exit code 0 whatever it finds under the data root (missing or damaged
    datasets are reported, not errors); exit code 2 only when the data root itself is not given or does
    not exist, or an option is invalid.
    """
    from nemesis_analysis.errors import ConfigError

    if sample < 0:
        raise ConfigError(f"--sample must be at least 0, got {sample}")
    if shots is not None and shots < 1:
        raise ConfigError(f"--shots must be at least 1, got {shots}")
    session = build_session(data_root=data_root, quiet=quiet)
    from nemesis_analysis.data.diagnose import SPLITS, diagnose_datasets

    reports = diagnose_datasets(session.data_root, names=dataset or None, sample_size=sample, shots=shots)
    table = Table(title="datasets", title_justify="left")
    for column in ("dataset", "status", "classes", *SPLITS, "folder"):
        table.add_column(column, justify="right" if column in ("classes", *SPLITS) else "left")
    for report in reports:
        if not report.found:
            status = "[red]not found[/]"
        elif report.ok:
            status = "[green]ok[/]"
        else:
            status = f"[yellow]{len(report.problems)} problem(s)[/]"
        counts = [str(report.counts[s]) if s in report.counts else "-" for s in SPLITS]
        classes = str(report.num_classes) if report.counts else "-"
        table.add_row(report.name, status, classes, *counts, str(report.root))
    console.print(table)
    problems = [line for report in reports for line in report.problems]
    for line in problems:
        console.print(f"[yellow]problem:[/] {line}", highlight=False, soft_wrap=True)
    found = sum(r.found for r in reports)
    usable = sum(r.ok for r in reports)
    console.print(f"{found} of {len(reports)} datasets found, {usable} without problems", highlight=False)


@handle_errors
def models(
    filter: Annotated[
        Optional[str], typer.Option("--filter", help="Only architectures whose name contains this (case-insensitive).")
    ] = None,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    cache_dir: CacheDirOpt = None,
) -> None:
    """List open_clip architectures (and nemesis-tiny), their pretrained tags and which are cached locally."""
    import open_clip

    from nemesis_analysis.clip import weights
    from nemesis_analysis.clip.architectures import TINY_BACKBONE, register_model_configs
    from nemesis_analysis.clip.tiny import find_tiny_clip

    session = build_session(checkpoints=checkpoints, cache_dir=cache_dir, quiet=True)
    register_model_configs()
    names = [n for n in open_clip.list_models() if not filter or filter.lower() in n.lower()]
    if not names:
        console.print(f"no architecture matches {filter!r}; run `nemesis models` for the full list", highlight=False)
        return
    table = Table(title="architectures", title_justify="left")
    for column in ("architecture", "pretrained tags", "cached locally", "QuickGELU"):
        table.add_column(column, overflow="fold")
    for name in names:
        if name == TINY_BACKBONE:
            tags = ["embedded", "none"]
            cached = ["embedded"] if find_tiny_clip(session.checkpoints_dir) is not None else []
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            cached = weights.cached_tags(name, session.weights_cache_dir)
        quick = weights.architecture_uses_quick_gelu(name)
        table.add_row(name, ", ".join(tags) or "-", ", ".join(cached) or "-", "yes" if quick else "")
    console.print(table)
    console.print(
        "any architecture also takes --pretrained FILE (a local weights file) or --pretrained none (random init); "
        "OpenAI weights pick the QuickGELU variant automatically",
        highlight=False,
    )
