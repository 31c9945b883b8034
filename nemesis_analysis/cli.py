"""The ``nemesis`` command: thin commands over the library. Parse, build a config, call, summarise.

Library code raises :class:`~nemesis_analysis.errors.NemesisError`; only here does it become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
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

console = Console()
err_console = Console(stderr=True)


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


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    # open_clip logs through the root logger; keep its chatter out of our output.
    logging.getLogger().setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------------ train


@app.command()
@handle_errors
def train(
    dataset: DatasetOpt = "digits",
    shots: ShotsOpt = 16,
    seed: SeedOpt = 1,
    backbone: BackboneOpt = "nemesis-tiny",
    pretrained: PretrainedOpt = None,
    n_ctx: NCtxOpt = 16,
    csc: CscOpt = False,
    class_token_position: PositionOpt = "end",
    ctx_init: CtxInitOpt = None,
    epochs: EpochsOpt = None,
    precision: PrecisionOpt = None,
    pun: PunOpt = False,
    pan: PanOpt = False,
    beta: BetaOpt = None,
    alpha: AlphaOpt = 1.0,
    norm_type: NormTypeOpt = "l2",
    pan_positions: PanPositionsOpt = 1,
    pan_factor: PanFactorOpt = 0.1,
    omega: OmegaOpt = "sigmoid",
    recipe: RecipeOpt = None,
    lr: LrOpt = 0.002,
    batch_size: BatchOpt = 32,
    force: ForceOpt = False,
    data_root: DataRootOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    checkpoints: CheckpointsOpt = Path("checkpoints"),
    reports: ReportsOpt = Path("reports"),
    quiet: QuietOpt = False,
) -> None:
    """Train CoOp (or CoOp + Nemesis with --pun / --pan / --beta) and record it in Parquet."""
    from nemesis_analysis.train import Workspace, train_prompt

    _setup_logging(quiet)
    config = build_run_config(
        dataset, shots, seed, backbone, pretrained, n_ctx, csc, class_token_position, ctx_init, epochs,
        precision, pun, pan, beta, alpha, norm_type, pan_positions, pan_factor, omega, recipe, lr, batch_size,
    )  # fmt: skip
    result = train_prompt(
        config, Workspace(checkpoints, reports), data_root=data_root, device=device, offline=offline,
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

# ------------------------------------------------------------- figures and tables (plot ..., summary)

# ------------------------------------------------------------------------ data and models (datasets, models)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
