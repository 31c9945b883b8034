"""The corruption sweep of one prompt: grid, resume from the table, rows, and the summary of what it found.

Every finished chunk becomes its own Parquet part of ``reports/corruptions``, so a killed sweep loses at
most the chunk in flight, and a rerun computes only the keys :data:`~nemesis_analysis.storage.schema.CORRUPTION_KEY`
missing for the run. Columns follow ``schema.SCHEMAS["corruptions"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from nemesis_analysis import protocols
from nemesis_analysis.choices import CorruptionOp, EvalClasses
from nemesis_analysis.clip.encoding import fp32_text_passes
from nemesis_analysis.clip.features import local_image_features
from nemesis_analysis.corruption.engine import (
    accuracy_of,
    auto_chunk,
    paired_counts,
    predict_variants,
    prefix_cache,
    variant_norms,
    variant_outcomes,
)
from nemesis_analysis.corruption.ops import NO_CORRUPTION, Corruption, apply_corruptions
from nemesis_analysis.devices import host_features
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.evaluate import restrict_to_classes
from nemesis_analysis.methods.base import PromptMethod
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.session import Session
from nemesis_analysis.stats import bh_q_values, mcnemar_p
from nemesis_analysis.storage import store
from nemesis_analysis.storage.schema import CORRUPTION_KEY, SCHEMAS, RunIdentity
from nemesis_analysis.training.nemesis import position_norms

SIGNIFICANCE_FDR = 0.05  # the false-discovery rate of SweepSummary.num_significant

TABLE = "corruptions"
NONE, RESCALE, REPLACE = (op.value for op in CorruptionOp)


@dataclass
class SweepSummary:
    """What a sweep found, over every row of the grid for this run (new and previously written)."""

    run_id: str
    acc_original: float  # uncorrupted top-1 accuracy, percent
    n_test: int
    num_corruptions: int  # corrupted variants in the grid (the "none" baseline excluded)
    rows_written: int  # rows appended by this call (0 on a complete rerun)
    rows_reused: int  # grid rows that were already in the table
    best: dict | None  # the corrupted row with the highest accuracy (first in grid order on ties)
    worst: dict | None  # the corrupted row with the lowest accuracy
    num_norm_reducing: int  # corruptions with norm_after < norm_before
    num_low_norm_effect: int  # ... of which raised accuracy (delta > 0): the Low-Norm Effect
    chunk: int  # variants per text pass
    seconds: float
    rows: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # the grid's rows, grid order
    stopped: bool = False  # should_stop ended the sweep before the grid was complete
    num_significant: int = 0  # Low-Norm Effects whose McNemar p-value survives BH over the grid's rows (q < 0.05)
    eval_classes: str = EvalClasses.ALL.value  # the class subset evaluated (base2new: base or new)
    num_invisible: int = 0  # corruptions whose scores equal the original's (left out of the two counts above)


@dataclass
class EvalSet:
    """The test split's cached image features on the model's device, their labels, and local features on the host."""

    features: Tensor  # (n_test, embed)
    labels: Tensor  # (n_test,)
    local_features: Tensor | None = None  # (n_test, locations, embed) on the host, for methods that score them (PLOT)
    original: Tensor | None = None  # (n_test, classes) scores of the unchanged prompt, set by the sweep
    baseline_correct: Tensor | None = None  # (n_test,) bool: the uncorrupted prompt's correct images (paired counts)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


@fp32_text_passes()  # like with like: the plain baseline and the prefix-cached variants round alike
def run_corruption_sweep(
    session: Session,
    method: PromptMethod,
    slot_value: Tensor,
    identity: RunIdentity,
    grid: Sequence[Corruption],
    *,
    chunk: int | None = None,
    memory_budget: int | None = None,
    reuse_prefix: bool = True,
    on_chunk: Callable[[int, list[dict]], None] | None = None,
    classes: EvalClasses | str = EvalClasses.ALL,
    max_test: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> SweepSummary:
    """Evaluate every corruption in ``grid`` on the test split of ``identity.dataset`` and append the rows.

    ``slot_value``: the trained position slot (CoOp's ``ctx``, (n_ctx, width) or (classes, n_ctx, width)).
    ``identity.run_id`` also seeds the replace draws. ``chunk``: variants per text pass (default: from
    ``memory_budget``). ``reuse_prefix``: compute each variant from its corrupted position on, reusing the
    unchanged prompt's states before it (exact under the causal mask). ``on_chunk(index, rows)`` is called
    after each chunk's part is written. ``classes``: the class subset to evaluate (base2new's base or new;
    ``method`` must be built over that subset's class names), recorded in ``eval_classes``. ``max_test``:
    evaluate a seeded, class-stratified subsample of at most this many of the subset's test images
    (:func:`stratified_subsample`; ``n_test`` records its size, and a rerun with another size is refused
    rather than mixing rows of different test sets). Text passes run in fp32 (:func:`fp32_text_passes`) under
    ``amp`` too (fp16 models stay half), so an identity corruption has delta 0 in fp32 and amp runs.
    ``should_stop(index)``, asked before each chunk, returning True ends the sweep there (every finished
    chunk is saved; the summary has ``stopped=True``). The run's missing rows are found and appended under
    one :func:`store.claim`, so two processes sweeping one run never compute or write a key twice.

    ``norm_before``/``norm_after`` are the L2 norms of the corrupted position before and after (CSC:
    averaged over classes, as :func:`nemesis.position_norms`). The baseline row (op "none", position -1,
    factor 1.0) has no position: both columns hold the mean of the position norms, so it never counts as
    norm-reducing. The uncorrupted accuracy is recomputed on every call (one text pass); the rows already
    written for this run are skipped.
    """
    started = time.perf_counter()
    slot_value = check_slot(slot_value, identity, method)
    chunk = resolve_chunk(method, chunk, memory_budget)
    classes = EvalClasses(classes).value
    test, acc_original = baseline_test_set(session, method, slot_value, identity.dataset, classes, max_test)
    base_row = {**identity.as_row(), "acc_original": acc_original, "n_test": test.size, "eval_classes": classes}
    base_norms = position_norms(slot_value)  # (n_positions,)
    pairs = position_keys(method)  # flat position -> (prompt_index, position, layer)

    with store.claim(session.reports_dir, TABLE, identity.run_id):  # held to the end: no key is written twice
        previous = previous_rows(session, identity.run_id, classes)
        check_same_test_set(previous, test.size, identity.run_id)
        done = set(previous[list(CORRUPTION_KEY)].itertuples(index=False, name=None))
        pending = [] if row_key(NO_CORRUPTION, pairs) in done else [baseline_row(base_row, base_norms)]
        todo = pending_corruptions(grid, done, pairs)
        cache = prefix_cache(method, slot_value, reuse_prefix) if todo else None  # a complete rerun: no text pass
        chunks = [todo[start : start + chunk] for start in range(0, len(todo), chunk)]
        with progress_bar(f"corrupting {identity.run_id}", total=len(todo), enabled=session.progress) as advance:
            new_rows, stopped = [], False
            for index, part in enumerate(chunks):
                if should_stop is not None and should_stop(index):
                    stopped = True
                    break
                rows = evaluate_chunk(method, cache, slot_value, part, identity.run_id, test, base_row, base_norms,
                                      pairs)  # fmt: skip
                advance(len(part), best=max(row["acc"] for row in rows))
                rows, pending = pending + rows, []
                store.append_rows(session.reports_dir, TABLE, rows)  # only missing keys, found under the claim
                new_rows.extend(rows)
                if on_chunk is not None:
                    on_chunk(index, rows)
        if pending and not stopped:  # nothing left to corrupt, but the baseline row was missing
            store.append_rows(session.reports_dir, TABLE, pending)
            new_rows.extend(pending)
    frame = grid_rows(previous, new_rows, grid, pairs)
    seconds = time.perf_counter() - started
    summary = summarise(frame, identity.run_id, acc_original, test.size, len(new_rows), chunk, seconds)
    summary.stopped = stopped
    summary.eval_classes = classes
    return summary


def baseline_test_set(
    session: Session, method: PromptMethod, slot_value: Tensor, dataset: str, classes: str, max_test: int | None
) -> tuple[EvalSet, float]:
    """The sweep's test set with the unchanged prompt's scores and per-image correctness, and its accuracy."""
    test = load_test_set(session, method, dataset, classes, max_test)
    test.original = original_scores(method, slot_value, test)
    predictions = test.original.argmax(-1).cpu()[None]
    test.baseline_correct = predictions[0] == test.labels
    return test, float(accuracy_of(predictions, test.labels)[0])


@torch.no_grad()
def original_scores(method: PromptMethod, slot_value: Tensor, test: EvalSet) -> Tensor:
    """Scores (n_test, classes) of the unchanged prompt: the baseline accuracy and what invisibility compares to."""
    device = method.device  # PLOT's local features stay where they are: it moves chunks
    return method.variant_scores(slot_value[None].to(device), test.features.to(device), test.local_features)[0]


def position_keys(method: PromptMethod) -> list[tuple[int, int, int]]:
    """(prompt_index, position, layer) of each flat position of the method's position slot."""
    return [(*pair, layer) for pair, layer in zip(method.position_pairs(), method.position_layers())]


COUNT_COLUMNS: tuple[str, ...] = ("n_gained", "n_lost", "p_value")


def fill_counts(
    session: Session,
    method: PromptMethod,
    slot_value: Tensor,
    identity: RunIdentity,
    classes: EvalClasses | str = EvalClasses.ALL,
    chunk: int | None = None,
) -> int:
    """Fill ``n_gained``, ``n_lost`` and ``p_value`` of this run's rows written before those columns existed
    (NaN there); returns the rows filled. Their predictions are recomputed on the rows' own test set (the
    ``n_test`` they record) and each stored row is updated in place (:meth:`store.Claim.update`), so no key
    is added or duplicated. Refuses when a recomputed accuracy differs from the stored one: the counts would
    not belong to that row."""
    slot_value = check_slot(slot_value, identity, method)
    chunk = resolve_chunk(method, chunk, None)
    classes = EvalClasses(classes).value
    with store.claim(session.reports_dir, TABLE, identity.run_id) as claim:
        previous = previous_rows(session, identity.run_id, classes)
        todo = previous[previous[list(COUNT_COLUMNS)].isna().any(axis=1)]
        if todo.empty:
            return 0
        test = load_test_set(session, method, identity.dataset, classes, int(todo["n_test"].max()))
        check_same_test_set(previous, test.size, identity.run_id)
        predictions = predict_variants(method, slot_value[None], test.features, test.local_features)
        test.baseline_correct = predictions[0] == test.labels
        base_row = {**identity.as_row(), "acc_original": float(accuracy_of(predictions, test.labels)[0]),
                    "n_test": test.size, "eval_classes": classes}  # fmt: skip
        corruptions = corruptions_of_rows(todo, method.position_pairs())
        rows = [baseline_row(base_row, position_norms(slot_value))] if any(c.op == NONE for c in corruptions) else []
        todo_corrupted = [c for c in corruptions if c.op != NONE]
        cache = prefix_cache(method, slot_value) if todo_corrupted else None
        for start in range(0, len(todo_corrupted), chunk):
            rows += evaluate_chunk(method, cache, slot_value, todo_corrupted[start : start + chunk], identity.run_id,
                                   test, base_row, position_norms(slot_value), method.position_pairs())  # fmt: skip
        filled = pd.DataFrame(rows)
        check_same_accuracy(todo, filled, identity.run_id)
        return claim.update(filled, list(COUNT_COLUMNS))


def corruptions_of_rows(rows: pd.DataFrame, pairs: Sequence[tuple[int, int]]) -> list[Corruption]:
    """The corruptions (flat positions) of table rows; ``pairs`` maps flat positions to (prompt_index, position)."""
    flat = {(int(n), int(p)): i for i, (n, p) in enumerate(pairs)}
    out = []
    columns = ["op", "prompt_index", "position", "factor", "rep"]
    for op, prompt_index, position, factor, rep in rows[columns].itertuples(index=False, name=None):
        if op == NONE:
            out.append(NO_CORRUPTION)
        elif (int(prompt_index), int(position)) not in flat:
            raise ConfigError(f"a stored row corrupts prompt {prompt_index} position {position}, which the run lacks")
        else:
            out.append(Corruption(op, flat[(int(prompt_index), int(position))], float(factor), int(rep)))
    return out


def check_same_accuracy(stored: pd.DataFrame, recomputed: pd.DataFrame, run_id: str) -> None:
    """Recomputed rows must reproduce the stored accuracies, else their counts would describe other predictions."""
    key = list(CORRUPTION_KEY)
    joined = stored[[*key, "acc"]].merge(recomputed[[*key, "acc"]], on=key, suffixes=("", "_now"))
    differs = (joined["acc"] - joined["acc_now"]).abs() > 1e-9
    if differs.any():
        raise ModelError(
            f"run {run_id}: {int(differs.sum())} of {len(joined)} stored rows no longer reproduce their accuracy "
            "(another model, device or precision?); sweep again into a fresh --reports folder"
        )


def check_slot(slot_value: Tensor, identity: RunIdentity, method: PromptMethod | None = None) -> Tensor:
    """The slot as fp32 on the CPU, after checking it matches the identity's n_ctx (and csc for CoOp-shaped
    slots) and, when ``method`` is given, the method's position tensor; a method's saved layout (PLOT's
    (N, n_ctx, width)) is returned in its flat position layout (:meth:`PromptMethod.positions_of`)."""
    slot_value = slot_value.detach().float().cpu()
    if method is not None:
        slot_value = method.positions_of(slot_value)
        expected = tuple(method.position_tensor().shape)
        n_ctx = getattr(method, "n_ctx", slot_value.shape[-2])  # context vectors per prompt
        if tuple(slot_value.shape) != expected or identity.n_ctx != n_ctx:
            raise ModelError(
                f"context of shape {tuple(slot_value.shape)} does not match method {method.name}'s slot {expected} "
                f"(run n_ctx={identity.n_ctx})"
            )
        return slot_value
    if slot_value.dim() not in (2, 3):
        raise ModelError(
            f"a context must be (n_ctx, width) or (num_classes, n_ctx, width), got {tuple(slot_value.shape)}"
        )
    if identity.n_ctx != slot_value.shape[-2] or identity.csc != (slot_value.dim() == 3):
        raise ModelError(
            f"context of shape {tuple(slot_value.shape)} does not match the run's n_ctx={identity.n_ctx}, "
            f"csc={identity.csc}"
        )
    return slot_value


def resolve_chunk(method: PromptMethod, chunk: int | None, memory_budget: int | None) -> int:
    chunk = int(chunk) if chunk else auto_chunk(method, memory_budget)
    if chunk < 1:
        raise ConfigError(f"chunk (variants per text pass) must be at least 1, got {chunk}")
    return chunk


def load_test_set(
    session: Session,
    method: PromptMethod,
    dataset_name: str,
    classes: EvalClasses | str = EvalClasses.ALL,
    max_test: int | None = None,
) -> EvalSet:
    """The test split's features (encoded once, from the session's feature cache) on the model's device;
    for a class subset, its images relabelled from 0 (``method`` holds the subset's class names); with
    ``max_test``, a seeded class-stratified subsample of at most that many of them."""
    if max_test is not None and max_test < 1:
        raise ConfigError(f"--max-test must be at least 1, got {max_test}")
    dataset = session.dataset(dataset_name)
    loaded = method.loaded
    # cached frozen features; the test images for a method that prompts the image tower (MaPLe)
    features, labels = method.image_inputs(dataset, dataset.test, session.feature_cache, session.progress)
    local = None
    if method.needs_local_features:
        local, _ = local_image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
    if EvalClasses(classes) is not EvalClasses.ALL:
        selected = protocols.selected_labels(range(dataset.num_classes), classes)
        if local is not None:
            local, _ = restrict_to_classes(local, labels, selected)
        features, labels = restrict_to_classes(features, labels, selected)
    if labels.shape[0] == 0:
        raise ConfigError(f"dataset {dataset.name} has an empty test split; nothing to evaluate")
    if max_test is not None and max_test < labels.shape[0]:
        keep = stratified_subsample(labels, max_test)
        features, labels = features[keep.to(features.device)], labels[keep]
        local = None if local is None else local[keep.to(local.device)]
    return EvalSet(features.to(loaded.device), labels, host_features(local, loaded.device))  # local: chunks move


def stratified_subsample(labels: Tensor, size: int, seed: int = 0) -> Tensor:
    """Sorted indices of ``size`` items drawn class by class in turn (each class's items in seeded random
    order), so every class keeps its share up to one image; the same for the same labels and size."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.shape[0], generator=generator)
    per_class = [order[labels[order] == c] for c in labels.unique(sorted=True)]
    rounds = max(len(members) for members in per_class)
    interleaved = [members[r] for r in range(rounds) for members in per_class if r < len(members)]
    return torch.stack(interleaved[:size]).sort().values


def check_same_test_set(previous: pd.DataFrame, n_test: int, run_id: str) -> None:
    """Refuse to add rows computed on another number of test images than the run's existing rows."""
    sizes = sorted(set(int(n) for n in previous["n_test"].dropna())) if not previous.empty else []
    if sizes and sizes != [n_test]:
        raise ConfigError(
            f"run {run_id} has corruption rows on {sizes[0]} test images, this sweep uses {n_test}; "
            "pass the --max-test those rows used, or a fresh --reports folder"
        )


def previous_rows(session: Session, run_id: str, classes: str = EvalClasses.ALL.value) -> pd.DataFrame:
    """The rows already written for ``run_id`` on the class subset ``classes``."""
    table = store.read_table(session.reports_dir, TABLE)
    return table[(table["run_id"] == run_id) & (table["eval_classes"] == classes)]


def row_key(corruption: Corruption, pairs: Sequence[tuple[int, ...]]) -> tuple:
    """The table key (op, prompt_index, position, factor, rep, layer) of a corruption of flat position
    ``corruption.position``; ``pairs`` maps flat positions to (prompt_index, position[, layer]) (layer 0
    when not given)."""
    if corruption.op == NONE:
        return (NONE, 0, corruption.position, float(corruption.factor), corruption.rep, 0)
    prompt_index, position, layer = (*pairs[corruption.position], 0)[:3]
    return (corruption.op, int(prompt_index), int(position), float(corruption.factor), corruption.rep, int(layer))


def pending_corruptions(grid: Sequence[Corruption], done: set, pairs: Sequence[tuple[int, int]]) -> list[Corruption]:
    """The grid's corruptions not yet in the table, each key once, sorted by position (chunks of one
    position share the longest prefix; rows are put back in grid order by :func:`grid_rows`)."""
    todo = [c for c in grid if c.op != NONE and row_key(c, pairs) not in done]
    todo = list({c.key(): c for c in todo}.values())
    todo.sort(key=lambda c: c.position)
    return todo


def baseline_row(base_row: dict, base_norms: Tensor) -> dict:
    """The uncorrupted row: op "none", position -1, factor 1.0; both norms are the mean position norm."""
    mean_norm = float(base_norms.mean())
    op, position, factor, rep = NO_CORRUPTION.key()
    return {**base_row, "op": op, "prompt_index": 0, "position": position, "factor": factor, "rep": rep,
            "acc": base_row["acc_original"], "delta": 0.0, "norm_before": mean_norm, "norm_after": mean_norm,
            "low_norm_effect": False, "n_gained": 0.0, "n_lost": 0.0, "p_value": 1.0, "layer": 0,
            "invisible": True}  # fmt: skip


def evaluate_chunk(
    method: PromptMethod,
    cache,
    slot_value: Tensor,
    part: Sequence[Corruption],
    run_id: str,
    test: EvalSet,
    base_row: dict,
    base_norms: Tensor,
    pairs: Sequence[tuple[int, int]],
) -> list[dict]:
    """The table rows of one chunk of corruptions (one stacked text pass). ``invisible``: the variant's scores
    equal the unchanged prompt's (``test.original``) to float precision."""
    variants = apply_corruptions(slot_value, part, run_id)  # (variants, [classes,] n_positions, width)
    positions = [c.position for c in part]
    original = test.original if test.original is not None else original_scores(method, slot_value, test)
    predictions, invisible = variant_outcomes(method, cache, variants, positions, test.features,
                                              test.local_features, original)  # fmt: skip
    accs = accuracy_of(predictions, test.labels).tolist()
    gained, lost = paired_counts(predictions, test.labels, test.baseline_correct)
    p_values = mcnemar_p(gained.numpy(), lost.numpy())
    after = variant_norms(variants)  # (variants, n_ctx)
    rows = []
    for i, corruption in enumerate(part):
        norm_before = float(base_norms[corruption.position])
        norm_after = float(after[i, corruption.position])
        delta = accs[i] - base_row["acc_original"]
        rows.append(
            {**base_row, "op": corruption.op, "prompt_index": pairs[corruption.position][0],
             "position": pairs[corruption.position][1], "layer": (*pairs[corruption.position], 0)[2],
             "invisible": bool(invisible[i]), "factor": float(corruption.factor),
             "rep": corruption.rep, "acc": accs[i], "delta": delta, "norm_before": norm_before,
             "norm_after": norm_after, "low_norm_effect": bool(norm_after < norm_before and delta > 0),
             "n_gained": float(gained[i]), "n_lost": float(lost[i]), "p_value": float(p_values[i])}
        )  # fmt: skip
    return rows


def grid_rows(
    previous: pd.DataFrame, new_rows: list[dict], grid: Sequence[Corruption], pairs: Sequence[tuple[int, int]]
) -> pd.DataFrame:
    """This run's rows for the grid's keys, newest first wins, in grid order."""
    columns, key = SCHEMAS[TABLE].names, list(CORRUPTION_KEY)
    frames = [f for f in (previous[columns], pd.DataFrame(new_rows, columns=columns)) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(frames, ignore_index=True).drop_duplicates(key, keep="last")
    order = {row_key(c, pairs): i for i, c in reversed(list(enumerate(grid)))}
    keys = list(frame[key].itertuples(index=False, name=None))
    frame = frame.assign(_order=[order.get((op, int(n), int(p), float(f), int(r), int(lay)), -1)
                                 for op, n, p, f, r, lay in keys])  # fmt: skip
    frame = frame[frame["_order"] >= 0].sort_values("_order", kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True)


def summarise(
    frame: pd.DataFrame, run_id: str, acc_original: float, n_test: int, rows_written: int, chunk: int, seconds: float
) -> SweepSummary:
    """The :class:`SweepSummary` of a run's grid rows."""
    corrupted = frame[frame["op"] != NONE]
    best = worst = None
    if not corrupted.empty:
        best = corrupted.loc[corrupted["acc"].idxmax()].to_dict()
        worst = corrupted.loc[corrupted["acc"].idxmin()].to_dict()
    invisible = corrupted["invisible"].fillna(False).astype(bool) if "invisible" in corrupted else False
    visible = corrupted[~invisible] if "invisible" in corrupted else corrupted
    reducing = visible["norm_after"] < visible["norm_before"]
    effect = reducing & (visible["delta"] > 0)
    q = bh_q_values(visible["p_value"].to_numpy(float)) if "p_value" in visible.columns else float("nan")
    return SweepSummary(
        run_id=run_id,
        acc_original=acc_original,
        n_test=n_test,
        num_corruptions=len(corrupted),
        rows_written=rows_written,
        rows_reused=max(0, len(frame) - rows_written),
        best=best,
        worst=worst,
        num_norm_reducing=int(reducing.sum()),
        num_low_norm_effect=int(effect.sum()),
        num_significant=int((effect & (q < SIGNIFICANCE_FDR)).sum()),
        num_invisible=len(corrupted) - len(visible),
        chunk=chunk,
        seconds=seconds,
        rows=frame,
    )


def describe_corruption(row: dict) -> str:
    """``rescale position 3 by 0.5`` / ``replace position 3 with N(0, 0.1^2) draw 2``; for PLOT the position
    names its prompt: ``rescale prompt 1 position 3 by 0.5``."""
    where = f"position {int(row['position'])}"
    if row.get("prompt_method") == "plot":
        where = f"prompt {int(row.get('prompt_index', 0))} {where}"
    elif row.get("prompt_method") == "maple":
        where = f"layer {int(row.get('layer', 0))} {where}"
    if row["op"] == RESCALE:
        return f"rescale {where} by {row['factor']:g}"
    elif row["op"] == REPLACE:
        return f"replace {where} with N(0, {row['factor']:g}^2) draw {int(row['rep'])}"
    elif row["op"] == NONE:
        return "no corruption"
    else:
        raise ValueError(f"unknown corruption op {row['op']!r}")


def subset_label(eval_classes: str) -> str:
    """`` (base classes)`` for a class subset; empty for all classes."""
    return "" if eval_classes == EvalClasses.ALL.value else f" ({eval_classes} classes)"


def format_summary(summary: SweepSummary) -> list[str]:
    """Plain-text lines for the CLI and the demo (the library itself never prints)."""
    lines = [
        f"run {summary.run_id}{subset_label(summary.eval_classes)}: uncorrupted accuracy {summary.acc_original:.2f}% "
        f"on {summary.n_test} test images; "
        f"{summary.num_corruptions} corruptions ({summary.rows_written} rows written, {summary.rows_reused} reused, "
        f"{summary.seconds:.1f} s, chunk {summary.chunk})"
    ]
    for label, row in (("best", summary.best), ("worst", summary.worst)):
        if row is not None:
            lines.append(
                f"  {label}: {describe_corruption(row)} -> {row['acc']:.2f}% ({row['delta']:+.2f} points, "
                f"norm {row['norm_before']:.4f} -> {row['norm_after']:.4f})"
            )
    lines.append(
        f"  Low-Norm Effect: {summary.num_low_norm_effect} of {summary.num_norm_reducing} norm-reducing "
        f"corruptions raised accuracy; {summary.num_significant} of them significantly (exact McNemar test, "
        f"Benjamini-Hochberg q < {SIGNIFICANCE_FDR:g} over the sweep)"
        + (f"; {summary.num_invisible} invisible corruptions left out" if summary.num_invisible else "")
    )
    return lines
