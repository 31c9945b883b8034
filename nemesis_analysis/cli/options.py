"""Options shared by several commands, defined once, and the builders that turn them into a Session and a RunConfig.

Commands list the options they take explicitly (``checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS``)
and forward them keyword-only to :func:`build_session` / :func:`build_run_config`; no signature is
rewritten. Precedence of a run's settings: defaults < ``--config FILE`` < flags given explicitly on
the command line < ``--set KEY=VALUE``; a ``--recipe`` is applied last and prints what it changed.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from nemesis_analysis.errors import ConfigError, NemesisError
from nemesis_analysis.session import Session

# Off a terminal (pipes, CI logs, notebooks) rich would wrap tables at 80 columns; give them room.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

# One table: the flag that sets each config field (dotted name). Errors naming a field get "(flag ...)".
FIELD_FLAGS: dict[str, str] = {
    "dataset": "--dataset",
    "shots": "--shots",
    "seed": "--seed",
    "backbone": "--backbone",
    "pretrained": "--pretrained",
    "epochs": "--epochs",
    "precision": "--precision",
    "recipe": "--recipe",
    "protocol": "--protocol",
    "prompt.n_ctx": "--n-ctx",
    "prompt.csc": "--csc",
    "prompt.class_token_position": "--class-token-position",
    "prompt.ctx_init": "--ctx-init",
    "prompt.method": "--method",
    "plot.num_prompts": "--plot-prompts",
    "kgcoop.weight": "--kg-weight",
    "nemesis.beta": "--beta",
    "nemesis.weight": "--norm-weight",
    "nemesis.norm_type": "--norm-type",
    "nemesis.pan_positions": "--pan-positions",
    "nemesis.pan_factor": "--pan-factor",
    "nemesis.omega": "--omega",
    "optim.lr": "--lr",
    "optim.batch_size": "--batch-size",
    "allow_missing_classes": "--allow-missing-classes",
}


def flag_for(field: str | None) -> str | None:
    """The flag that sets config field ``field`` (dotted), or None when only --config / --set reach it."""
    return FIELD_FLAGS.get(field) if field else None


def error_line(error: NemesisError) -> str:
    """A library error's message, with the flag that sets the field it names."""
    flag = flag_for(getattr(error, "field", None))
    return f"{error} (flag {flag})" if flag else str(error)


def handle_errors(command):
    """Turn domain errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NemesisError as error:
            err_console.print(f"[bold red]error:[/] {escape(error_line(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished work is saved; run the same command again to resume")
            raise typer.Exit(code=130) from None

    return wrapper


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    # open_clip logs through the root logger; keep its chatter out of our output.
    logging.getLogger().setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------- environment options

DEFAULT_CHECKPOINTS = Path("checkpoints")
DEFAULT_REPORTS = Path("reports")

CheckpointsOpt = Annotated[Path, typer.Option("--checkpoints", help="Folder for trained prompts and caches.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="Folder for Parquet tables and figures.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="Folder holding the CoOp datasets (default: $NEMESIS_DATA).")
]
CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="open_clip weights cache (default: the Hugging Face cache and ~/.cache/clip)."),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; say which file is missing.")]


def build_session(
    *,
    checkpoints: Path = DEFAULT_CHECKPOINTS,
    reports: Path = DEFAULT_REPORTS,
    data_root: Path | None = None,
    device: str = "auto",
    offline: bool = False,
    cache_dir: Path | None = None,
    quiet: bool = False,
) -> Session:
    """The environment options -> the one Session of this command (and logging set up for --quiet)."""
    setup_logging(quiet)
    return Session(
        checkpoints_dir=checkpoints,
        reports_dir=reports,
        device=device,
        offline=offline,
        data_root=data_root,
        weights_cache_dir=cache_dir,
        progress=not quiet,
    )


# ------------------------------------------------------------------------------------ run (config) options


def _help(dotted: str, text: str = "") -> str:
    from nemesis_analysis.config import field_help

    return (text or field_help(dotted)[:1].upper() + field_help(dotted)[1:]) + "."


ConfigFileOpt = Annotated[
    Optional[Path], typer.Option("--config", metavar="FILE", help="TOML run config: top-level fields and [prompt], [nemesis], [optim], [plot], [kgcoop], [maple].")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config field by dotted name, e.g. --set nemesis.beta=0.5 (repeatable)."),
]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config as TOML and exit.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help=_help("dataset", "digits (embedded), a CoOp dataset, or folder:PATH / manifest:PATH"))]
ShotsOpt = Annotated[int, typer.Option("--shots", "-k", help=_help("shots"))]
SeedOpt = Annotated[int, typer.Option("--seed", help=_help("seed"))]
BackboneOpt = Annotated[str, typer.Option("--backbone", help="open_clip architecture (RN50, ViT-B-16, nemesis-tiny).")]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option(
        "--pretrained",
        help="open_clip tag (openai), a weights file, 'embedded' (tiny CLIP) or 'none'. "
        "Default: embedded for nemesis-tiny, openai otherwise.",
    ),
]
NCtxOpt = Annotated[int, typer.Option("--n-ctx", help=_help("prompt.n_ctx"))]
CscOpt = Annotated[bool, typer.Option("--csc/--no-csc", help=_help("prompt.csc"))]
PositionOpt = Annotated[str, typer.Option("--class-token-position", help="end, middle or front.")]
CtxInitOpt = Annotated[Optional[str], typer.Option("--ctx-init", help="Initialise the context from these words.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Override CoOp's epochs for the shot count.")]
PrecisionOpt = Annotated[
    Optional[str],
    typer.Option("--precision", help="fp32 (everything fp32; CPU default), amp (bf16 autocast of the frozen towers, "
                 "fp32 context and SGD; CUDA default) or fp16 (the reference's all-half mode: towers, context and "
                 "SGD update in fp16; CUDA only)."),
]
PunOpt = Annotated[bool, typer.Option("--pun", help="Nemesis PUN: beta = 1.")]
PanOpt = Annotated[bool, typer.Option("--pan", help="Nemesis PAN: beta = 0.")]
BetaOpt = Annotated[Optional[float], typer.Option("--beta", help="Mix: beta * PUN + (1 - beta) * PAN, in [0, 1].")]
NormWeightOpt = Annotated[float, typer.Option("--norm-weight", "--alpha", help=_help("nemesis.weight", "Norm-loss weight (reference: A); --alpha is an alias"))]
NormTypeOpt = Annotated[str, typer.Option("--norm-type", help="Norm of a position: l2, l1 or inf.")]
PanPositionsOpt = Annotated[int, typer.Option("--pan-positions", help=_help("nemesis.pan_positions"))]
PanFactorOpt = Annotated[float, typer.Option("--pan-factor", help=_help("nemesis.pan_factor"))]
OmegaOpt = Annotated[str, typer.Option("--omega", help="sigmoid (1 - sigmoid(0.2 (t - T/2))) or constant.")]
RecipeOpt = Annotated[
    Optional[str],
    typer.Option("--recipe", help="coop (CoOp protocol: RN50, M=16, end, last partial batch dropped), paper "
                 "(the reference code's rules: batches, epochs, CSC norm sums, Food101/OxfordPets weights) or "
                 "cocoop (CoCoOp: ViT-B-16, 16 shots, batch 1, 10 epochs, 'a photo of a'); "
                 "prints and records what it changed."),
]
ProtocolOpt = Annotated[
    str, typer.Option("--protocol", help="fewshot, base2new (train on base classes, test on base and new), crossdataset or dg.")
]
LrOpt = Annotated[float, typer.Option("--lr", help=_help("optim.lr"))]
BatchOpt = Annotated[int, typer.Option("--batch-size", help=_help("optim.batch_size"))]
MethodOpt = Annotated[
    str, typer.Option("--method", help="Prompt method: coop, cocoop (image-conditioned context), plot (N prompts "
                      "matched by optimal transport), kgcoop (CoOp pulled towards the hand-crafted prompt) or maple (deep "
                      "prompts in both towers; --set maple.depth=J).")
]
PLOT_PANEL = "PLOT options (--method plot)"
KGCOOP_PANEL = "KgCoOp options (--method kgcoop)"
PlotPromptsOpt = Annotated[
    int, typer.Option("--plot-prompts", help=_help("plot.num_prompts", "Prompts per class N (PLOT only)"),
                      rich_help_panel=PLOT_PANEL)
]
KgWeightOpt = Annotated[
    float, typer.Option("--kg-weight", help=_help("kgcoop.weight", "Weight lambda of mean ||t - t_hand-crafted||^2 "
                        "(KgCoOp only)"), rich_help_panel=KGCOOP_PANEL)
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Retrain even if this run already finished.")]
AllowMissingOpt = Annotated[
    bool,
    typer.Option("--allow-missing-classes", help="Train even when some classes have fewer training images than "
                 "--shots (or none); recorded in the run."),
]

# Command parameter -> the config field it sets (the inverse of FIELD_FLAGS, by parameter name).
PARAM_FIELDS = {
    "dataset": "dataset", "shots": "shots", "seed": "seed", "backbone": "backbone", "pretrained": "pretrained",
    "epochs": "epochs", "precision": "precision", "n_ctx": "prompt.n_ctx", "csc": "prompt.csc",
    "class_token_position": "prompt.class_token_position", "ctx_init": "prompt.ctx_init",
    "norm_weight": "nemesis.weight", "norm_type": "nemesis.norm_type", "pan_positions": "nemesis.pan_positions",
    "pan_factor": "nemesis.pan_factor", "omega": "nemesis.omega", "lr": "optim.lr", "batch_size": "optim.batch_size",
    "recipe": "recipe", "method": "prompt.method", "plot_prompts": "plot.num_prompts", "kg_weight": "kgcoop.weight",
    "protocol": "protocol", "allow_missing_classes": "allow_missing_classes",
}  # fmt: skip


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters typed on the command line (or set from the environment), not left at defaults."""
    return {
        name for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    }  # fmt: skip


def build_run_config(
    *,
    given: set[str] | None = None,
    config_file: Path | None = None,
    sets: list[str] | None = None,
    pun: bool = False,
    pan: bool = False,
    beta: float | None = None,
    purpose: str = "train",
    **flags,
):
    """Layer defaults < config file < explicit flags < --set into a validated RunConfig, then apply the recipe.

    ``flags`` are the command's config flags by parameter name (:data:`PARAM_FIELDS`); only those named
    in ``given`` (typed on the command line, see :func:`given_options`) override the config file; with
    ``given=None`` (a call from Python) all of them do. ``purpose``: what the run is made for (``train`` or
    ``corrupt``), which the paper recipe's epochs depend on. Nothing heavy is imported: bad values fail at once.
    """
    from nemesis_analysis.config import RunConfig, apply_recipe, load_config_file, parse_assignment, with_overrides

    unknown = set(flags) - set(PARAM_FIELDS)
    if unknown:
        raise TypeError(f"unknown config flags {sorted(unknown)}")
    if sum([pun, pan, beta is not None]) > 1:
        raise ConfigError("give only one of --pun, --pan and --beta B")
    layered = load_config_file(config_file) if config_file is not None else {}
    layered.update({PARAM_FIELDS[name]: value for name, value in flags.items() if given is None or name in given})
    if pun or pan or beta is not None:
        layered["nemesis.beta"] = 1.0 if pun else 0.0 if pan else beta
    layered.update(parse_assignment(item) for item in sets or [])
    if layered.get("pretrained") is None:
        layered["pretrained"] = "embedded" if layered.get("backbone", "nemesis-tiny") == "nemesis-tiny" else "openai"
    recipe = layered.pop("recipe", None)
    config = RunConfig.from_dict(with_overrides(RunConfig().to_dict(), layered), strict=True)
    config, changed = apply_recipe(config, recipe, purpose)
    if changed:
        console.print(f"recipe [bold]{recipe}[/]: {config.recipe_changes}", highlight=False)
    return config
