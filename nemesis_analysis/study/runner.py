"""The driver loop: hand ready jobs to an executor, record every state change in reports/jobs, retry lost ones.

A job is ready when each job it depends on is done. A failed job is recorded with its error and does not
stop the others; the jobs that depend on it are recorded as blocked. A job whose worker was lost (died,
out of memory) is retried up to ``resources.max_retries`` times. A job whose dependency is neither done
nor among the jobs of this invocation (another shard's) waits for a later invocation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nemesis_analysis.progress import progress_bar
from nemesis_analysis.study import records
from nemesis_analysis.study.plan import Job, Plan


@dataclass
class RunReport:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job id -> error
    blocked: dict[str, str] = field(default_factory=dict)  # job id -> the failed dependency
    waiting: list[str] = field(default_factory=list)  # dependencies belong to another shard
    retries: dict[str, int] = field(default_factory=dict)  # job id -> lost attempts
    wall_seconds: float = 0.0
    job_seconds: float = 0.0  # summed time jobs ran on workers
    overheads: list[float] = field(default_factory=list)  # per job: driver round trip minus time on the worker

    @property
    def overhead_per_job(self) -> float:
        return sum(self.overheads) / len(self.overheads) if self.overheads else float("nan")


class _Recorder:
    """Appends jobs rows for one study; a job's attempts continue from what reports/jobs already holds."""

    def __init__(self, plan: Plan):
        self.reports, self.study = plan.study.outputs.reports, plan.study.name
        self.attempts = dict(zip(plan.records["job_id"], plan.records["attempts"]))

    def rows(self, jobs: list[Job], state: str, **fields) -> None:
        records.append_jobs(
            self.reports, [records.job_row(j, self.study, state, self.attempts.get(j.id, 0), **fields) for j in jobs]
        )

    def start(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.attempts[job.id] = int(self.attempts.get(job.id, 0)) + 1
        self.rows(jobs, "running")


def run_jobs(plan: Plan, jobs: list[Job], executor, progress: bool = True) -> RunReport:
    """Run ``jobs`` (a subset of the plan's, in dependency order) with ``executor``; returns what happened."""
    started_at = time.perf_counter()
    report, recorder = RunReport(), _Recorder(plan)
    selected = {job.id for job in jobs}
    succeeded, failed = set(plan.done), set()
    queue, submitted = list(jobs), {}
    max_retries = plan.study.resources.max_retries
    executor.start(len(jobs))
    with progress_bar(f"study {plan.study.name}", total=len(jobs), enabled=progress) as advance:
        while queue or executor.running:
            ready = []
            for job in list(queue):
                bad = [d for d in job.deps if d in failed]
                if bad:
                    queue.remove(job)
                    failed.add(job.id)
                    report.blocked[job.id] = bad[0]
                    recorder.rows([job], "blocked", error=f"dependency {bad[0]} did not finish")
                    advance(1, failed=len(failed))
                elif any((d not in succeeded and d not in selected) or d in report.waiting for d in job.deps):
                    queue.remove(job)
                    report.waiting.append(job.id)
                    advance(1)
                elif all(d in succeeded for d in job.deps) and len(ready) + executor.running < executor.capacity:
                    ready.append(job)
            for job in ready:
                queue.remove(job)
                executor.submit(job)
                submitted[job.id] = time.perf_counter()
            if ready:
                recorder.start(ready)
            if not ready and not executor.running:
                break  # nothing runnable is left (cannot happen with dependency-ordered jobs; kept as a guard)
            for outcome in executor.wait():
                job = next(j for j in jobs if j.id == outcome.job_id)
                report.overheads.append(time.perf_counter() - submitted.pop(job.id) - outcome.seconds)
                report.job_seconds += outcome.seconds
                common = {"seconds": outcome.seconds, "host": outcome.host, "error": outcome.error}
                if outcome.ok:
                    succeeded.add(job.id)
                    report.done.append(job.id)
                    recorder.rows([job], "done", **common)
                elif outcome.retryable and report.retries.get(job.id, 0) < max_retries:
                    report.retries[job.id] = report.retries.get(job.id, 0) + 1
                    recorder.rows([job], "lost", **common)
                    queue.insert(0, job)
                    continue
                else:
                    failed.add(job.id)
                    report.failed[job.id] = outcome.error
                    recorder.rows([job], "failed", **common)
                advance(1, done=len(report.done), failed=len(failed), running=executor.running)
    report.waiting += [job.id for job in queue]
    report.wall_seconds = time.perf_counter() - started_at
    return report


def run_study(
    plan: Plan,
    jobs: list[Job],
    executor_name: str = "local",
    address: str | None = None,
    max_parallel: int | None = None,
    progress: bool = True,
) -> RunReport:
    """Run ``jobs`` of ``plan`` with a new executor, closed afterwards (Ray is not started for no jobs)."""
    from nemesis_analysis.study.executors import make_executor

    if not jobs:
        return RunReport()
    executor = make_executor(executor_name, plan.study, address, max_parallel)
    try:
        return run_jobs(plan, jobs, executor, progress)
    finally:
        executor.close()
