"""A run's folder and every file in it (config, split, resume state, artifact, result, table copies).

Layout of ``CHECKPOINTS/<run_id>/``: ``config.json`` (the resolved config), ``split.json`` (the few-shot
images), ``state.safetensors`` + ``state.json`` (the last saved epoch, both naming it), the prompt
artifact (``prompt.safetensors`` + ``prompt.json``), ``runs.parquet`` and ``trajectories.parquet`` (the
run's table rows) and ``result.json`` (written last: its presence marks a finished run). Every file is
written atomically with the user's umask permissions. A process training the run holds
``CHECKPOINTS/.locks/<run_id>.lock``; damaged files are named in one-line errors with the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from nemesis_analysis.data.base import Sample
from nemesis_analysis.data.fewshot import save_split
from nemesis_analysis.storage import store
from nemesis_analysis.storage.artifacts import save_prompt
from nemesis_analysis.storage.fsio import atomic_path, atomic_write_json, atomic_write_text, file_mode
from nemesis_analysis.storage.safeload import (
    DamagedFileError,
    first_line,
    load_safetensors,
    read_json,
    safetensors_metadata,
)

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
SPLIT_JSON = "split.json"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
RESULT_JSON = "result.json"
REPORTED_TABLES = ("runs", "trajectories")
SUPERSEDED_TABLES = (*REPORTED_TABLES, "corruptions", "evaluations")  # a retrained run's rows go from all
LOCKS = ".locks"  # CHECKPOINTS/.locks/<run_id>.lock: held (flock) while a process trains the run


@dataclass
class ResumeState:
    """What a saved epoch restores: the epoch, the rows so far and the tensors (slot values, momentum)."""

    epoch: int
    rows: list[dict]
    tensors: dict[str, torch.Tensor]


@dataclass
class RunDir:
    """The folder of one run, ``CHECKPOINTS/<run_id>``."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def damaged_fix(self) -> str:
        """What to do about a damaged file of this run, for error messages."""
        return f"retrain with --force, or delete the run folder {self.path}"

    def reset(self) -> None:
        """Remove everything of this run (``--force``)."""
        if self.path.exists():
            shutil.rmtree(self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock for the block (another process training the same run waits).

        The lock file lives beside the run folders (``CHECKPOINTS/.locks/<run_id>.lock``), so ``reset`` never
        removes a file someone holds, and is never deleted (deleting a lock file would let two holders in).
        """
        lock_file = self.path.parent / LOCKS / f"{self.run_id}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.warning("run %s is being trained by another process; waiting for it", self.run_id)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    # --------------------------------------------------------------------------------- config and split

    def save_config(self, config_dict: dict) -> None:
        atomic_write_json(self.file(CONFIG_JSON), config_dict, "the run config")

    def load_config_dict(self) -> dict | None:
        path = self.file(CONFIG_JSON)
        return read_json(path, self.damaged_fix, "run file") if path.is_file() else None

    def save_split(self, splits: dict[str, list[Sample]], classnames: list[str]) -> None:
        """The sampled splits, in :func:`~nemesis_analysis.data.fewshot.save_split`'s format."""
        with atomic_path(self.file(SPLIT_JSON), "the few-shot split") as tmp:
            save_split(tmp, splits, classnames)

    # --------------------------------------------------------------------------------------- resume state

    def save_state(self, epoch: int, rows: list[dict], tensors: dict[str, torch.Tensor]) -> None:
        """Both state files name their epoch; two renames cannot be one atomic step, and a pair that
        disagrees (a kill between the renames) is not resumed from."""
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        with atomic_path(self.file(STATE_TENSORS), "the resume state") as tmp:
            save_file(tensors, str(tmp), metadata={"epoch": str(epoch)})
        atomic_write_text(self.file(STATE_JSON), json.dumps({"epoch": epoch, "rows": rows}), "the resume state")

    def load_state(self) -> ResumeState | None:
        """The last saved epoch, or None when there is none, the pair is inconsistent or a file is damaged
        (a warning says so, and training starts from scratch)."""
        state_json, state_tensors = self.file(STATE_JSON), self.file(STATE_TENSORS)
        if not state_json.is_file() or not state_tensors.is_file():
            return None
        fix = "ignoring it and training from the start"
        try:
            state = read_json(state_json, fix, "resume state")
            if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
                raise DamagedFileError(f"resume state {state_json} is damaged (no epoch); {fix}")
            tensor_epoch = safetensors_metadata(state_tensors, fix, "resume state").get("epoch")
            if tensor_epoch != str(state["epoch"]):
                message = "%s: saved state is incomplete (interrupted while saving); training from the start"
                logger.warning(message, self.run_id)
                return None
            tensors = load_safetensors(state_tensors, fix, "resume state")
            return ResumeState(state["epoch"], list(state["rows"]), tensors)
        except (DamagedFileError, KeyError, TypeError) as error:
            logger.warning("%s", error if isinstance(error, DamagedFileError) else f"resume state of {self.path} "
                           f"is damaged ({error}); {fix}")  # fmt: skip
            return None

    # --------------------------------------------------------------------------------- finished run

    def save_artifact(self, ctx: torch.Tensor, metadata: dict) -> None:
        save_prompt(self.path, ctx, metadata)

    def save_tables(self, run_row: dict, trajectory_rows: list[dict]) -> None:
        """The run's own copies of its table rows (re-appended when a reports folder lacks them)."""
        for table, frame in (("trajectories", pd.DataFrame(trajectory_rows)), ("runs", pd.DataFrame([run_row]))):
            with atomic_path(self.file(f"{table}.parquet"), f"the run's {table} rows") as tmp:
                frame.to_parquet(tmp, index=False)

    def save_result(self, result: dict) -> None:
        """Written last: a run with ``result.json`` is finished."""
        atomic_write_json(self.file(RESULT_JSON), result, "the run result")

    def load_result(self) -> dict | None:
        path = self.file(RESULT_JSON)
        return read_json(path, self.damaged_fix, "run file") if path.is_file() else None

    def ensure_reported(self, reports_dir: Path) -> None:
        """Re-append a finished run's rows when the reports folder was cleared or is a new one; under the
        table's claim on this run, so two processes never both append them."""
        for table in REPORTED_TABLES:
            saved = self.file(f"{table}.parquet")
            with store.claim(reports_dir, table, self.run_id) as claim:
                if not claim.existing_keys() and saved.is_file():
                    claim.append(self.read_table_copy(saved, table))

    def read_table_copy(self, saved: Path, table: str) -> pd.DataFrame:
        """The run's saved copy of its rows in ``table``, under the current schema (a copy written before a
        column's rename reads under its new name, as table parts do)."""
        try:
            return store.read_rows_file(saved, table)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise DamagedFileError(f"run file {saved} is damaged ({first_line(error)}); {self.damaged_fix}") from None
