"""Deprecated entry point kept for the command line until it calls :mod:`nemesis_analysis.runs` with a Session.

The corruption analysis now lives in :mod:`~nemesis_analysis.engine` (batched predictions),
:mod:`~nemesis_analysis.sweep` (one prompt's sweep and summary), :mod:`~nemesis_analysis.runs` (sweeps
across runs) and :mod:`~nemesis_analysis.reference` (the naive path). Remove this module at the merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from nemesis_analysis import runs
from nemesis_analysis.corrupt_ops import DEFAULT_FACTORS, DEFAULT_REPS, DEFAULT_STDS, GRID_OPS, GridSpec
from nemesis_analysis.session import Session
from nemesis_analysis.sweep import SweepSummary, format_summary
from nemesis_analysis.train import legacy_session

__all__ = ["format_summary", "sweep_runs"]


def sweep_runs(
    config,
    workspace: Session,
    *,
    ops: Sequence[str] = GRID_OPS,
    positions: Sequence[int] | None = None,
    factors: Sequence[float] | None = None,
    stds: Sequence[float] | None = None,
    reps: int | None = None,
    seeds: Sequence[int] | None = None,
    prompt: Path | str | None = None,
    chunk: int | None = None,
    data_root: Path | str | None = None,
    device: str | None = None,
    offline: bool = False,
    force: bool = False,
    progress: bool = True,
    on_run: Callable | None = None,
    on_prompt: Callable | None = None,
) -> list[SweepSummary]:
    """Deprecated: :func:`nemesis_analysis.runs.sweep_runs` with the old loose arguments."""
    grid = GridSpec(
        ops=tuple(ops),
        positions=None if positions is None else tuple(positions),
        factors=DEFAULT_FACTORS if factors is None else tuple(factors),
        stds=DEFAULT_STDS if stds is None else tuple(stds),
        reps=DEFAULT_REPS if reps is None else reps,
    )
    session = legacy_session(workspace, None, data_root, device, offline, progress)
    return runs.sweep_runs(
        config, session, grid, seeds=seeds, prompt=prompt, chunk=chunk, force=force, on_run=on_run, on_prompt=on_prompt
    )
