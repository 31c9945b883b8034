"""Pure corruption operations on a learned context, the corruption grid, and list parsers for the CLI.

The corruptions of the paper (Fu et al., ICLR 2024): RESCALE at position i sets ``p_i <- factor * p_i``; REPLACE at i sets
``p_i <- N(0, std^2 I_d)`` with d the context width (std 0 gives the zero vector). With class-specific
context (CSC, shape ``(num_classes, n_ctx, width)``) position i is corrupted in every class.

Every replace draw is seeded by :func:`replace_seed` from (run, position, std, rep), so any row of the
corruption table can be recomputed alone, whatever order the grid is evaluated in.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nemesis_analysis.choices import CorruptionOp
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.storage.schema import BASELINE_KEY

OPS: tuple[str, ...] = tuple(op.value for op in CorruptionOp)  # none, rescale, replace
GRID_OPS: tuple[str, ...] = (CorruptionOp.RESCALE.value, CorruptionOp.REPLACE.value)

DEFAULT_FACTORS: tuple[float, ...] = (0, 0.001, 0.01, 0.1, 0.5, 0.9, 1.1, 2, 5, 10)
DEFAULT_STDS: tuple[float, ...] = (0, 1e-4, 1e-3, 1e-2, 0.02, 0.05, 0.1, 0.5, 1)
DEFAULT_REPS: int = 3


def _check_position(ctx: Tensor, position: int) -> None:
    if ctx.dim() not in (2, 3):
        raise ValueError(f"ctx must be (n_ctx, width) or (num_classes, n_ctx, width), got shape {tuple(ctx.shape)}")
    n_ctx = ctx.shape[-2]
    if not 0 <= position < n_ctx:
        raise ValueError(f"position {position} is outside 0..{n_ctx - 1} (n_ctx={n_ctx})")


def rescale(ctx: Tensor, position: int, factor: float) -> Tensor:
    """Return a copy of ``ctx`` with position ``position`` multiplied by ``factor`` (every class for CSC)."""
    _check_position(ctx, position)
    out = ctx.clone()
    out[..., position, :] = ctx[..., position, :] * factor  # (width,) or (num_classes, width)
    return out


def replace(ctx: Tensor, position: int, std: float, generator: torch.Generator) -> Tensor:
    """Return a copy of ``ctx`` whose position ``position`` is a fresh draw from ``N(0, std^2 I_d)``.

    d = ``ctx.shape[-1]``. For CSC each class gets its own independent draw. The noise is drawn in
    float32 on the generator's device (CPU by default), so a seed gives the same vector whatever the
    dtype or device of ``ctx``, then cast to them. ``std == 0`` writes exact zeros.
    """
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"std must be a finite number >= 0, got {std}")
    _check_position(ctx, position)
    out = ctx.clone()
    target_shape = out[..., position, :].shape  # (width,) or (num_classes, width)
    if std == 0:
        out[..., position, :] = 0
    else:
        noise = torch.randn(target_shape, generator=generator, dtype=torch.float32, device=generator.device)
        out[..., position, :] = (noise * std).to(dtype=ctx.dtype, device=ctx.device)
    return out


def replace_seed(run_id: str, position: int, std: float, rep: int) -> int:
    """A deterministic 63-bit seed for one replace draw, from sha256 of ``run|position|repr(std)|rep``.

    ``repr(float(std))`` makes ``0`` and ``0.0`` the same key while keeping distinct floats distinct.
    """
    text = f"{run_id}|{int(position)}|{float(std)!r}|{int(rep)}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits torch's manual_seed and int64 columns


@dataclass(frozen=True)
class Corruption:
    """One cell of the corruption grid.

    op:       "none" (the uncorrupted baseline), "rescale" or "replace".
    position: the context position, 0..n_ctx-1; -1 for "none".
    factor:   the scale for "rescale", the std for "replace", and 1.0 for "none" (the identity scale).
    rep:      the repetition index of a "replace" draw; 0 for the other ops.
    """

    op: str
    position: int
    factor: float
    rep: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.op, CorruptionOp):  # rows and keys hold the plain string
            object.__setattr__(self, "op", self.op.value)
        if self.op == CorruptionOp.NONE:
            if self.position != -1 or self.factor != 1.0 or self.rep != 0:
                raise ConfigError(
                    f"Corruption('none') must have position -1, factor 1.0, rep 0; got {self.position}, "
                    f"{self.factor}, {self.rep}"
                )
        elif self.op == CorruptionOp.RESCALE:
            if self.position < 0 or self.rep != 0:
                raise ConfigError(
                    f"Corruption('rescale') needs position >= 0 and rep 0; got {self.position}, {self.rep}"
                )
        elif self.op == CorruptionOp.REPLACE:
            if self.position < 0 or self.rep < 0 or self.factor < 0:
                raise ConfigError(
                    f"Corruption('replace') needs position >= 0, std >= 0 and rep >= 0; got {self.position}, "
                    f"{self.factor}, {self.rep}"
                )
        else:
            raise ConfigError(f"unknown corruption op {self.op!r}; choose one of {', '.join(OPS)}")

    def key(self) -> tuple[str, int, float, int]:
        """The identifying tuple ``(op, position, factor, rep)`` used to dedupe and resume table rows."""
        return (self.op, self.position, float(self.factor), self.rep)


NO_CORRUPTION = Corruption(*BASELINE_KEY)


def _dedupe(values: Iterable, cast: type) -> list:
    """Keep the first occurrence of each value, in order (``0`` and ``0.0`` are the same value)."""
    seen: set = set()
    out: list = []
    for value in values:
        value = cast(value)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def expand_grid(
    n_ctx: int,
    ops: Sequence[str] = GRID_OPS,
    positions: Sequence[int | range] | None = None,
    factors: Sequence[float] = DEFAULT_FACTORS,
    stds: Sequence[float] = DEFAULT_STDS,
    reps: int = DEFAULT_REPS,
) -> list[Corruption]:
    """Every corruption to evaluate: the baseline ``Corruption("none", -1, 1.0, 0)`` first, then, for each
    op in the given order, each position, each factor (rescale) or std (replace), and for replace each rep.

    ``positions=None`` means all of ``0..n_ctx-1``; items may be ranges (checked against n_ctx before they
    are expanded, so a huge range fails at once). Repeated ops, positions, factors and stds are kept once.
    Raises :class:`ConfigError` on an invalid or empty grid.
    """
    if n_ctx < 1:
        raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
    op_list = _dedupe(ops, str)
    if not op_list:
        raise ConfigError(f"no corruption ops selected; pass at least one of {', '.join(GRID_OPS)}")
    for op in op_list:
        if op not in GRID_OPS:
            raise ConfigError(f"unknown corruption op {op!r}; choose from {', '.join(GRID_OPS)}")
    position_list = list(range(n_ctx)) if positions is None else _dedupe(check_positions(positions, n_ctx), int)
    if reps < 1:
        raise ConfigError(f"reps must be >= 1, got {reps}; use 1 for a single draw per replace cell")

    grid: list[Corruption] = [NO_CORRUPTION]
    for op in op_list:
        if op == CorruptionOp.RESCALE:
            factor_list = _dedupe(factors, float)
            if not factor_list:
                raise ConfigError("rescale is selected but no factors are given; pass factors or drop rescale")
            for factor in factor_list:
                if not math.isfinite(factor):
                    raise ConfigError(f"rescale factor {factor} is not finite; pass finite factors")
            grid.extend(Corruption(CorruptionOp.RESCALE.value, p, f, 0) for p in position_list for f in factor_list)
        elif op == CorruptionOp.REPLACE:
            std_list = _dedupe(stds, float)
            if not std_list:
                raise ConfigError("replace is selected but no stds are given; pass stds or drop replace")
            for std in std_list:
                if not (math.isfinite(std) and std >= 0):
                    raise ConfigError(f"replace std {std} is invalid; stds must be finite and >= 0")
            grid.extend(
                Corruption(CorruptionOp.REPLACE.value, p, s, r)
                for p in position_list
                for s in std_list
                for r in range(reps)
            )
        else:
            raise ConfigError(f"unknown corruption op {op!r}; choose from {', '.join(GRID_OPS)}")
    return grid


def check_positions(positions: Sequence[int | range], n_ctx: int) -> list[int]:
    """The positions as a list of ints, after checking every item (int or range) lies in 0..n_ctx-1.

    Ranges are checked by their ends before they are expanded, so ``0-100000000`` fails with one line.
    """
    if not positions:
        raise ConfigError("no positions selected; pass at least one position or omit the option for all")
    for item in positions:
        if isinstance(item, range):
            if len(item) == 0:
                continue
            low, high = min(item[0], item[-1]), max(item[0], item[-1])
            bad = low if low < 0 else (max(low, n_ctx) if high >= n_ctx else None)
        else:
            bad = int(item) if not 0 <= int(item) < n_ctx else None
        if bad is not None:
            raise ConfigError(
                f"position {bad} is outside 0..{n_ctx - 1}; pick positions below {n_ctx}, the prompt's number of "
                "positions (flat: PLOT's N prompts of n_ctx vectors each are positions 0..N*n_ctx-1)"
            )
    out = [p for item in positions for p in (item if isinstance(item, range) else [int(item)])]
    if not out:
        raise ConfigError("no positions selected; pass at least one position or omit the option for all")
    return out


@dataclass(frozen=True)
class GridSpec:
    """What to corrupt, before it is expanded against a prompt's n_ctx (see :func:`expand_grid`)."""

    ops: tuple[str, ...] = GRID_OPS
    positions: tuple[int | range, ...] | None = None  # None: every position
    factors: tuple[float, ...] = DEFAULT_FACTORS  # rescale factors
    stds: tuple[float, ...] = DEFAULT_STDS  # replace stds
    reps: int = DEFAULT_REPS  # draws per replace cell

    def expand(self, n_ctx: int) -> list[Corruption]:
        """The grid for a prompt with ``n_ctx`` positions; positions are checked before expansion."""
        return expand_grid(n_ctx, self.ops, self.positions, self.factors, self.stds, self.reps)

    @classmethod
    def parse(
        cls,
        ops: str = ",".join(GRID_OPS),
        positions: str | None = None,
        factors: str | None = None,
        stds: str | None = None,
        reps: int = DEFAULT_REPS,
    ) -> GridSpec:
        """A spec from the CLI's texts (``--ops rescale,replace --positions 0,3,5-7 --factors 0,0.5``)."""
        return cls(
            ops=tuple(item.strip() for item in ops.split(",") if item.strip()),
            positions=None if positions is None else parse_position_ranges(positions, "--positions"),
            factors=DEFAULT_FACTORS if factors is None else parse_float_list(factors, "--factors"),
            stds=DEFAULT_STDS if stds is None else parse_float_list(stds, "--stds"),
            reps=reps,
        )


def corrupt_context(ctx: Tensor, corruption: Corruption, run_id: str) -> Tensor:
    """Apply one :class:`Corruption` to ``ctx`` (a new tensor, same shape); replace draws are seeded
    by :func:`replace_seed` so the result depends only on (ctx, corruption, run_id)."""
    if corruption.op == CorruptionOp.NONE:
        return ctx.clone()
    elif corruption.op == CorruptionOp.RESCALE:
        return rescale(ctx, corruption.position, corruption.factor)
    elif corruption.op == CorruptionOp.REPLACE:
        seed = replace_seed(run_id, corruption.position, corruption.factor, corruption.rep)
        generator = torch.Generator().manual_seed(seed)
        return replace(ctx, corruption.position, corruption.factor, generator)
    else:
        raise ConfigError(f"unknown corruption op {corruption.op!r}; choose one of {', '.join(OPS)}")


def apply_corruptions(ctx: Tensor, corruptions: Sequence[Corruption], run_id: str) -> Tensor:
    """Stack of corrupted contexts, shape ``(len(corruptions), *ctx.shape)``, in the given order.

    The stack holds every variant at once: callers evaluating a large grid (especially with CSC) pass it
    in chunks to bound memory.
    """
    if not corruptions:
        return ctx.new_empty((0, *ctx.shape))
    return torch.stack([corrupt_context(ctx, c, run_id) for c in corruptions])  # (N, [num_classes,] n_ctx, width)


_INT_RE = re.compile(r"^\d+$")
_RANGE_RE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def _split_items(text: str, name: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"{name}: {text!r} is not a comma-separated list; write e.g. 0,0.1,1 with no empty items")
    return items


def parse_float_list(text: str, name: str = "list") -> tuple[float, ...]:
    """Parse ``"0,0.1,1"`` into ``(0.0, 0.1, 1.0)``; raises :class:`ConfigError` naming ``name`` on bad text.

    Order and repeats are kept (the grid dedupes). NaN and infinities are rejected.
    """
    values: list[float] = []
    for item in _split_items(text, name):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not a number; write e.g. 0,0.1,1") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name}: {item!r} is not finite; use finite numbers")
        values.append(value)
    return tuple(values)


def parse_position_ranges(text: str, name: str = "list") -> tuple[int | range, ...]:
    """Parse ``"0,3,5-7"`` into ``(0, 3, range(5, 8))`` without expanding the ranges: non-negative integers
    and inclusive ranges ``a-b`` with ``a <= b``. Raises :class:`ConfigError` naming ``name`` on bad text."""
    values: list[int | range] = []
    for item in _split_items(text, name):
        if _INT_RE.match(item):
            values.append(int(item))
            continue
        match = _RANGE_RE.match(item)
        if match is None:
            raise ConfigError(f"{name}: {item!r} is not a non-negative integer or a range; write e.g. 0,3,5-7")
        start, stop = int(match.group(1)), int(match.group(2))
        if start > stop:
            raise ConfigError(f"{name}: range {item!r} runs backwards; write it as {stop}-{start}")
        values.append(range(start, stop + 1))
    return tuple(values)


def parse_int_list(text: str, name: str = "list") -> tuple[int, ...]:
    """Parse ``"0,3,5-7"`` into ``(0, 3, 5, 6, 7)`` (see :func:`parse_position_ranges`). Order and repeats
    are kept."""
    items = parse_position_ranges(text, name)
    return tuple(p for item in items for p in (item if isinstance(item, range) else [item]))
