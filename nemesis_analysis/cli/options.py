"""Options shared by several commands, defined once, the Session builder and the one error handler.

Commands list the environment options they take explicitly (``checkpoints: CheckpointsOpt =
DEFAULT_CHECKPOINTS``) and forward them keyword-only to :func:`build_session`. The run-config options of
``train`` and ``corrupt`` are generated from the settings' declarations (``cli/runoptions.py``).
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

from nemesis_analysis.errors import NemesisError
from nemesis_analysis.session import Session

# Off a terminal (pipes, CI logs, notebooks) rich would wrap tables at 80 columns; give them room.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH, emoji=False)  # job ids like corrupt:...:new: are text, never emoji
err_console = Console(stderr=True, width=_WIDTH, emoji=False)


def error_line(error: NemesisError) -> str:
    """A library error's message, with the flag that sets the field it names."""
    from nemesis_analysis.cli.runoptions import flag_of

    flag = flag_of(getattr(error, "field", None))
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
DeviceOpt = Annotated[str, typer.Option("--device", envvar="NEMESIS_DEVICE", help="auto, cpu, cuda or cuda:N.")]
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


ForceOpt = Annotated[bool, typer.Option("--force", help="Retrain even if this run already finished.")]
