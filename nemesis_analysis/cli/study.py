"""``nemesis study init | plan | run | status | report``: thin commands over :mod:`nemesis_analysis.study`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from nemesis_analysis.cli.options import console, handle_errors

study_app = typer.Typer(
    help="Whole studies from a TOML file: plan, run (locally or on Ray), status.", no_args_is_help=True
)

StudyArg = Annotated[Path, typer.Argument(help="The study file (TOML); `nemesis study init` writes a template.")]
CheckpointsOpt = Annotated[
    Optional[Path], typer.Option("--checkpoints", help="Override the study file's outputs.checkpoints.")
]
ReportsOpt = Annotated[Optional[Path], typer.Option("--reports", help="Override the study file's outputs.reports.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
SmokeOpt = Annotated[
    bool,
    typer.Option(
        "--smoke",
        help="The same study on the embedded default (digits, tiny CLIP, 2 epochs, one seed, CPU) under ./smoke/NAME/.",
    ),
]


def _load(path: Path, checkpoints: Path | None, reports: Path | None, smoke: bool = False):
    from nemesis_analysis.study.smoke import smoke_study
    from nemesis_analysis.study.spec import load_study

    study = load_study(path)
    return smoke_study(study, checkpoints, reports) if smoke else study.with_outputs(checkpoints, reports)


def _print_frame(frame, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    console.print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return "?" if value != value else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return escape(str(value))


@study_app.command()
@handle_errors
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the template.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented study-file template (it runs as is on the embedded default)."""
    from nemesis_analysis.study.template import write_template

    console.print(f"wrote {write_template(path, force)}; check it with `nemesis study plan {path}`", highlight=False)


@study_app.command()
@handle_errors
def plan(
    study_file: StudyArg,
    as_json: JsonOpt = False,
    checkpoints: CheckpointsOpt = None,
    reports: ReportsOpt = None,
    smoke: SmokeOpt = False,
) -> None:
    """Expand the grid into jobs; print jobs per kind, done, to do, and the estimated cost."""
    from nemesis_analysis.study import costs, records
    from nemesis_analysis.study.datacheck import missing_data
    from nemesis_analysis.study.plan import make_plan
    from nemesis_analysis.study.status import count_states, job_states

    study = _load(study_file, checkpoints, reports, smoke)
    current = make_plan(study)
    states = job_states(current)
    counts = count_states(states, ["kind"])
    cost = costs.estimate(current.todo, records.read_jobs(study.outputs.reports))
    missing = missing_data(study)
    if as_json:
        jobs = [{**job.as_dict(), "state": current.state(job)} for job in current.jobs]
        for job in jobs:  # a train job carries its resolved run config; the other payloads repeat it
            payload = job.pop("payload")
            if job["kind"] == "train":
                job["config"] = payload["config"]
        data = {"study": study.name, "counts": counts.to_dict("records"), "cost_todo": cost.to_dict("records"),
                "missing_data": missing, "jobs": jobs}  # fmt: skip
        console.print_json(json.dumps(data, default=float))
        return
    console.print(f"study [bold]{study.name}[/]: {len(current.jobs)} jobs, {len(current.todo)} to do", highlight=False)
    _print_frame(counts, "jobs per kind")
    _print_frame(cost, "estimated cost of the jobs to do")
    for line in missing:
        console.print(f"missing data: {line}", highlight=False, soft_wrap=True, markup=False)


@study_app.command()
@handle_errors
def run(
    study_file: StudyArg,
    executor: Annotated[str, typer.Option("--executor", help="local (this process) or ray.")] = "local",
    address: Annotated[
        Optional[str], typer.Option("--address", help="Ray cluster: auto or HOST:PORT (default: start a local Ray).")
    ] = None,
    max_parallel: Annotated[Optional[int], typer.Option("--max-parallel", help="At most N jobs at once (Ray).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/N: run only shard I of N (job arrays).")] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Render the figures at the end.")] = True,
    checkpoints: CheckpointsOpt = None,
    reports: ReportsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    smoke: SmokeOpt = False,
) -> None:
    """Run every job that is not done; failed jobs are recorded and do not stop the others; ends with the HTML report."""
    from nemesis_analysis.cli.interrupt import graceful_stop
    from nemesis_analysis.errors import ConfigError
    from nemesis_analysis.storage import store
    from nemesis_analysis.study.outputs import write_study_outputs
    from nemesis_analysis.study.plan import make_plan, parse_shard, select_jobs
    from nemesis_analysis.study.report import write_study_report
    from nemesis_analysis.study.runner import run_study

    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: choose local or ray")
    if address is not None and executor != "ray":
        raise ConfigError("--address joins a Ray cluster: add --executor ray")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {max_parallel}")
    study = _load(study_file, checkpoints, reports, smoke)
    store.check_parts(study.outputs.reports)  # a damaged table part is named before any job runs
    current = make_plan(study)
    jobs = select_jobs(current, parse_shard(shard) if shard is not None else None)
    console.print(f"study [bold]{study.name}[/]: {len(jobs)} jobs to run ({executor})", highlight=False)
    with graceful_stop() as request:
        report = run_study(current, jobs, executor, address, max_parallel, progress=not quiet, should_stop=request)
    if request.signum is not None:
        console.print(f"stopped by signal {request.signum}: {len(report.done)} done; {len(report.stopped)} job(s) saved "
                      "and recorded as lost; `nemesis study run` again resumes them", highlight=False, markup=False)  # fmt: skip
        raise typer.Exit(code=request.exit_code)
    console.print(
        f"{len(report.done)} done, {len(report.failed)} failed, {len(report.blocked)} blocked, "
        f"{len(report.waiting)} waiting for other shards, {sum(report.retries.values())} retries; "
        f"{report.wall_seconds:.1f} s wall, {report.job_seconds:.1f} s in jobs, "
        f"scheduling overhead {report.overhead_per_job * 1000:.0f} ms per job (median)",
        highlight=False,
    )
    for job_id, error in report.failed.items():
        console.print(f"  failed {job_id}: {error}", highlight=False, soft_wrap=True, markup=False)
    if shard is None:
        for path in write_study_outputs(study, figures=figures):
            console.print(f"  {path}", highlight=False, soft_wrap=True, markup=False)
        console.print(f"report: {write_study_report(study, smoke)}", highlight=False, soft_wrap=True, markup=False)
    if report.failed or report.blocked:
        raise typer.Exit(code=1)


@study_app.command()
@handle_errors
def status(
    study_file: StudyArg,
    as_json: JsonOpt = False,
    checkpoints: CheckpointsOpt = None,
    reports: ReportsOpt = None,
    smoke: SmokeOpt = False,
) -> None:
    """Done / running / failed / blocked / to do per job kind and per dataset, and the errors of failed jobs."""
    from nemesis_analysis.study.plan import make_plan
    from nemesis_analysis.study.status import count_states, failures, job_states

    study = _load(study_file, checkpoints, reports, smoke)
    states = job_states(make_plan(study))
    by_kind, by_dataset, failed = (
        count_states(states, ["kind"]),
        count_states(states, ["kind", "dataset"]),
        failures(states),
    )
    if as_json:
        data = {"study": study.name, "by_kind": by_kind.to_dict("records"), "by_dataset": by_dataset.to_dict("records"),
                "failures": failed.to_dict("records")}  # fmt: skip
        console.print_json(json.dumps(data, default=int))
        return
    _print_frame(by_kind, f"study {study.name}: jobs per kind")
    _print_frame(by_dataset, "jobs per kind and dataset")
    if not failed.empty:
        _print_frame(failed, "failed and blocked jobs")


@study_app.command()
@handle_errors
def report(
    study_file: StudyArg, checkpoints: CheckpointsOpt = None, reports: ReportsOpt = None, smoke: SmokeOpt = False
) -> None:
    """Write REPORTS/studies/NAME/report.html: what was run, the paper's tables beside ours, figures, manifest."""
    from nemesis_analysis.study.report import write_study_report

    study = _load(study_file, checkpoints, reports, smoke)
    console.print(f"report: {write_study_report(study, smoke)}", highlight=False, soft_wrap=True, markup=False)
