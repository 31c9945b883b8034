"""Atomic file writes with the user's usual permissions: the one way the toolkit writes a file.

A file is written under a hidden temporary name in its destination folder and renamed into place, so
readers and a killed process see the whole file or the previous one, never half of it. The result gets
the mode the user's umask gives a new file (some writers, e.g. safetensors or ``tempfile``, create
private 0600 files), and a failed write removes its temporary file and raises :class:`WriteError`
naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from nemesis_analysis.errors import NemesisError


class WriteError(NemesisError, OSError):
    """A file could not be written (read-only folder, full disk, a file where a folder should be)."""


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # the portable way: set and restore
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a plain new file gets under the current umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def temporary_path(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique per process and call (readers skip hidden files)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path | str, what: str = "") -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; on success it replaces ``path`` atomically.

    ``what`` (e.g. "the corruption table") makes the error message say what was being saved. The folder is
    created when missing. On any failure the temporary file is removed and the destination is untouched.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        if isinstance(error, WriteError):
            raise
        label = f" ({what})" if what else ""
        reason = error.strerror or str(error)
        raise WriteError(f"could not write {path}{label}: {reason}; files written before are intact") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def atomic_write_bytes(path: Path | str, data: bytes, what: str = "") -> Path:
    with atomic_path(path, what) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: Path | str, text: str, what: str = "") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_write_json(path: Path | str, data, what: str = "", indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True), what)


def check_writable(folder: Path | str, flag: str) -> Path:
    """Raise WriteError unless ``folder`` is a folder we can write files into, or can be created as one.

    ``flag`` names the option that set it (e.g. ``--reports``), so the message says what to change.
    Checked before any long work starts, by writing and removing a probe file in the folder (or, when it
    does not exist yet, in its nearest existing parent); nothing is created or left behind.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is under the file {existing}"
        raise WriteError(f"{flag} {folder} {where}, not a folder; pass a folder")
    probe = temporary_path(existing / "write-check")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
    except OSError as error:
        reason = error.strerror or str(error)
        raise WriteError(f"{flag} {folder} is not writable ({reason}); pass a folder you can write to") from None
    finally:
        _remove(probe)
    return folder
