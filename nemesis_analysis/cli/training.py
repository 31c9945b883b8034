"""The commands that train or sweep prompts (train, corrupt, demo): parse, build config and Session, call, print.

Each library call goes through one small function (``run_training``, ``run_sweep``, ``run_demo_pipeline``),
which tests patch to check what the command passes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nemesis_analysis.cli.interrupt import StopRequest, graceful_stop, stop_requested
from nemesis_analysis.cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_REPORTS,
    CacheDirOpt,
    CheckpointsOpt,
    DataRootOpt,
    DeviceOpt,
    ForceOpt,
    OfflineOpt,
    QuietOpt,
    ReportsOpt,
    build_session,
    console,
    err_console,
    handle_errors,
)
from nemesis_analysis.cli.runoptions import RunCommand, build_run_config, given_options, run_parameter_names
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.session import Session

# --------------------------------------------------------------------------------- calls into the library


def run_training(config, session: Session, *, force: bool):
    """Train (or reuse) one run."""
    from nemesis_analysis.training.train import train_prompt

    return train_prompt(config, session, force=force, should_stop=stop_requested)


def run_siblings(configs: list, session: Session, *, force: bool) -> list:
    """Train (or reuse) sibling runs fused (``--variants``): one outcome per config, a result or an error."""
    from nemesis_analysis.training.train import Hooks, train_siblings

    return train_siblings(configs, session, force=force, hooks=Hooks(should_stop=stop_requested))


def run_sweep(config, session: Session, grid, *, seeds, prompt, run_id, chunk, force: bool, on_run, on_prompt,
              max_test=None):  # fmt: skip
    """Sweep the corruption grid (a ``GridSpec``) on each seed's run, on ``prompt`` or on the run ``run_id``."""
    from nemesis_analysis.corruption.sweep_runs import sweep_runs

    return sweep_runs(
        config, session, grid, seeds=seeds, prompt=prompt, run_id=run_id, chunk=chunk, force=force,
        on_run=on_run, on_prompt=on_prompt, max_test=max_test, should_stop=stop_requested,
    )  # fmt: skip


def run_demo_pipeline(session: Session):
    """The demo on the session's folders and device."""
    from nemesis_analysis.demo import run_demo

    return run_demo(
        session.checkpoints_dir, session.reports_dir, device=session.device, progress=session.progress, console=console
    )


def config_of_run(session: Session, run_id: str, given: set[str], prompt: Path | None):
    """The RunConfig a finished or started run was trained with (``run_id`` or a unique prefix of it)."""
    from nemesis_analysis.corruption.sweep_runs import load_run_config

    clashing = sorted(given & (run_parameter_names() - {"print_config"}))
    if clashing or prompt is not None:
        what = "--prompt" if prompt is not None else ", ".join(f"--{n.rstrip('_').replace('_', '-')}" for n in clashing)
        raise ConfigError(f"--run {run_id} sweeps the run with its own config; drop {what}")
    return load_run_config(session, run_id)


def print_run_result(result) -> None:
    if result.stopped:
        return  # said by stop_after_training
    state = "reused finished run" if result.reused else f"trained in {result.seconds:.1f} s"
    config = result.config
    label = config.prompt_method if config.regularizer == "coop" else f"{config.prompt_method} + {config.regularizer}"
    console.print(f"[bold]{label}[/] run {result.run_id} ({state}) -> {result.run_dir}")
    console.print(
        f"  zero-shot accuracy {result.zero_shot_acc:.2f}%   final test accuracy {result.final_test_acc:.2f}%   "
        f"mean context norm {result.mean_norm:.4f}",
        highlight=False,
    )
    print_evaluations(result)


def print_evaluations(result) -> None:
    """The protocol's evaluations of a run (base and new classes, or the transfer targets), one per line."""
    for evaluation in result.extra.get("evaluations", []):
        console.print(
            f"  {evaluation.eval_dataset} {evaluation.eval_classes} classes: {evaluation.acc:.2f}%", highlight=False
        )


def stop_after_training(result, session: Session, stop: StopRequest) -> None:
    """A training run ended by a signal: one line on what was saved and how to resume, and exit 130/143."""
    say_stopped(result, session)
    raise typer.Exit(code=stop.exit_code)


def say_stopped(result, session: Session) -> None:
    """One line on what a stopped run saved and how to resume it."""
    state = session.run_dir(result.run_id).load_state()
    done = state.epoch + 1 if state is not None else 0
    err_console.print(
        f"interrupted: run {result.run_id} saved after {done} of {result.config.num_epochs} epochs in "
        f"{result.run_dir}; run the same command again to resume from there",
        highlight=False, soft_wrap=True,
    )  # fmt: skip


def stop_after_sweep(summary, session: Session, stop: StopRequest) -> None:
    """A sweep ended by a signal: one line on the rows saved and how to go on, and exit 130/143."""
    err_console.print(
        f"interrupted: {summary.rows_written} new corruption rows of run {summary.run_id} saved in "
        f"{session.reports_dir / 'corruptions'}; run the same command again to compute the rest",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    raise typer.Exit(code=stop.exit_code)


def print_config_and_stop(config) -> None:
    from nemesis_analysis.config import to_toml

    typer.echo(to_toml(config), nl=False)
    raise typer.Exit(code=0)


# ------------------------------------------------------------------------------------------------ train


def say(text: str) -> None:
    """A note for people (what a recipe changed): on stderr, so stdout stays what the command prints."""
    err_console.print(text, highlight=False, soft_wrap=True, markup=False)


VariantsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--variants",
        help="Train several Nemesis variants at once, fused (one image pass per step for "
        "all): comma-separated coop, pun, pan or a beta in [0, 1], e.g. coop,pun,pan,0.5.",
    ),
]


def parse_variants(text: str) -> list[dict]:
    """``--variants coop,pun,pan,0.5`` -> the Nemesis flags of each run ({"pun", "pan", "beta"})."""
    variants = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item in ("coop", "pun", "pan"):
            variants.append({"pun": item == "pun", "pan": item == "pan", "beta": None})
            continue
        try:
            beta = float(item.removeprefix("beta"))
        except ValueError:
            raise ConfigError(
                f"--variants: {item!r} is not coop, pun, pan or a beta in [0, 1]; e.g. --variants coop,pun,pan,0.5"
            ) from None
        variants.append({"pun": False, "pan": False, "beta": beta})
    return variants


def variant_configs(ctx: typer.Context, variants: str) -> list:
    """One RunConfig per variant of ``--variants``, each built from the command's other options exactly as
    ``nemesis train`` with that variant's --pun / --pan / --beta would build it (recipes included)."""
    given = given_options(ctx)
    if given & {"pun", "pan", "beta"}:
        raise ConfigError("--variants sets each run's Nemesis variant; drop --pun, --pan and --beta")
    run = {name: ctx.params[name] for name in run_parameter_names() if name in ctx.params}
    for name in ("pun", "pan", "beta", "print_config"):
        run.pop(name, None)
    config_file, sets = run.pop("config_file", None), run.pop("set_", None)
    return [
        build_run_config(
            given=given | {"beta"}, config_file=config_file, sets=sets, purpose="train", say=say, **run, **variant
        )  # fmt: skip
        for variant in parse_variants(variants)
    ]


def train_variants(configs: list, session: Session, force: bool) -> None:
    """``nemesis train --variants``: the runs trained fused and printed; an interrupted group says how to
    resume each run; a run that failed (diverged) is raised after the others are printed."""
    with graceful_stop() as stop:
        outcomes = run_siblings(configs, session, force=force)
    results = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    for result in results:
        print_run_result(result)
    stopped = [result for result in results if result.stopped]
    for result in stopped[:-1]:
        say_stopped(result, session)
    if stopped:
        stop_after_training(stopped[-1], session, stop)
    errors = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    if errors:
        raise errors[0]


def train_command(
    ctx: typer.Context,
    config,
    print_config: bool,
    variants: VariantsOpt = None,
    force: ForceOpt = False,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    reports: ReportsOpt = DEFAULT_REPORTS,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a prompt method (--method: CoOp, CoCoOp, PLOT, KgCoOp, ...), with Nemesis via --pun / --pan /
    --beta (or several variants at once, fused, with --variants), and record it in Parquet."""
    configs = variant_configs(ctx, variants) if variants is not None else None
    if print_config:
        print_config_and_stop(config)
    session = build_session(
        checkpoints=checkpoints,
        reports=reports,
        data_root=data_root,
        device=device,
        offline=offline,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    if configs is not None:
        return train_variants(configs, session, force)
    with graceful_stop() as stop:
        result = run_training(config, session, force=force)
    if result.stopped:
        stop_after_training(result, session, stop)
    print_run_result(result)


train = handle_errors(RunCommand(train_command, purpose="train", say=say))


# ---------------------------------------------------------------------------------------------- corrupt

PromptPathOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--prompt",
        help="Analyse this saved prompt (a folder with prompt.safetensors + prompt.json, "
        "or a CoOp checkpoint) instead of training.",
    ),
]
RunOpt = Annotated[
    Optional[str],
    typer.Option("--run", help="Sweep this existing run (id or unique prefix) with the config it was trained with."),
]
SeedsOpt = Annotated[
    Optional[str], typer.Option("--seeds", help="Sweep several training seeds, e.g. 1,2,3 (overrides --seed).")
]
OpsOpt = Annotated[str, typer.Option("--ops", help="Corruption ops, comma-separated: rescale, replace.")]
PositionsOpt = Annotated[
    Optional[str], typer.Option("--positions", help="Context positions, e.g. 0,3,5-7 (default: all).")
]
FactorsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--factors", help="Rescale factors, comma-separated.", show_default="0,0.001,0.01,0.1,0.5,0.9,1.1,2,5,10"
    ),
]
StdsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--stds",
        help="Replace stds of N(0, std^2), comma-separated.",
        show_default="0,0.0001,0.001,0.01,0.02,0.05,0.1,0.5,1",
    ),
]
RepsOpt = Annotated[int, typer.Option("--reps", help="Random draws per replace cell.")]
ChunkOpt = Annotated[
    Optional[int], typer.Option("--chunk", help="Variants per text-tower pass (default: from a memory budget).")
]
MaxTestOpt = Annotated[
    Optional[int],
    typer.Option(
        "--max-test",
        help="Evaluate a seeded class-stratified subsample of at most N test images "
        "(for CoCoOp on large test sets; n_test records it).",
    ),
]


def corrupt_command(
    ctx: typer.Context,
    config,
    print_config: bool,
    force: ForceOpt = False,
    prompt: PromptPathOpt = None,
    run: RunOpt = None,
    seeds: SeedsOpt = None,
    ops: OpsOpt = "rescale,replace",
    positions: PositionsOpt = None,
    factors: FactorsOpt = None,
    stds: StdsOpt = None,
    reps: RepsOpt = 3,
    chunk: ChunkOpt = None,
    max_test: MaxTestOpt = None,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    reports: ReportsOpt = DEFAULT_REPORTS,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Corrupt every context position (rescale, replace) and record test accuracy: the Low-Norm Effect.

    Trains the run first when it has not finished (same flags as `train`), or analyses --prompt or --run.
    Rows already in reports/corruptions are skipped, so widening the grid computes only what is new.
    """
    from nemesis_analysis.corruption.ops import GridSpec, parse_int_list  # imports torch: only once the config is valid

    grid = GridSpec.parse(ops, positions, factors, stds, reps)
    session = build_session(
        checkpoints=checkpoints,
        reports=reports,
        data_root=data_root,
        device=device,
        offline=offline,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    if run is not None:
        config = config_of_run(session, run, given_options(ctx), prompt)
    if print_config:
        print_config_and_stop(config)
    stopped_runs = []
    with graceful_stop() as stop:
        summaries = run_sweep(
            config, session, grid,
            seeds=parse_int_list(seeds, "--seeds") if seeds is not None else None, prompt=prompt, run_id=None,
            chunk=chunk, force=force, on_run=lambda r: stopped_runs.append(r) if r.stopped else print_run_result(r),
            max_test=max_test,
            on_prompt=lambda p: console.print(f"analysing {p.path} (run_id {p.run_id})", highlight=False),
        )  # fmt: skip
    if stopped_runs:
        stop_after_training(stopped_runs[0], session, stop)
    if summaries and summaries[-1].stopped:
        stop_after_sweep(summaries[-1], session, stop)
    print_sweep_summaries(summaries, session)


def print_sweep_summaries(summaries, session: Session) -> None:
    from nemesis_analysis.corruption.sweep import format_summary

    for summary_ in summaries:
        for line in format_summary(summary_):
            console.print(line, highlight=False, soft_wrap=True)
    console.print(f"rows in {session.reports_dir / 'corruptions'}/", highlight=False)


corrupt = handle_errors(RunCommand(corrupt_command, purpose="corrupt", say=say))


# ------------------------------------------------------------------------------------------------- demo


@handle_errors
def demo(
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    reports: ReportsOpt = DEFAULT_REPORTS,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """The whole pipeline on the embedded default (digits + nemesis-tiny), offline, in minutes."""
    run_demo_pipeline(build_session(checkpoints=checkpoints, reports=reports, device=device, quiet=quiet))
