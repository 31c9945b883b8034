"""The ``nemesis`` command: thin commands over the library. Parse, build a config, call, summarise.

Library code raises :class:`~nemesis_analysis.errors.NemesisError`; only here does it become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from nemesis_analysis.errors import NemesisError

app = typer.Typer(
    name="nemesis",
    help="Train, corrupt and normalise the soft prompts of vision-language models (Nemesis, ICLR 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plot_app = typer.Typer(help="Render the paper's figures from the Parquet tables.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")
from nemesis_analysis.cli_study import study_app  # noqa: E402 - the study commands live in their own module
app.add_typer(study_app, name="study")

# Off a terminal (pipes, CI logs, notebooks) rich would wrap tables at 80 columns; give them room.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def handle_errors(command):
    """Turn domain errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NemesisError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished work is saved; run the same command again to resume")
            raise typer.Exit(code=130) from None

    return wrapper


# --------------------------------------------------------------------------------------- shared options

CheckpointsOpt = Annotated[Path, typer.Option("--checkpoints", help="Folder for trained prompts and caches.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="Folder for Parquet tables and figures.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="Folder holding the CoOp datasets (default: $NEMESIS_DATA).")
]
CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="open_clip weights cache (default: the Hugging Face cache and ~/.cache/clip)."),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; say which file is missing.")]
DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help="digits (embedded), a CoOp dataset, or folder:PATH / manifest:PATH.")
]
ShotsOpt = Annotated[int, typer.Option("--shots", "-k", help="Training images per class.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Few-shot sampling and initialisation seed.")]
BackboneOpt = Annotated[str, typer.Option("--backbone", help="open_clip architecture (RN50, ViT-B-16, nemesis-tiny).")]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option(
        "--pretrained",
        help="open_clip tag (openai), a weights file, 'embedded' (tiny CLIP) or 'none'. "
        "Default: embedded for nemesis-tiny, openai otherwise.",
    ),
]
NCtxOpt = Annotated[int, typer.Option("--n-ctx", help="Number of context vectors M.")]
CscOpt = Annotated[bool, typer.Option("--csc", help="Class-specific context (one set of vectors per class).")]
PositionOpt = Annotated[str, typer.Option("--class-token-position", help="end, middle or front.")]
CtxInitOpt = Annotated[Optional[str], typer.Option("--ctx-init", help="Initialise the context from these words.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Override CoOp's epochs for the shot count.")]
PrecisionOpt = Annotated[
    Optional[str], typer.Option("--precision", help="fp32, amp (bf16 autocast, CUDA default) or fp16 (reference).")
]
PunOpt = Annotated[bool, typer.Option("--pun", help="Nemesis PUN: beta = 1.")]
PanOpt = Annotated[bool, typer.Option("--pan", help="Nemesis PAN: beta = 0.")]
BetaOpt = Annotated[Optional[float], typer.Option("--beta", help="Mix: beta * PUN + (1 - beta) * PAN.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Weight A of the norm loss (PUN factor, PAN alpha).")]
NormTypeOpt = Annotated[str, typer.Option("--norm-type", help="Norm of a position: l2, l1 or inf.")]
PanPositionsOpt = Annotated[int, typer.Option("--pan-positions", help="PAN: positions rescaled per step (NP).")]
PanFactorOpt = Annotated[float, typer.Option("--pan-factor", help="PAN: rescale factor of a chosen position (CW).")]
OmegaOpt = Annotated[str, typer.Option("--omega", help="sigmoid (1 - sigmoid(0.2 (t - T/2))) or constant.")]
RecipeOpt = Annotated[
    Optional[str],
    typer.Option("--recipe", help="coop (CoOp protocol: RN50, M=16, end) or paper (reference per-dataset rules)."),
]
LrOpt = Annotated[float, typer.Option("--lr", help="SGD learning rate.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Training batch size.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Retrain even if this run already finished.")]


def build_run_config(
    dataset: str,
    shots: int,
    seed: int,
    backbone: str,
    pretrained: str | None,
    n_ctx: int,
    csc: bool,
    class_token_position: str,
    ctx_init: str | None,
    epochs: int | None,
    precision: str | None,
    pun: bool,
    pan: bool,
    beta: float | None,
    alpha: float,
    norm_type: str,
    pan_positions: int,
    pan_factor: float,
    omega: str,
    recipe: str | None,
    lr: float,
    batch_size: int,
):
    """Flags -> RunConfig (with its recipe applied); the same for every command that trains."""
    from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig, apply_recipe
    from nemesis_analysis.errors import ConfigError

    if sum([pun, pan, beta is not None]) > 1:
        raise ConfigError("give only one of --pun, --pan and --beta B")
    chosen_beta = 1.0 if pun else 0.0 if pan else beta
    if pretrained is None:
        pretrained = "embedded" if backbone == "nemesis-tiny" else "openai"
    config = RunConfig(
        dataset=dataset,
        shots=shots,
        seed=seed,
        backbone=backbone,
        pretrained=pretrained,
        epochs=epochs,
        precision=precision,
        prompt=PromptConfig(n_ctx=n_ctx, csc=csc, class_token_position=class_token_position, ctx_init=ctx_init),
        nemesis=NemesisConfig(
            beta=chosen_beta,
            weight=alpha,
            norm_type=norm_type,
            pan_positions=pan_positions,
            pan_factor=pan_factor,
            omega=omega,
        ),
        optim=OptimConfig(lr=lr, batch_size=batch_size),
    )
    config, changed = apply_recipe(config, recipe)
    if changed:
        settings = ", ".join(f"{k}={v}" for k, v in changed.items())
        console.print(f"recipe [bold]{recipe}[/]: {settings}", highlight=False)
    return config


# Every command that trains takes these flags, in this order; `training_options` adds them to its signature.
TRAINING_OPTIONS: dict[str, tuple[object, object]] = {
    "dataset": (DatasetOpt, "digits"),
    "shots": (ShotsOpt, 16),
    "seed": (SeedOpt, 1),
    "backbone": (BackboneOpt, "nemesis-tiny"),
    "pretrained": (PretrainedOpt, None),
    "n_ctx": (NCtxOpt, 16),
    "csc": (CscOpt, False),
    "class_token_position": (PositionOpt, "end"),
    "ctx_init": (CtxInitOpt, None),
    "epochs": (EpochsOpt, None),
    "precision": (PrecisionOpt, None),
    "pun": (PunOpt, False),
    "pan": (PanOpt, False),
    "beta": (BetaOpt, None),
    "alpha": (AlphaOpt, 1.0),
    "norm_type": (NormTypeOpt, "l2"),
    "pan_positions": (PanPositionsOpt, 1),
    "pan_factor": (PanFactorOpt, 0.1),
    "omega": (OmegaOpt, "sigmoid"),
    "recipe": (RecipeOpt, None),
    "lr": (LrOpt, 0.002),
    "batch_size": (BatchOpt, 32),
}


def training_options(command):
    """Give ``command`` the shared training flags; it receives their values as one dict, ``training``.

    One table (:data:`TRAINING_OPTIONS`) instead of the same twenty-two parameters in every command.
    """
    own = inspect.signature(command, eval_str=True).parameters
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in TRAINING_OPTIONS.items()
    ]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in own.items() if name != "training"]

    @functools.wraps(command)
    def wrapper(**kwargs):
        training = {name: kwargs.pop(name) for name in TRAINING_OPTIONS}
        return command(training=training, **kwargs)

    parameters = shared + rest
    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must see the new signature, not the wrapped function's
    return wrapper


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    # open_clip logs through the root logger; keep its chatter out of our output.
    logging.getLogger().setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------------ train


@app.command()
@training_options
@handle_errors
def train(
    training: dict,
    force: ForceOpt = False,
    data_root: DataRootOpt = None,
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    checkpoints: CheckpointsOpt = Path("checkpoints"),
    reports: ReportsOpt = Path("reports"),
    quiet: QuietOpt = False,
) -> None:
    """Train CoOp (or CoOp + Nemesis with --pun / --pan / --beta) and record it in Parquet."""
    from nemesis_analysis.train import Workspace, train_prompt

    _setup_logging(quiet)
    config = build_run_config(**training)
    result = train_prompt(
        config, Workspace(checkpoints, reports, cache_dir), data_root=data_root, device=device, offline=offline,
        force=force, progress=not quiet,
    )  # fmt: skip
    print_run_result(result)


def print_run_result(result) -> None:
    state = "reused finished run" if result.reused else f"trained in {result.seconds:.1f} s"
    console.print(f"[bold]{result.config.method}[/] run {result.run_id} ({state}) -> {result.run_dir}")
    console.print(
        f"  zero-shot accuracy {result.zero_shot_acc:.2f}%   final test accuracy {result.final_test_acc:.2f}%   "
        f"mean context norm {result.mean_norm:.4f}",
        highlight=False,
    )


# ------------------------------------------------------------------------------------------------- demo


@app.command()
@handle_errors
def demo(
    checkpoints: CheckpointsOpt = Path("checkpoints"),
    reports: ReportsOpt = Path("reports"),
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """The whole pipeline on the embedded default (digits + nemesis-tiny), offline, in minutes."""
    from nemesis_analysis.demo import run_demo

    _setup_logging(quiet)
    run_demo(checkpoints, reports, device=device, progress=not quiet, console=console)


# ---------------------------------------------------------------------- corruption commands (corrupt)

PromptPathOpt = Annotated[
    Optional[Path],
    typer.Option("--prompt", help="Analyse this saved prompt (a folder with prompt.safetensors + prompt.json) instead of training."),
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
    typer.Option("--factors", help="Rescale factors (default 0,0.001,0.01,0.1,0.5,0.9,1.1,2,5,10)."),
]
StdsOpt = Annotated[
    Optional[str],
    typer.Option("--stds", help="Replace stds of N(0, std^2) (default 0,0.0001,0.001,0.01,0.02,0.05,0.1,0.5,1)."),
]
RepsOpt = Annotated[int, typer.Option("--reps", help="Random draws per replace cell.")]
ChunkOpt = Annotated[
    Optional[int], typer.Option("--chunk", help="Variants per text-tower pass (default: from a memory budget).")
]


@app.command()
@training_options
@handle_errors
def corrupt(
    training: dict,
    force: ForceOpt = False,
    prompt: PromptPathOpt = None,
    seeds: SeedsOpt = None,
    ops: OpsOpt = "rescale,replace",
    positions: PositionsOpt = None,
    factors: FactorsOpt = None,
    stds: StdsOpt = None,
    reps: RepsOpt = 3,
    chunk: ChunkOpt = None,
    data_root: DataRootOpt = None,
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    checkpoints: CheckpointsOpt = Path("checkpoints"),
    reports: ReportsOpt = Path("reports"),
    quiet: QuietOpt = False,
) -> None:
    """Corrupt every context position (rescale, replace) and record test accuracy: the Low-Norm Effect.

    Trains the run first when it has not finished (same flags as `train`), or analyses --prompt.
    Rows already in reports/corruptions are skipped, so widening the grid computes only what is new.
    """
    from nemesis_analysis import corrupt as corruption
    from nemesis_analysis import corrupt_ops
    from nemesis_analysis.train import Workspace

    _setup_logging(quiet)
    workspace = Workspace(checkpoints, reports, cache_dir)
    summaries = corruption.sweep_runs(
        build_run_config(**training),
        workspace,
        ops=[item.strip() for item in ops.split(",") if item.strip()],
        positions=corrupt_ops.parse_int_list(positions, "--positions") if positions is not None else None,
        factors=corrupt_ops.parse_float_list(factors, "--factors") if factors is not None else None,
        stds=corrupt_ops.parse_float_list(stds, "--stds") if stds is not None else None,
        reps=reps,
        seeds=corrupt_ops.parse_int_list(seeds, "--seeds") if seeds is not None else None,
        prompt=prompt,
        chunk=chunk,
        data_root=data_root,
        device=device,
        offline=offline,
        force=force,
        progress=not quiet,
        on_run=print_run_result,
        on_prompt=lambda p: console.print(f"analysing {p.path} (run_id {p.run_id})", highlight=False),
    )
    for summary_ in summaries:
        for line in corruption.format_summary(summary_):
            console.print(line, highlight=False, soft_wrap=True)
    console.print(f"rows in {workspace.reports_dir / 'corruptions'}/", highlight=False)


# ------------------------------------------------------------- figures and tables (plot ..., summary)

FigureOutOpt = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Figure file to write (default: REPORTS/figures/<name>.<format>).")
]
FigureFormatOpt = Annotated[
    Optional[str], typer.Option("--format", "-f", help="png (300 dpi), pdf or svg (default: the --out suffix, else png).")
]


def _write_figure(build, reports: Path, name: str, out: Path | None, format: str | None) -> None:
    """Check the output first (a bad --format fails before any work), build, save, print the path."""
    from nemesis_analysis import figures

    path, format = figures.resolve_output(reports, name, out, format)
    path = figures.save(build(), path, format)
    console.print(str(path), highlight=False, soft_wrap=True)


@plot_app.command("frequency")
@handle_errors
def plot_frequency_command(
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Only this backbone.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Only this method (coop, nemesis-pun, ...).")] = None,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Only these datasets, comma-separated.")] = None,
    min_delta: Annotated[float, typer.Option("--min-delta", help="Count a corruption when it raises accuracy by more than this (points).")] = 0.0,
    reports: ReportsOpt = Path("reports"),
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
    measure: Annotated[str, typer.Option("--as", help="percent (of norm-reducing corruptions) or count (as the paper's Figure 1(b)).")] = "percent",
) -> None:
    """Figure 1(b): Low-Norm Effect frequency against shots, one line per dataset (from reports/corruptions)."""
    from nemesis_analysis import figures

    build = lambda: figures.frequency_figure(reports, backbone, method, datasets, min_delta, measure)  # noqa: E731
    _write_figure(build, reports, figures.figure_name("frequency"), out, format)


@plot_app.command("trajectory")
@handle_errors
def plot_trajectory_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset of the runs.")],
    shots: Annotated[int, typer.Option("--shots", "-k", help="Shots per class of the runs.")],
    seed: Annotated[int, typer.Option("--seed", help="Split seed of the runs.")],
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Backbone (needed when several were trained).")] = None,
    per_position: Annotated[bool, typer.Option("--per-position", help="One panel per method, a line per position.")] = False,
    reports: ReportsOpt = Path("reports"),
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Figure 3: norm and test accuracy per epoch, CoOp against each Nemesis variant (from reports/trajectories)."""
    from nemesis_analysis import figures

    build = lambda: figures.trajectory_figure(reports, dataset, shots, seed, backbone, per_position)  # noqa: E731
    name = figures.figure_name("trajectory", dataset=dataset, shots=shots, seed=seed, per_position=per_position)
    _write_figure(build, reports, name, out, format)


@plot_app.command("heatmap")
@handle_errors
def plot_heatmap_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset of the corrupted runs.")],
    method: Annotated[Optional[str], typer.Option("--method", help="Method of the runs (default: coop, or the only one).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Only this backbone.")] = None,
    shots: Annotated[Optional[int], typer.Option("--shots", "-k", help="Only this shot count.")] = None,
    reports: ReportsOpt = Path("reports"),
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Accuracy delta by position x factor/std, one panel per op, seeds averaged (from reports/corruptions)."""
    from nemesis_analysis import figures

    build = lambda: figures.heatmap_figure(reports, dataset, method, backbone, shots)  # noqa: E731
    _write_figure(build, reports, figures.figure_name("heatmap", dataset=dataset), out, format)


@plot_app.command("norms")
@handle_errors
def plot_norms_command(
    run: Annotated[str, typer.Option("--run", help="Run id (or a unique prefix of it).")],
    reports: ReportsOpt = Path("reports"),
    out: FigureOutOpt = None,
    format: FigureFormatOpt = None,
) -> None:
    """Per-position norms of a trained prompt; positions where shrinking raised accuracy highlighted."""
    from nemesis_analysis import figures

    _write_figure(lambda: figures.norms_figure(reports, run), reports, figures.figure_name("norms", run_id=run), out, format)


@app.command()
@handle_errors
def summary(
    reports: ReportsOpt = Path("reports"),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for summary_*.csv/.md (default: REPORTS).")] = None,
    min_delta: Annotated[float, typer.Option("--min-delta", help="Low-Norm Effect threshold for the frequency (points).")] = 0.0,
    table_kind: Annotated[Optional[str], typer.Option("--table", help="A paper table instead: fewshot, base2new, dg or crossdataset.")] = None,
    table_format: Annotated[str, typer.Option("--format", help="With --table: md, latex or csv.")] = "md",
    compare: Annotated[Optional[str], typer.Option("--compare", help="With --table: 'paper' adds the published values and the difference.")] = None,
) -> None:
    """Accuracy tables, mean ± std over seeds per (dataset, shots, method); saved as CSV and Markdown."""
    from nemesis_analysis import figures

    if table_kind is not None or compare is not None or table_format != "md":
        for path in figures.print_paper_table(reports, out, table_kind, table_format, compare, echo=console.out):
            console.print(str(path), highlight=False, soft_wrap=True)
        return
    tables = figures.summary_tables(reports, min_delta=min_delta)
    titles = {
        "runs": "trained runs: test accuracy (%), zero-shot accuracy (%), mean context norm",
        "corruptions": "corruptions: uncorrupted accuracy (%) and accuracy change (points) per op",
        "frequency": "Low-Norm Effect frequency (%)",
        "frequency_counts": "Low-Norm Effect count per seed: n_effect of n_reducing norm-reducing corruptions",
    }
    for name, frame in tables.items():
        shown = figures.display_table(frame)
        table = Table(title=titles.get(name, name))
        for column in shown.columns:
            table.add_column(str(column), overflow="fold")
        for row in shown.itertuples(index=False, name=None):
            table.add_row(*(_cell(value) for value in row))
        console.print(table)
    for name in ("runs", "corruptions"):
        if name not in tables:
            console.print(f"no {name} rows yet in {reports / name}", highlight=False)
    for path in figures.write_summary(tables, out if out is not None else reports):
        console.print(str(path), highlight=False, soft_wrap=True)


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:.2f}"
    return str(value)


# ------------------------------------------------------------------------ data and models (datasets, models)



@app.command()
@handle_errors
def datasets(
    data_root: DataRootOpt = None,
    sample: Annotated[int, typer.Option("--sample", help="Images decoded per split (0: none; existence is always checked).")] = 50,
    quiet: QuietOpt = False,
) -> None:
    """Report every CoOp dataset under the data root: found or not, images per split, classes, problems and fixes.

    Reads only; modifies nothing. Exit code 0 whatever it finds (it is a report).
    """
    from nemesis_analysis.data.diagnose import SPLITS, diagnose_datasets

    _setup_logging(quiet)
    if sample < 0:
        from nemesis_analysis.errors import ConfigError

        raise ConfigError(f"--sample must be at least 0, got {sample}")
    reports = diagnose_datasets(data_root, sample_size=sample)
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


@app.command()
@handle_errors
def models(
    filter: Annotated[Optional[str], typer.Option("--filter", help="Only architectures whose name contains this (case-insensitive).")] = None,
    cache_dir: CacheDirOpt = None,
    checkpoints: CheckpointsOpt = Path("checkpoints"),
) -> None:
    """List open_clip architectures (and nemesis-tiny), their pretrained tags and which are cached locally."""
    import open_clip

    from nemesis_analysis import weights
    from nemesis_analysis.models import TINY_BACKBONE, register_model_configs
    from nemesis_analysis.tiny import tiny_cache_path

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
            cached = ["embedded"] if tiny_cache_path(checkpoints).is_file() else []
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            cached = weights.cached_tags(name, cache_dir)
        quick = weights.architecture_uses_quick_gelu(name)
        table.add_row(name, ", ".join(tags) or "-", ", ".join(cached) or "-", "yes" if quick else "")
    console.print(table)
    console.print(
        "any architecture also takes --pretrained FILE (a local weights file) or --pretrained none (random init); "
        "OpenAI weights pick the QuickGELU variant automatically",
        highlight=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
