"""``nemesis fill-counts``: the paired counts and exact p-values of corruption rows written before they existed."""

from __future__ import annotations

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


@handle_errors
def fill_counts_command(
    run: Annotated[str, typer.Option("--run", help="Run id (or a unique prefix) whose corruption rows to fill.")],
    chunk: Annotated[
        Optional[int], typer.Option("--chunk", help="Variants per text pass (default: from memory).")
    ] = None,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    reports: ReportsOpt = DEFAULT_REPORTS,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Recompute the predictions of a run's corruption rows that lack n_gained, n_lost and p_value, and fill
    those columns in place (no row is added; rows that no longer reproduce their accuracy are refused)."""
    session = build_session(checkpoints=checkpoints, reports=reports, data_root=data_root, device=device,
                            offline=offline, cache_dir=cache_dir, quiet=quiet)  # fmt: skip
    from nemesis_analysis.corruption.sweep_runs import fill_run_counts  # imports torch

    filled = fill_run_counts(session, run, chunk=chunk)
    for classes, count in filled.items():
        suffix = "" if classes == "all" else f" ({classes} classes)"
        console.print(f"run {run}{suffix}: filled the counts of {count} rows", highlight=False)
