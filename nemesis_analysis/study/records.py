"""The ``reports/jobs`` table: one row per state change of a study job; a job's newest row is its state.

Parts are written like the other tables (a hidden temporary file renamed into place, one part per write),
with the schema from :mod:`nemesis_analysis.schema`; "newest" is the ``updated`` column, not the file name,
so rows from several hosts order by when they happened.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemesis_analysis.fsio import atomic_path
from nemesis_analysis.schema import KEYS, schema_of

TABLE = "jobs"
STATES: tuple[str, ...] = ("running", "done", "failed", "lost", "blocked")


def job_row(job, study: str, state: str, attempts: int, seconds: float = float("nan"), host: str = "", error: str = "") -> dict:
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
    if not rows:
        return None
    schema = schema_of(TABLE)
    table = pa.Table.from_pandas(pd.DataFrame(rows)[schema.names], schema=schema, preserve_index=False)
    path = Path(reports_dir) / TABLE / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(path, "the jobs table") as tmp:
        pq.write_table(table, tmp)
    return path


def read_jobs(reports_dir: Path | str) -> pd.DataFrame:
    """The newest row of every job (empty, with the schema's columns, when nothing is written yet)."""
    frame = read_job_history(reports_dir)
    return frame.drop_duplicates(list(KEYS[TABLE]), keep="last").reset_index(drop=True)


def read_job_history(reports_dir: Path | str) -> pd.DataFrame:
    """Every row ever written (attempts and retries included), oldest first."""
    schema = schema_of(TABLE)
    folder = Path(reports_dir) / TABLE
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return schema.empty_table().to_pandas()
    frame = pd.concat([pq.read_table(p, schema=schema).to_pandas() for p in parts], ignore_index=True)
    return frame.sort_values("updated", kind="stable").reset_index(drop=True)


def latest_states(reports_dir: Path | str) -> dict[str, str]:
    """job id -> its newest recorded state."""
    frame = read_jobs(reports_dir)
    return dict(zip(frame["job_id"], frame["state"]))
