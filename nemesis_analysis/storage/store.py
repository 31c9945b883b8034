"""Reads and writes the Parquet tables, one folder per table and one part file per write.

Schemas, keys and column defaults come from :mod:`nemesis_analysis.storage.schema`. No torch here: tables load
fast in a notebook.

What is guaranteed
------------------
* **Whole parts.** A part is written under a hidden temporary name and renamed into place
  (:func:`nemesis_analysis.storage.fsio.atomic_path`), so a killed writer leaves the whole part or nothing, and
  every part gets the permissions of the user's umask.
* **No duplicate keys from concurrent writers.** Every writer that adds rows for a run does so inside
  :func:`claim` (an exclusive ``fcntl.flock`` on the hidden file ``.lock-<run_id>`` in the table folder,
  held while it checks what is missing and appends). :meth:`Claim.append` drops rows whose key is already
  in the table or repeated in the batch. So two ``nemesis corrupt`` processes on the same run and folder
  never make a key appear twice in what a plain ``pandas.read_parquet(folder)`` returns: the second one
  waits, then finds the rows of the first. Writers that bypass :func:`claim` (a bare :func:`append_rows`)
  get no such promise; :func:`read_table` still keeps the newest row per key, and :func:`compact`
  removes the older copies on disk.
* **Superseding a run.** :func:`supersede_run` (a forced retrain) rewrites, under the run's lock in every
  named table, each part that holds rows of the run without them, one atomic rename per part; a reader
  at any moment sees each part old or new, so it may still see an old row but never a duplicate.
* **Filling columns in place.** :meth:`Claim.update` (``nemesis fill-counts``) sets columns of a run's
  stored rows by key, rewriting each affected part atomically under the run's lock and the table's rewrite
  lock; it adds no row, so no key appears twice.
* **Rewrites never race each other.** :func:`compact` and :func:`supersede_run` also take the table's
  exclusive ``.lock-table`` file; appenders never rewrite a part, so they need only the run's lock.
  Locks are taken run first, table second, so no two lockers wait on each other.
* **A damaged part is named, never a traceback.** A part that cannot be read (truncated, empty, not
  Parquet: a copy cut short, a full disk outside this toolkit) raises :class:`DamagedPartError` naming the
  file and the fix in :func:`check_parts`, which every writing command calls before any work;
  :func:`read_table` leaves it out with a warning naming it, so summaries, figures and ``study status``
  still show the rest.
* **Old parts stay readable.** :func:`read_table` reads parts written under an older schema: a column
  the part lacks gets the default ``schema.column_default`` declares (a null when none is declared), a
  column renamed since (``schema.RENAMED_COLUMNS``: ``method`` is now ``regularizer``) is read under its
  new name, and a column the schema no longer has is dropped.

Locks are advisory and local to one machine's kernel (flock on a network filesystem may be a no-op).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemesis_analysis.errors import DamagedPartError
from nemesis_analysis.storage import fsio, schema

logger = logging.getLogger(__name__)

# Re-exports for modules that still read the schemas from here; schema.py is their home.
SCHEMAS = schema.SCHEMAS
KEYS = schema.KEYS
IDENTITY = schema.IDENTITY_SCHEMA

TABLE_LOCK = ".lock-table"


def table_path(reports_dir: Path | str, table: str) -> Path:
    schema.schema_of(table)  # raises on an unknown table
    return Path(reports_dir) / table


def _parts(folder: Path) -> list[Path]:
    """Visible part files, oldest first (names sort by write time)."""
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _to_arrow(table: str, frame: pd.DataFrame) -> pa.Table:
    target = schema.schema_of(table)
    frame = schema.with_column_defaults(table, frame)
    missing = [name for name in target.names if name not in frame.columns]
    if missing:
        raise ValueError(f"rows for {table} lack columns {missing}")
    return pa.Table.from_pandas(frame[target.names], schema=target, preserve_index=False)


def _write_part(folder: Path, arrow: pa.Table, name: str | None = None) -> Path:
    # Names sort by time, so "newest wins" needs no metadata; the uuid keeps writers apart.
    name = name or f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    path = folder / name
    with fsio.atomic_path(path, f"the {folder.name} table") as tmp:
        pq.write_table(arrow, tmp)
    return path


def append_rows(reports_dir: Path | str, table: str, rows: list[dict] | pd.DataFrame) -> Path | None:
    """Write ``rows`` as a new part of ``table``; returns the part's path (None for no rows).

    No check against rows already written: use :func:`claim` where two writers may add the same keys.
    """
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if frame.empty:
        return None
    return _write_part(table_path(reports_dir, table), _to_arrow(table, frame))


def _conform(part: pa.Table, table: str) -> pa.Table:
    """A part's rows under the current schema: renamed columns under their current name (the regularizer
    column was ``method`` once), missing columns filled with their declared default."""
    target = schema.schema_of(table)
    arrays = []
    for field in target:
        former = schema.RENAMED_COLUMNS.get(field.name)
        if field.name in part.column_names:
            arrays.append(part.column(field.name).cast(field.type))
        elif former is not None and former in part.column_names:
            arrays.append(part.column(former).cast(field.type))
        else:
            default = schema.column_default(table, field.name)
            arrays.append(pa.array([default] * part.num_rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=target)


def damaged_part_message(path: Path, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"table part {path} cannot be read ({reason}); move it aside (its rows drop out of the table) "
            "or rerun the job that wrote it")  # fmt: skip


def _read_part(path: Path, table: str) -> pa.Table:
    try:
        return _conform(pq.read_table(path), table)
    except (pa.ArrowException, OSError) as error:
        raise DamagedPartError(path, damaged_part_message(path, error)) from None


def read_rows_file(path: Path | str, table: str) -> pd.DataFrame:
    """One Parquet file of ``table``'s rows (e.g. a run folder's copy) under the current schema, as parts are
    read: renamed columns under their current name, missing columns with their default."""
    return _conform(pq.read_table(path), table).to_pandas()


def check_parts(reports_dir: Path | str, tables: tuple[str, ...] | list[str] = schema.TABLES) -> None:
    """Raise DamagedPartError naming the first part of ``tables`` whose Parquet footer cannot be read;
    writing commands call this before any work, so nothing is computed that could not be recorded."""
    for table in tables:
        for part in _parts(table_path(reports_dir, table)):
            try:
                pq.read_metadata(part)
            except (pa.ArrowException, OSError) as error:
                raise DamagedPartError(part, damaged_part_message(part, error)) from None


def _read_parts(parts: list[Path], table: str) -> pd.DataFrame:
    arrows = []
    for part in parts:
        try:
            arrows.append(_read_part(part, table))
        except DamagedPartError as error:
            logger.warning("skipping a damaged part: %s", error)
    if not arrows:
        return schema.schema_of(table).empty_table().to_pandas()
    return pa.concat_tables(arrows).to_pandas()


def _dedupe(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    return frame.drop_duplicates(subset=list(schema.KEYS[table]), keep="last").reset_index(drop=True)


def read_table(reports_dir: Path | str, table: str, dedupe: bool = True) -> pd.DataFrame:
    """The whole table as a DataFrame (empty, with the schema's columns, when nothing is written yet).

    Parts written under an older schema are read with the current one (see the module docstring).
    With ``dedupe`` the newest row per key is kept.
    """
    frame = _read_parts(_parts(table_path(reports_dir, table)), table)
    return _dedupe(frame, table) if dedupe else frame


def _keys_of(frame: pd.DataFrame, table: str, run_id: str) -> set[tuple]:
    frame = frame[frame["run_id"] == run_id]
    columns = [c for c in schema.KEYS[table] if c != "run_id"]
    return set(frame[columns].itertuples(index=False, name=None))


def existing_keys(reports_dir: Path | str, table: str, run_id: str) -> set[tuple]:
    """Keys (without run_id) already written for ``run_id``: what a resumed job can skip."""
    return _keys_of(read_table(reports_dir, table), table, run_id)


# --------------------------------------------------------------------------- locks


def _lock_name(run_id: str) -> str:
    return ".lock-run-" + re.sub(r"[^0-9A-Za-z._-]+", "_", str(run_id))


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created, hidden, empty) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, fsio.file_mode())
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


class Claim:
    """The right to add rows of one run to one table, held inside :func:`claim`."""

    def __init__(self, reports_dir: Path | str, table: str, run_id: str) -> None:
        self.reports_dir, self.table, self.run_id = Path(reports_dir), table, str(run_id)

    def existing_keys(self) -> set[tuple]:
        """Keys (without run_id) of this run already in the table: what is left to compute is the rest."""
        return existing_keys(self.reports_dir, self.table, self.run_id)

    def append(self, rows: list[dict] | pd.DataFrame) -> Path | None:
        """Append the rows whose key is not in the table yet (and the last of keys repeated in ``rows``)."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        if frame.empty:
            return None
        frame = schema.with_column_defaults(self.table, frame)
        if (frame["run_id"].astype(str) != self.run_id).any():
            raise ValueError(f"a claim on run {self.run_id} can only append that run's rows")
        frame = _dedupe(frame, self.table)
        columns = [c for c in schema.KEYS[self.table] if c != "run_id"]
        done = self.existing_keys()
        fresh = [key not in done for key in frame[columns].itertuples(index=False, name=None)]
        return append_rows(self.reports_dir, self.table, frame[fresh])

    def update(self, rows: pd.DataFrame, columns: list[str]) -> int:
        """Set ``columns`` of this run's stored rows to the values in ``rows`` with the same key (every copy
        of a key); returns the stored rows changed. No row is added, so no key appears twice: each part
        holding such rows is rewritten atomically in place, under the table's rewrite lock."""
        key = [c for c in schema.KEYS[self.table] if c != "run_id"]
        if rows.empty:
            return 0
        if (rows["run_id"].astype(str) != self.run_id).any():
            raise ValueError(f"a claim on run {self.run_id} can only update that run's rows")
        values = rows.drop_duplicates(key, keep="last").set_index(key)[columns]
        folder = table_path(self.reports_dir, self.table)
        with _flock(folder / TABLE_LOCK):
            return sum(_update_part(part, self.table, self.run_id, key, values) for part in _parts(folder))


@contextlib.contextmanager
def claim(reports_dir: Path | str, table: str, run_id: str) -> Iterator[Claim]:
    """Exclusive right to add rows of ``run_id`` to ``table`` for the block (other claims wait).

    Inside the block, read :meth:`Claim.existing_keys`, compute what is missing and :meth:`Claim.append`
    it; a second process claiming the same run waits and then sees those rows.
    """
    folder = table_path(reports_dir, table)
    with _flock(folder / _lock_name(run_id)):
        yield Claim(reports_dir, table, run_id)


# --------------------------------------------------------------------------- rewrites


def _rewrite_parts(folder: Path, table: str, parts: list[Path], keep) -> int:
    """Rewrite each of ``parts`` in place through ``keep(frame, index) -> mask``; returns rows removed."""
    removed = 0
    for index, part in enumerate(parts):
        arrow = _read_part(part, table)
        mask = keep(arrow.to_pandas(), index)
        if mask.all():
            continue
        removed += int((~mask).sum())
        if mask.any():
            _write_part(folder, arrow.filter(pa.array(mask.to_numpy())), name=part.name)
        else:
            part.unlink()
    return removed


def _update_part(part: Path, table: str, run_id: str, key: list[str], values: pd.DataFrame) -> int:
    """Rewrite ``part`` with the rows of ``run_id`` whose key is in ``values`` set to its columns; rows changed."""
    frame = _conform(pq.read_table(part), table).to_pandas()
    keys = pd.MultiIndex.from_frame(frame[key])
    hit = (frame["run_id"] == run_id).to_numpy() & keys.isin(values.index)
    if not hit.any():
        return 0
    found = values.reindex(keys[hit])
    for column in values.columns:
        frame.loc[hit, column] = found[column].to_numpy()
    _write_part(part.parent, _to_arrow(table, frame), name=part.name)
    return int(hit.sum())


def supersede_run(reports_dir: Path | str, run_id: str, tables: tuple[str, ...] | list[str] = schema.TABLES) -> int:
    """Remove every row of ``run_id`` from ``tables`` (a forced retrain); returns the rows removed.

    Each affected part is rewritten atomically without those rows, under the run's lock in every table
    and the table's rewrite lock; call it before appending the retrained run's rows.
    """
    removed = 0
    with contextlib.ExitStack() as stack:
        for table in tables:
            stack.enter_context(claim(reports_dir, table, run_id))
        for table in tables:
            folder = table_path(reports_dir, table)
            with _flock(folder / TABLE_LOCK):
                removed += _rewrite_parts(folder, table, _parts(folder), lambda frame, _: frame["run_id"] != run_id)
    return removed


def compact(reports_dir: Path | str, table: str) -> int:
    """Remove rows superseded by a newer row with the same key, part by part; returns the rows removed.

    Each part is rewritten in place (atomically) without its superseded rows and deleted when empty, so
    a concurrent reader never sees a row twice that it did not see twice before, nor loses a newest row.
    Parts are not merged (merging would show a row twice for a moment).
    """
    folder = table_path(reports_dir, table)
    key = list(schema.KEYS[table])
    with _flock(folder / TABLE_LOCK):
        parts = _parts(folder)
        frames = [_read_part(p, table).to_pandas() for p in parts]
        if not frames:
            return 0
        everything = pd.concat(frames, ignore_index=True)  # row i of part k has index offsets[k] + i
        winners = set(everything.drop_duplicates(subset=key, keep="last").index)
        offsets = [0]
        for frame in frames:
            offsets.append(offsets[-1] + len(frame))

        def keep(frame: pd.DataFrame, index: int) -> pd.Series:
            return pd.Series([offsets[index] + i in winners for i in range(len(frame))], index=frame.index)

        return _rewrite_parts(folder, table, parts, keep)
