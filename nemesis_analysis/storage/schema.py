"""The one home of run identity, table schemas and table keys (torch-free: tables load fast anywhere).

Every Parquet row carries the columns of :class:`RunIdentity`. Each table has a key: rows with the same
key describe the same observation and the newest one wins. A corruption is identified within its run by
:data:`CORRUPTION_KEY`. A column added to a table later declares, in :data:`COLUMN_DEFAULTS`, the value
it takes in parts written before it existed, so old reports keep loading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import pyarrow as pa

from nemesis_analysis.choices import plain

# The version of the embedded tiny CLIP's weights (``--pretrained embedded``): it enters the run id of every
# run on them, so results on older weights are never reused as if they came from these. 2: pretraining on
# a fixed thread count, with the token-level term.
TINY_WEIGHTS_VERSION = 2


@dataclass(frozen=True)
class RunIdentity:
    """The columns that identify the trained prompt a row belongs to (every table but ``jobs`` carries them)."""

    run_id: str  # hash of the run's resolved config (or of an imported prompt's tensor file)
    dataset: str
    backbone: str
    pretrained: str
    shots: int
    seed: int
    regularizer: str  # coop, nemesis-pun, nemesis-pan or nemesis-beta<B> (parts written before it: "method")
    n_ctx: int  # context vectors M, as trained (ctx_init fixes it from the words)
    csc: bool  # class-specific context
    class_token_position: str  # end, middle or front
    precision: str  # fp32, amp or fp16 ("" when unknown)
    prompt_method: str = "coop"  # coop, cocoop, plot or kgcoop (parts written before it read "coop")

    def __post_init__(self) -> None:
        # Rows come from configs (enums) and from Parquet (numpy scalars): store plain Python values.
        for f in fields(self):
            value = plain(getattr(self, f.name))
            value = {"str": str, "int": int, "bool": bool}[f.type](value)
            object.__setattr__(self, f.name, value)

    def as_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping) -> RunIdentity:
        """The identity of a table row (or any mapping with at least the identity columns)."""
        missing = [name for name in IDENTITY_COLUMNS if name not in row and column_default("*", name) is None]
        if missing:
            raise ValueError(f"a row lacks the identity columns {missing}")
        return cls(**{name: row.get(name, column_default("*", name)) for name in IDENTITY_COLUMNS})


IDENTITY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunIdentity))
_ARROW = {"str": pa.string(), "int": pa.int64(), "bool": pa.bool_()}
IDENTITY_SCHEMA: list[tuple[str, pa.DataType]] = [(f.name, _ARROW[f.type]) for f in fields(RunIdentity)]

# One corruption within its run and class subset (``eval_classes``): (op, prompt_index, position, factor, rep).
# A position is a (prompt, position) pair: prompt_index is 0 for single-prompt methods (CoOp) and for the
# baseline row ("none", 0, -1, 1.0, 0).
# ``layer`` (last, so the older keys keep their order) is the prompted layer of deep-prompt methods (MaPLe), 0
# otherwise and in parts written before it existed.
CORRUPTION_KEY: tuple[str, ...] = ("op", "prompt_index", "position", "factor", "rep", "layer")
BASELINE_KEY: tuple = ("none", -1, 1.0, 0)  # the baseline Corruption (op, position, factor, rep)

SCHEMAS: dict[str, pa.Schema] = {
    "corruptions": pa.schema(
        IDENTITY_SCHEMA
        + [
            ("op", pa.string()),  # none, rescale or replace
            ("prompt_index", pa.int64()),  # which of the method's prompts (PLOT: 0..N-1); 0 otherwise
            ("position", pa.int64()),  # 0-based context position within the prompt; -1 for the baseline
            ("factor", pa.float64()),  # rescale factor or replace std; 1.0 for the baseline
            ("rep", pa.int64()),  # replace draw; 0 otherwise
            ("acc", pa.float64()),  # top-1 test accuracy, percent
            ("acc_original", pa.float64()),  # the uncorrupted prompt's accuracy, percent
            ("delta", pa.float64()),  # acc - acc_original, points
            ("norm_before", pa.float64()),  # L2 norm of the position before (baseline: mean over positions)
            ("norm_after", pa.float64()),
            ("low_norm_effect", pa.bool_()),  # norm_after < norm_before and delta > 0
            ("n_test", pa.int64()),
            ("eval_classes", pa.string()),  # all; base or new for a base2new run (each its own accuracy)
            # Paired counts against the uncorrupted prompt (float64: NaN in parts written before them).
            ("n_gained", pa.float64()),  # test images the variant gets right and the uncorrupted prompt wrong
            ("n_lost", pa.float64()),  # test images the uncorrupted prompt gets right and the variant wrong
            ("p_value", pa.float64()),  # exact two-sided McNemar test of n_gained vs n_lost (1 when both are 0)
            ("layer", pa.int64()),  # prompted layer (MaPLe's deep prompts: 0..J-1); 0 for input-only methods
            ("invisible", pa.bool_()),  # the variant's scores equal the original's to float precision
        ]
    ),
    "trajectories": pa.schema(
        IDENTITY_SCHEMA
        + [
            ("epoch", pa.int64()),
            ("prompt_index", pa.int64()),  # which of the method's prompts (PLOT: 0..N-1); 0 otherwise
            ("position", pa.int64()),
            ("norm", pa.float64()),
            ("norm_l1", pa.float64()),
            ("norm_inf", pa.float64()),
            ("test_acc", pa.float64()),
            ("train_loss", pa.float64()),
            ("ce_loss", pa.float64()),
            ("norm_loss", pa.float64()),
            ("omega", pa.float64()),
            ("alpha", pa.float64()),  # share of the epoch's PAN steps that marked the position (NaN without PAN)
            ("lr", pa.float64()),
            ("layer", pa.int64()),  # prompted layer (MaPLe's deep prompts: 0..J-1); 0 for input-only methods
        ]
    ),
    "runs": pa.schema(
        IDENTITY_SCHEMA
        + [
            ("epochs", pa.int64()),
            ("ctx_init", pa.string()),
            ("beta", pa.float64()),
            ("norm_weight", pa.float64()),  # the norm-loss weight (flag --alpha)
            ("norm_type", pa.string()),
            ("pan_positions", pa.int64()),
            ("pan_factor", pa.float64()),
            ("omega_schedule", pa.string()),
            ("lr", pa.float64()),
            ("batch_size", pa.int64()),
            ("recipe", pa.string()),
            ("recipe_changes", pa.string()),  # the settings the recipe changed, e.g. "optim.drop_last=True, ..."
            ("final_test_acc", pa.float64()),
            ("zero_shot_acc", pa.float64()),
            ("mean_norm", pa.float64()),
            ("checkpoint", pa.string()),
            ("seconds", pa.float64()),
            ("protocol", pa.string()),  # fewshot, base2new, dg or crossdataset
        ]
    ),
    "evaluations": pa.schema(
        IDENTITY_SCHEMA
        + [
            ("protocol", pa.string()),  # fewshot, base2new, dg or crossdataset
            ("eval_dataset", pa.string()),  # the dataset whose test split was evaluated
            ("eval_classes", pa.string()),  # all, base or new
            ("acc", pa.float64()),  # top-1 test accuracy, percent
            ("n_test", pa.int64()),
            ("n_classes", pa.int64()),
        ]
    ),
    # One row per state change of a study job (nemesis study run); the newest row of a job is its state.
    "jobs": pa.schema(
        [
            ("job_id", pa.string()),  # encode:..., train:<run_id>, corrupt:<run_id>:<grid>, evaluate:...
            ("kind", pa.string()),  # encode, train, corrupt or evaluate
            ("run_id", pa.string()),  # "" for encode jobs
            ("dataset", pa.string()),
            ("study", pa.string()),
            ("state", pa.string()),  # running, done, failed, lost (worker died; retried) or blocked
            ("attempts", pa.int64()),
            ("seconds", pa.float64()),  # time the job ran on its worker
            ("host", pa.string()),  # the worker's host (the driver's on running and blocked rows)
            ("error", pa.string()),  # one line; "" unless failed, lost or blocked
            ("updated", pa.float64()),  # unix time of the row; the newest row wins
        ]
    ),
}

# Rows with the same key describe the same observation; the newest one wins.
KEYS: dict[str, tuple[str, ...]] = {
    "corruptions": ("run_id", *CORRUPTION_KEY, "eval_classes"),  # base and new rows of one variant are two rows
    "trajectories": ("run_id", "epoch", "prompt_index", "position", "layer"),
    "runs": ("run_id",),
    "evaluations": ("run_id", "eval_dataset", "eval_classes"),
    "jobs": ("job_id",),
}

# The value a column takes in rows made before the column existed. One declaration, applied in two places
# through :func:`column_default`: store.read_table fills it into old Parquet parts, and
# :func:`with_column_defaults` into DataFrames built without it (appended rows, frames handed to analysis).
# A column added to a table later MUST be declared here (per table, or for every table under "*")
# so that old reports keep loading; a column without an entry reads as null (NaN, None).
COLUMN_DEFAULTS: dict[str, dict[str, object]] = {
    "*": {"protocol": "fewshot", "prompt_method": "coop", "prompt_index": 0},
    "corruptions": {
        "eval_classes": "all",
        "n_gained": math.nan,
        "n_lost": math.nan,
        "p_value": math.nan,
        "layer": 0,
        "invisible": False,
    },
    "trajectories": {"layer": 0},
    "runs": {"recipe_changes": ""},
}


# Columns renamed since parts were first written: {current name: former name}. A part that has the former
# column and not the current one is read with the former renamed (store.read_table), so old reports load.
RENAMED_COLUMNS: dict[str, str] = {"regularizer": "method"}


def column_default(table: str, column: str) -> object:
    """The value ``column`` of ``table`` takes in rows written before the column existed (None: null)."""
    declared = COLUMN_DEFAULTS.get(table, {})
    if column in declared:
        return declared[column]
    return COLUMN_DEFAULTS["*"].get(column)


def with_column_defaults(table: str, frame):
    """``frame`` (a DataFrame of ``table`` rows) with each missing column that declares a default filled with it.

    Rows built without a newer column (callers not yet updated, frames read from old Parquet with plain
    pandas) keep writing and analysing; a missing column without a declared default stays missing.
    """
    missing = {
        name: value
        for name in schema_of(table).names
        if name not in frame.columns and (value := column_default(table, name)) is not None
    }
    return frame.assign(**missing) if missing else frame


TABLES: tuple[str, ...] = tuple(SCHEMAS)


def columns(table: str) -> list[str]:
    """The column names of ``table`` in schema order."""
    return list(schema_of(table).names)


def schema_of(table: str) -> pa.Schema:
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; tables: {', '.join(SCHEMAS)}")
    return SCHEMAS[table]
