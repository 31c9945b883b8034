"""Parquet tables (DESIGN.md section 4): one folder per table, one part file per write.

Appending writes a new part atomically (hidden temporary file, then rename), so a killed process
leaves either the whole part or nothing, and concurrent writers never touch each other's files.
``pandas.read_parquet(folder)`` reads a table; :func:`read_table` also orders parts by time and
removes superseded duplicates. No torch here: tables load fast in a notebook.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

IDENTITY = [
    ("run_id", pa.string()),
    ("dataset", pa.string()),
    ("backbone", pa.string()),
    ("pretrained", pa.string()),
    ("shots", pa.int64()),
    ("seed", pa.int64()),
    ("method", pa.string()),
    ("n_ctx", pa.int64()),
    ("csc", pa.bool_()),
    ("class_token_position", pa.string()),
    ("precision", pa.string()),
]

SCHEMAS: dict[str, pa.Schema] = {
    "corruptions": pa.schema(
        IDENTITY
        + [
            ("op", pa.string()),
            ("position", pa.int64()),
            ("factor", pa.float64()),
            ("rep", pa.int64()),
            ("acc", pa.float64()),
            ("acc_original", pa.float64()),
            ("delta", pa.float64()),
            ("norm_before", pa.float64()),
            ("norm_after", pa.float64()),
            ("low_norm_effect", pa.bool_()),
            ("n_test", pa.int64()),
        ]
    ),
    "trajectories": pa.schema(
        IDENTITY
        + [
            ("epoch", pa.int64()),
            ("position", pa.int64()),
            ("norm", pa.float64()),
            ("norm_l1", pa.float64()),
            ("norm_inf", pa.float64()),
            ("test_acc", pa.float64()),
            ("train_loss", pa.float64()),
            ("ce_loss", pa.float64()),
            ("norm_loss", pa.float64()),
            ("omega", pa.float64()),
            ("alpha", pa.float64()),
            ("lr", pa.float64()),
        ]
    ),
    "runs": pa.schema(
        IDENTITY
        + [
            ("epochs", pa.int64()),
            ("ctx_init", pa.string()),
            ("beta", pa.float64()),
            ("norm_weight", pa.float64()),
            ("norm_type", pa.string()),
            ("pan_positions", pa.int64()),
            ("pan_factor", pa.float64()),
            ("omega_schedule", pa.string()),
            ("lr", pa.float64()),
            ("batch_size", pa.int64()),
            ("recipe", pa.string()),
            ("final_test_acc", pa.float64()),
            ("zero_shot_acc", pa.float64()),
            ("mean_norm", pa.float64()),
            ("checkpoint", pa.string()),
            ("seconds", pa.float64()),
        ]
    ),
}

# Rows with the same key describe the same observation; the newest one wins.
KEYS: dict[str, list[str]] = {
    "corruptions": ["run_id", "op", "position", "factor", "rep"],
    "trajectories": ["run_id", "epoch", "position"],
    "runs": ["run_id"],
}


def table_path(reports_dir: Path | str, table: str) -> Path:
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; tables: {', '.join(SCHEMAS)}")
    return Path(reports_dir) / table


def append_rows(reports_dir: Path | str, table: str, rows: list[dict] | pd.DataFrame) -> Path | None:
    """Write ``rows`` as a new part of ``table``; returns the part's path (None for no rows)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if frame.empty:
        return None
    schema = SCHEMAS[table]
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"rows for {table} lack columns {missing}")
    arrow = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    folder = table_path(reports_dir, table)
    folder.mkdir(parents=True, exist_ok=True)
    # Names sort by time, so "newest wins" needs no metadata; the uuid keeps writers apart.
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"  # pyarrow skips hidden files when reading the folder
    pq.write_table(arrow, tmp)
    os.replace(tmp, folder / name)
    return folder / name


def read_table(reports_dir: Path | str, table: str, dedupe: bool = True) -> pd.DataFrame:
    """The whole table as a DataFrame (empty, with the schema's columns, when nothing is written yet)."""
    folder = table_path(reports_dir, table)
    schema = SCHEMAS[table]
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return schema.empty_table().to_pandas()
    frame = pd.concat([pq.read_table(p, schema=schema).to_pandas() for p in parts], ignore_index=True)
    if dedupe:
        frame = frame.drop_duplicates(subset=KEYS[table], keep="last").reset_index(drop=True)
    return frame


def existing_keys(reports_dir: Path | str, table: str, run_id: str) -> set[tuple]:
    """Keys (without run_id) already written for ``run_id``: what a resumed job can skip."""
    frame = read_table(reports_dir, table)
    frame = frame[frame["run_id"] == run_id]
    columns = [c for c in KEYS[table] if c != "run_id"]
    return set(frame[columns].itertuples(index=False, name=None))
