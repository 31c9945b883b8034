"""The ``reports/jobs`` table: one row per state change of a study job; a job's newest row is its state.

Parts are written through :mod:`nemesis_analysis.storage.store` like every table; "newest" is the ``updated``
column, not the part's name, so rows written on several hosts order by when they happened.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pandas as pd

from nemesis_analysis.storage import store
from nemesis_analysis.storage.schema import KEYS

TABLE = "jobs"
STATES: tuple[str, ...] = ("running", "done", "failed", "lost", "blocked")


def job_row(
    job, study: str, state: str, attempts: int, seconds: float = float("nan"), host: str = "", error: str = ""
) -> dict:
    """A row for ``job`` (a plan.Job) in ``state``; errors are kept to one line."""
    if state not in STATES:
        raise ValueError(f"unknown job state {state!r}; states: {', '.join(STATES)}")
    return {
        "job_id": job.id,
        "kind": job.kind,
        "run_id": job.run_id,
        "dataset": job.dataset,
        "study": study,
        "state": state,
        "attempts": int(attempts),
        "seconds": float(seconds),
        "host": host or socket.gethostname(),
        "error": " ".join(str(error).split())[:2000],
        "updated": time.time(),
    }


def append_jobs(reports_dir: Path | str, rows: list[dict]) -> Path | None:
    """Write ``rows`` as one new part of reports/jobs; returns its path (None for no rows)."""
    return store.append_rows(reports_dir, TABLE, rows)


def read_job_history(reports_dir: Path | str) -> pd.DataFrame:
    """Every row ever written (attempts and retries included), oldest first."""
    frame = store.read_table(reports_dir, TABLE, dedupe=False)
    return frame.sort_values("updated", kind="stable").reset_index(drop=True)


def read_jobs(reports_dir: Path | str) -> pd.DataFrame:
    """The newest row of every job (empty, with the schema's columns, when nothing is written yet)."""
    frame = read_job_history(reports_dir)
    return frame.drop_duplicates(list(KEYS[TABLE]), keep="last").reset_index(drop=True)


def latest_states(reports_dir: Path | str) -> dict[str, str]:
    """job id -> its newest recorded state."""
    frame = read_jobs(reports_dir)
    return dict(zip(frame["job_id"], frame["state"]))
