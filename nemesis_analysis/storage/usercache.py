"""Where the per-user cache lives (shared by every checkpoints folder and workspace); imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NEMESIS_CACHE"


def default_cache_root() -> Path:
    """Per-user cache shared by every checkpoints folder: $NEMESIS_CACHE, else $XDG_CACHE_HOME/nemesis,
    else ~/.cache/nemesis."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nemesis"
