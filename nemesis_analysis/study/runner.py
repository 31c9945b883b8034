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
from nemesis_analysis.study import groups, records
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
    stopped: list[str] = field(default_factory=list)  # jobs a stop request (SIGTERM) ended at a saved point

    @property
    def overhead_per_job(self) -> float:
        """Median scheduling overhead per job, seconds (the median leaves out the workers' start-up)."""
        if not self.overheads:
            return float("nan")
        ordered = sorted(self.overheads)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


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


class _Driver:
    """The state of one invocation: which jobs succeeded, failed or wait, and what is queued."""

    def __init__(self, plan: Plan, jobs: list[Job], executor):
        self.plan, self.jobs, self.executor = plan, {job.id: job for job in jobs}, executor
        self.report, self.recorder = RunReport(), _Recorder(plan)
        self.succeeded, self.failed = set(plan.done), set()
        self.queue, self.submitted = list(jobs), {}
        self.members: dict[str, list[Job]] = {}  # submitted unit id -> its jobs (a sibling group has several)

    def take_ready(self, advance) -> list[Job]:
        """Remove blocked and waiting jobs from the queue; return the ready ones that fit the free workers."""
        ready, report = [], self.report
        for job in list(self.queue):
            bad = [d for d in job.deps if d in self.failed]
            if bad:
                self.queue.remove(job)
                self.failed.add(job.id)
                report.blocked[job.id] = bad[0]
                self.recorder.rows([job], "blocked", error=f"dependency {bad[0]} did not finish")
                advance(1, failed=len(self.failed))
            elif any((d not in self.succeeded and d not in self.jobs) or d in report.waiting for d in job.deps):
                self.queue.remove(job)  # another shard's dependency: a later invocation runs it
                report.waiting.append(job.id)
                advance(1)
            elif (
                all(d in self.succeeded for d in job.deps)
                and len(ready) + self.executor.running < self.executor.capacity
            ):
                ready.append(job)
        return ready

    def ready_siblings(self) -> list[Job]:
        """Queued train jobs whose dependencies are done: they may join a ready sibling's group."""
        return [j for j in self.queue if j.kind == "train" and all(d in self.succeeded for d in j.deps)]

    def dispatch(self, ready: list[Job]) -> None:
        """Submit the ready jobs, sibling train jobs (ready ones still queued included) as one group each."""
        started = []
        for unit, members in groups.bundle(ready, self.ready_siblings() if ready else []):
            for job in members:
                self.queue.remove(job)
            self.executor.submit(unit)
            self.submitted[unit.id] = time.perf_counter()
            self.members[unit.id] = members
            started += members
        if started:
            self.recorder.start(started)

    def settle_unit(self, outcome) -> list[bool]:
        """Record a submitted unit's outcome (a group's: each member's); per job, as :meth:`settle`."""
        members = self.members.pop(outcome.job_id)
        self.report.overheads.append(time.perf_counter() - self.submitted.pop(outcome.job_id) - outcome.seconds)
        if outcome.job_id in self.jobs:
            return [self.settle(outcome)]
        return [self.settle(member) for member in groups.member_outcomes(outcome, members)]

    def settle(self, outcome) -> bool:
        """Record one job's outcome; False when the job goes back to the queue for another attempt."""
        job, report = self.jobs[outcome.job_id], self.report
        report.job_seconds += outcome.seconds
        common = {"seconds": outcome.seconds, "host": outcome.host, "error": outcome.error}
        if outcome.stopped:  # its state is saved; the next invocation resumes it
            report.stopped.append(job.id)
            self.recorder.rows([job], "lost", **common)
        elif outcome.ok:
            self.succeeded.add(job.id)
            report.done.append(job.id)
            self.recorder.rows([job], "done", **common)
        elif outcome.retryable and report.retries.get(job.id, 0) < self.plan.study.resources.max_retries:
            report.retries[job.id] = report.retries.get(job.id, 0) + 1
            self.recorder.rows([job], "lost", **common)
            self.queue.insert(0, job)
            return False
        else:
            self.failed.add(job.id)
            report.failed[job.id] = outcome.error
            self.recorder.rows([job], "failed", **common)
        return True


def run_jobs(plan: Plan, jobs: list[Job], executor, progress: bool = True, should_stop=None) -> RunReport:
    """Run ``jobs`` (a subset of the plan's, in dependency order) with ``executor``; returns what happened.

    Once ``should_stop()`` is True (SIGTERM, Ctrl-C) no job starts; the running ones end at their next saved
    point and are recorded as lost (``report.stopped``), so the next invocation resumes them."""
    started_at = time.perf_counter()
    driver = _Driver(plan, jobs, executor)
    executor.start(len(jobs))
    try:
        _drive(driver, executor, progress, should_stop or (lambda: False))
    except KeyboardInterrupt:  # the jobs in flight are not running any more: say so in reports/jobs
        lost = [job for unit_id in driver.submitted for job in driver.members[unit_id]]
        driver.recorder.rows(lost, "lost", error="interrupted on the driver")
        raise
    driver.report.waiting += [job.id for job in driver.queue]
    driver.report.wall_seconds = time.perf_counter() - started_at
    return driver.report


def _drive(driver: _Driver, executor, progress: bool, should_stop) -> None:
    with progress_bar(f"study {driver.plan.study.name}", total=len(driver.jobs), enabled=progress) as advance:
        while driver.queue or executor.running:
            if should_stop():
                executor.request_stop()
                driver.queue.clear()  # nothing new starts; what was queued is still to do
            ready = driver.take_ready(advance)
            driver.dispatch(ready)
            if not ready and not executor.running:
                break  # nothing runnable is left (a guard: dependency-ordered jobs never get here)
            advance(0, done=len(driver.report.done), failed=len(driver.failed), running=executor.running)
            for outcome in executor.wait():
                for settled in driver.settle_unit(outcome):
                    if settled:
                        advance(1, done=len(driver.report.done), failed=len(driver.failed), running=executor.running)


def run_study(
    plan: Plan,
    jobs: list[Job],
    executor_name: str = "local",
    address: str | None = None,
    max_parallel: int | None = None,
    progress: bool = True,
    should_stop=None,
) -> RunReport:
    """Run ``jobs`` of ``plan`` with a new executor, closed afterwards (Ray is not started for no jobs)."""
    from nemesis_analysis.study.executors import make_executor

    if not jobs:
        return RunReport()
    executor = make_executor(executor_name, plan.study, address, max_parallel, should_stop)
    try:
        return run_jobs(plan, jobs, executor, progress, should_stop)
    finally:
        executor.close()
