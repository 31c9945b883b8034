"""Where a study stands: done / running / failed / blocked / to do, per job kind and per dataset, and why jobs failed."""

from __future__ import annotations

import pandas as pd

from nemesis_analysis.study.plan import KINDS, Plan

STATE_COLUMNS: tuple[str, ...] = ("done", "running", "failed", "blocked", "todo")


def job_states(plan: Plan) -> pd.DataFrame:
    """One row per job: id, kind, dataset, run_id, label, state, attempts, error."""
    latest = plan.records.set_index("job_id") if not plan.records.empty else None
    rows = []
    for job in plan.jobs:
        record = latest.loc[job.id] if latest is not None and job.id in latest.index else None
        rows.append(
            {
                "job_id": job.id,
                "kind": job.kind,
                "dataset": job.dataset,
                "run_id": job.run_id,
                "label": job.label,
                "state": plan.state(job),
                "attempts": int(record["attempts"]) if record is not None else 0,
                "error": record["error"] if record is not None and plan.state(job) != "done" else "",
            }
        )
    return pd.DataFrame(rows, columns=["job_id", "kind", "dataset", "run_id", "label", "state", "attempts", "error"])


def count_states(states: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Jobs per state for each group of ``by`` (e.g. ["kind"] or ["kind", "dataset"]), plus a total."""
    if states.empty:
        return pd.DataFrame(columns=[*by, *STATE_COLUMNS, "total"])
    table = pd.crosstab([states[c] for c in by], states["state"])
    table = table.reindex(columns=list(STATE_COLUMNS), fill_value=0)
    table["total"] = table.sum(axis=1)
    table = table.reset_index()
    table.columns.name = None
    if "kind" in by:  # dependency order, not alphabetical
        table = table.sort_values(by, key=lambda c: c.map(KINDS.index) if c.name == "kind" else c, kind="stable")
    return table.reset_index(drop=True)


def failures(states: pd.DataFrame) -> pd.DataFrame:
    """The failed and blocked jobs with their recorded errors."""
    return states[states["state"].isin(["failed", "blocked"])][["job_id", "label", "state", "attempts", "error"]]
