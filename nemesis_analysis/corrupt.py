"""The corruption analysis engine: evaluate every corruption of a learned context, batched, resumable.

The pure operations and the grid live in :mod:`nemesis_analysis.corrupt_ops`; this module evaluates them.
The image tower is frozen, so the test split is encoded once (the shared feature cache) and every
variant only costs a text pass. Variants are stacked and pushed through the text tower together, in
chunks that bound memory, with sequences cut at the longest EOS (exact: CLIP's text mask is causal).
Every finished chunk becomes its own Parquet part of ``reports/corruptions``, so a killed sweep loses at
most the chunk in flight, and a rerun computes only the keys ``(op, position, factor, rep)`` missing
for the run.

:func:`evaluate_naive` is the reference-style path (one variant at a time, full 77-token sequences,
test images re-encoded for every variant) that tests and ``benchmarks/bench_corrupt.py`` compare with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from nemesis_analysis import store
from nemesis_analysis.config import PromptConfig, RunConfig
from nemesis_analysis.corrupt_ops import NO_CORRUPTION, Corruption, apply_corruptions, corrupt_context
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.features import encode_samples, image_features
from nemesis_analysis.metrics import predict_classes
from nemesis_analysis.models import encode_text_from_embeddings, eos_positions, supports_prefix_reuse
from nemesis_analysis.nemesis import position_norms
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.prompts import ARTIFACT_TENSORS, PrefixCache, PromptLearner, _layout_tokens, load_prompt
from nemesis_analysis.train import RunContext, RunResult, Workspace

logger = logging.getLogger(__name__)

TABLE = "corruptions"
# Floats allowed in one chunk's prompt activations, variants * classes * length * width; the text tower's
# MLP holds 4x that at its peak. On a CPU, moderate chunks stay cache-friendly (one 593-variant pass of the
# tiny CLIP is ~1.4x slower than two chunks); on a GPU, larger chunks fill the device.
CPU_MEMORY_BUDGET = 2**23  # 32 MiB in fp32
CUDA_MEMORY_BUDGET = 2**27  # 512 MiB in fp32
IDENTITY_COLUMNS = [name for name, _ in store.IDENTITY]


# ------------------------------------------------------------------------------------------- evaluation


def learner_for_identity(context: RunContext, identity: dict) -> PromptLearner:
    """The prompt layout of a run, rebuilt from its identity columns (n_ctx, csc, class-token position).

    ``ctx_init`` only changes the initial values, not the layout (each slot is one placeholder token), so
    these three columns are enough to splice a trained context back in.
    """
    prompt = PromptConfig(
        n_ctx=int(identity["n_ctx"]), csc=bool(identity["csc"]), class_token_position=identity["class_token_position"]
    )
    return PromptLearner(context.loaded, context.dataset.classnames, prompt)


def auto_chunk(learner: PromptLearner, memory_budget: int | None = None) -> int:
    """Variants per text pass so that variants * classes * length * width stays within ``memory_budget``
    (default: by device, :data:`CPU_MEMORY_BUDGET` or :data:`CUDA_MEMORY_BUDGET`)."""
    if memory_budget is None:
        memory_budget = CUDA_MEMORY_BUDGET if learner.base.device.type == "cuda" else CPU_MEMORY_BUDGET
    length = learner.base.shape[1]
    per_variant = learner.num_classes * length * learner.width
    return max(1, int(memory_budget) // per_variant)


@torch.no_grad()
def predict_variants(learner: PromptLearner, ctx_variants: Tensor, features: Tensor) -> Tensor:
    """Top-1 class of every test image under every context variant: (variants, n_test), long, on the CPU.

    ``ctx_variants`` (variants, [classes,] n_ctx, width); ``features`` (n_test, embed), L2-normalised, on
    the model's device. One stacked text pass (cut at the longest EOS) for all variants.
    """
    device = learner.base.device
    text = learner.text_features(ctx_variants.to(device))  # (variants, classes, embed)
    scores = torch.matmul(features.to(device)[None], text.transpose(1, 2))  # (variants, n_test, classes)
    return predict_classes(scores).cpu()


def prefix_cache(learner: PromptLearner, ctx: Tensor, reuse_prefix: bool = True) -> PrefixCache | None:
    """A :class:`PrefixCache` of ``ctx`` when the text tower supports it (and it is wanted), else None."""
    if reuse_prefix and supports_prefix_reuse(learner.loaded.model):
        return PrefixCache(learner, ctx.detach().float())
    return None


@torch.no_grad()
def predict_single_position_variants(
    learner: PromptLearner,
    cache: PrefixCache | None,
    variants: Tensor,
    positions: Sequence[int],
    features: Tensor,
) -> Tensor:
    """Predictions (variants, n_test) for variants that each change the one position given for them.

    With a prefix cache, variants are grouped by position and only the tokens from that position on are
    computed; without one, this is :func:`predict_variants`.
    """
    if cache is None:
        return predict_variants(learner, variants, features)
    device = learner.base.device
    features = features.to(device)
    out = torch.empty(len(positions), features.shape[0], dtype=torch.long)
    for position in sorted(set(positions)):
        rows = [i for i, p in enumerate(positions) if p == position]
        text = cache.text_features(variants[rows], position)  # (group, classes, embed)
        out[rows] = predict_classes(torch.matmul(features[None], text.transpose(1, 2))).cpu()
    return out


def predict_corruptions(
    learner: PromptLearner,
    ctx: Tensor,
    corruptions: Sequence[Corruption],
    run_id: str,
    features: Tensor,
    chunk: int | None = None,
    reuse_prefix: bool = True,
) -> Tensor:
    """Batched predictions for every corruption of ``ctx``: (len(corruptions), n_test), in order."""
    chunk = chunk or auto_chunk(learner)
    ctx = ctx.detach().float().cpu()
    cache = prefix_cache(learner, ctx, reuse_prefix)
    parts = []
    for start in range(0, len(corruptions), chunk):
        part = corruptions[start : start + chunk]
        variants = apply_corruptions(ctx, part, run_id)
        if any(c.op == "none" for c in part):  # the baseline changes no position: a plain pass
            parts.append(predict_variants(learner, variants, features))
        else:
            positions = [c.position for c in part]
            parts.append(predict_single_position_variants(learner, cache, variants, positions, features))
    if not parts:
        return torch.empty(0, features.shape[0], dtype=torch.long)
    return torch.cat(parts)


def _accuracy(predictions: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in percent of each row of predictions (variants, n_test): (variants,) float64."""
    return 100.0 * (predictions == labels[None]).double().mean(dim=1)


def _variant_norms(variants: Tensor) -> Tensor:
    """L2 norm of each position of each variant, averaged over classes for CSC: (variants, n_ctx)."""
    norms = torch.linalg.vector_norm(variants.float(), ord=2, dim=-1)  # (variants, [classes,] n_ctx)
    return norms.mean(dim=1) if norms.dim() == 3 else norms


# ---------------------------------------------------------------------------------------------- sweeping


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


def run_corruption_sweep(
    context: RunContext,
    ctx: Tensor,
    identity: dict,
    grid: Sequence[Corruption],
    workspace: Workspace,
    *,
    learner: PromptLearner | None = None,
    chunk: int | None = None,
    memory_budget: int | None = None,
    reuse_prefix: bool = True,
    progress: bool = True,
    on_chunk: Callable[[int, list[dict]], None] | None = None,
) -> SweepSummary:
    """Evaluate every corruption in ``grid`` on the test split and append the rows to ``corruptions``.

    ``ctx``: the trained context, (n_ctx, width) or (classes, n_ctx, width) with CSC. ``identity``: the
    run's identity columns (``RunConfig.identity_columns()`` with the learner's n_ctx); its ``run_id``
    also seeds the replace draws. ``chunk``: variants per text pass (default: from ``memory_budget``).
    ``reuse_prefix``: compute each variant from its corrupted position on, reusing the unchanged prompt's
    states before it (:class:`~nemesis_analysis.prompts.PrefixCache`; exact under the causal mask).
    ``on_chunk(index, rows)`` is called after each chunk's part is written.

    Columns follow ``store.SCHEMAS["corruptions"]``. ``norm_before``/``norm_after`` are the L2 norms of
    the corrupted position before and after (CSC: averaged over classes, as
    :func:`nemesis.position_norms`). The "none" row has no position: both columns hold the mean of the
    position norms, so it never counts as norm-reducing. The uncorrupted accuracy is recomputed on every
    call (one text pass); the rows already written for this run are skipped.
    """
    started = time.perf_counter()
    missing = [name for name in IDENTITY_COLUMNS if name not in identity]
    if missing:
        raise ValueError(f"identity lacks columns {missing}")
    identity = {name: identity[name] for name in IDENTITY_COLUMNS}
    run_id = str(identity["run_id"])
    ctx = ctx.detach().float().cpu()
    if ctx.dim() not in (2, 3):
        raise ModelError(f"a context must be (n_ctx, width) or (classes, n_ctx, width), got {tuple(ctx.shape)}")
    if int(identity["n_ctx"]) != ctx.shape[-2] or bool(identity["csc"]) != (ctx.dim() == 3):
        raise ModelError(
            f"context of shape {tuple(ctx.shape)} does not match the run's n_ctx={identity['n_ctx']}, "
            f"csc={identity['csc']}"
        )
    learner = learner or learner_for_identity(context, identity)
    chunk = int(chunk) if chunk else auto_chunk(learner, memory_budget)
    if chunk < 1:
        raise ConfigError(f"--chunk must be at least 1, got {chunk}")

    loaded, dataset = context.loaded, context.dataset
    features, labels = image_features(loaded, dataset, dataset.test, workspace.feature_cache, progress)
    features = features.to(loaded.device)  # (n_test, embed), encoded once for every variant
    n_test = int(labels.shape[0])
    if n_test == 0:
        raise ConfigError(f"dataset {dataset.name} has an empty test split; nothing to evaluate")

    acc_original = float(_accuracy(predict_variants(learner, ctx[None], features), labels)[0])
    base_norms = position_norms(ctx)  # (n_ctx,)
    base_row = {
        **identity,
        "acc_original": acc_original,
        "n_test": n_test,
        "eval_classes": "all",
    }

    table = store.read_table(workspace.reports_dir, TABLE)
    previous = table[table["run_id"] == run_id]
    done = set(previous[["op", "position", "factor", "rep"]].itertuples(index=False, name=None))
    pending: list[dict] = []
    if NO_CORRUPTION.key() not in done:
        mean_norm = float(base_norms.mean())
        pending.append(
            {**base_row, "op": "none", "position": -1, "factor": 1.0, "rep": 0, "acc": acc_original, "delta": 0.0,
             "norm_before": mean_norm, "norm_after": mean_norm, "low_norm_effect": False}
        )  # fmt: skip
    todo = [c for c in grid if c.op != "none" and c.key() not in done]
    todo = list({c.key(): c for c in todo}.values())  # a grid with repeats evaluates each key once
    # Chunks of one position share the longest prefix; rows are reordered to grid order afterwards.
    todo.sort(key=lambda c: c.position)
    cache = prefix_cache(learner, ctx, reuse_prefix) if todo else None  # a complete rerun needs no text pass
    new_rows: list[dict] = list(pending)

    with progress_bar(f"corrupting {run_id}", total=len(todo), enabled=progress) as advance:
        for index, start in enumerate(range(0, len(todo), chunk)):
            part = todo[start : start + chunk]
            variants = apply_corruptions(ctx, part, run_id)  # (variants, [classes,] n_ctx, width)
            predictions = predict_single_position_variants(
                learner, cache, variants, [c.position for c in part], features
            )
            accs = _accuracy(predictions, labels).tolist()
            after = _variant_norms(variants)  # (variants, n_ctx)
            rows = list(pending)
            pending = []
            for i, corruption in enumerate(part):
                norm_before = float(base_norms[corruption.position])
                norm_after = float(after[i, corruption.position])
                delta = accs[i] - acc_original
                rows.append(
                    {**base_row, "op": corruption.op, "position": corruption.position,
                     "factor": float(corruption.factor), "rep": corruption.rep, "acc": accs[i], "delta": delta,
                     "norm_before": norm_before, "norm_after": norm_after,
                     "low_norm_effect": bool(norm_after < norm_before and delta > 0)}
                )  # fmt: skip
            store.append_rows(workspace.reports_dir, TABLE, rows)
            new_rows.extend(rows[-len(part) :])
            advance(len(part), best=max(accs))
            if on_chunk is not None:
                on_chunk(index, rows)
    if pending:  # nothing left to corrupt, but the baseline row was missing
        store.append_rows(workspace.reports_dir, TABLE, pending)

    rows_written = len(new_rows)
    frame = _grid_rows(previous, new_rows, grid)
    return _summarise(frame, run_id, acc_original, n_test, rows_written, chunk, time.perf_counter() - started)


def _grid_rows(previous: pd.DataFrame, new_rows: list[dict], grid: Sequence[Corruption]) -> pd.DataFrame:
    """This run's rows for the grid's keys, newest first wins, in grid order."""
    columns = store.SCHEMAS[TABLE].names
    frames = [f for f in (previous[columns], pd.DataFrame(new_rows, columns=columns)) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(frames, ignore_index=True).drop_duplicates(["op", "position", "factor", "rep"], keep="last")
    order = {c.key(): i for i, c in reversed(list(enumerate(grid)))}
    keys = list(frame[["op", "position", "factor", "rep"]].itertuples(index=False, name=None))
    frame = frame.assign(_order=[order.get((op, int(p), float(f), int(r)), -1) for op, p, f, r in keys])
    frame = frame[frame["_order"] >= 0].sort_values("_order", kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True)


def _summarise(
    frame: pd.DataFrame, run_id: str, acc_original: float, n_test: int, rows_written: int, chunk: int, seconds: float
) -> SweepSummary:
    corrupted = frame[frame["op"] != "none"]
    best = worst = None
    if not corrupted.empty:
        best = corrupted.loc[corrupted["acc"].idxmax()].to_dict()
        worst = corrupted.loc[corrupted["acc"].idxmin()].to_dict()
    reducing = corrupted["norm_after"] < corrupted["norm_before"]
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
        num_low_norm_effect=int((reducing & (corrupted["delta"] > 0)).sum()),
        chunk=chunk,
        seconds=seconds,
        rows=frame,
    )


def describe_corruption(row: dict) -> str:
    """``rescale position 3 by 0.5`` / ``replace position 3 with N(0, 0.1^2) draw 2``."""
    if row["op"] == "rescale":
        return f"rescale position {int(row['position'])} by {row['factor']:g}"
    elif row["op"] == "replace":
        return f"replace position {int(row['position'])} with N(0, {row['factor']:g}^2) draw {int(row['rep'])}"
    elif row["op"] == "none":
        return "no corruption"
    else:
        raise ValueError(f"unknown corruption op {row['op']!r}")


def format_summary(summary: SweepSummary) -> list[str]:
    """Plain-text lines for the CLI and the demo (the library itself never prints)."""
    lines = [
        f"run {summary.run_id}: uncorrupted accuracy {summary.acc_original:.2f}% on {summary.n_test} test images; "
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
        f"corruptions raised accuracy"
    )
    return lines


# ------------------------------------------------------------------------------------- trained runs and artifacts


def sweep_trained_run(
    context: RunContext,
    run: RunResult,
    grid: Sequence[Corruption],
    workspace: Workspace,
    chunk: int | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Sweep the prompt that :func:`train_prompt` saved for ``run``."""
    ctx, _ = load_prompt(run.run_dir)
    identity = run.config.identity_columns()
    identity["n_ctx"] = ctx.shape[-2]
    return run_corruption_sweep(context, ctx, identity, grid, workspace, chunk=chunk, progress=progress)


def sweep_runs(
    config: RunConfig,
    workspace: Workspace,
    *,
    ops: Sequence[str] = ("rescale", "replace"),
    positions: Sequence[int] | None = None,
    factors: Sequence[float] | None = None,
    stds: Sequence[float] | None = None,
    reps: int | None = None,
    seeds: Sequence[int] | None = None,
    prompt: Path | str | None = None,
    chunk: int | None = None,
    data_root: Path | str | None = None,
    device: str | None = None,
    offline: bool = False,
    force: bool = False,
    progress: bool = True,
    on_run: Callable[[RunResult], None] | None = None,
    on_prompt: Callable[[AnalysisPrompt], None] | None = None,
) -> list[SweepSummary]:
    """What ``nemesis corrupt`` does: sweep the grid on ``prompt``, or on the run of ``config`` for each seed
    (training it first when it has not finished). Every argument is checked, positions against the real
    n_ctx included, before any model is loaded, anything is trained or any row is written.
    """
    from nemesis_analysis import corrupt_ops
    from nemesis_analysis.train import prepare, train_prompt

    if chunk is not None and chunk < 1:
        raise ConfigError(f"--chunk must be at least 1, got {chunk}")
    if prompt is not None and seeds is not None:
        raise ConfigError("--seeds trains and sweeps several runs; --prompt analyses one saved prompt: give only one")
    seeds = list(seeds) if seeds is not None else [config.seed]
    analysed = load_context_for_analysis(prompt) if prompt is not None else None
    n_ctx = analysed.n_ctx if analysed is not None else resolve_n_ctx(config)
    grid = corrupt_ops.expand_grid(
        n_ctx,
        ops,
        positions,
        corrupt_ops.DEFAULT_FACTORS if factors is None else factors,
        corrupt_ops.DEFAULT_STDS if stds is None else stds,
        corrupt_ops.DEFAULT_REPS if reps is None else reps,
    )
    config = dataclasses.replace(config, seed=seeds[0])
    context = prepare(config, workspace, data_root=data_root, device=device, offline=offline, progress=progress)
    if analysed is not None:
        layout = analysed.prompt_config or PromptConfig(
            n_ctx=analysed.n_ctx, csc=analysed.csc, class_token_position=config.prompt.class_token_position
        )
        learner = PromptLearner(context.loaded, context.dataset.classnames, layout)
        check_context_fits(analysed, learner)
        identity = identity_for_prompt(analysed, config.resolved(context.loaded.device.type), learner)
        if on_prompt is not None:
            on_prompt(analysed)
        return [
            run_corruption_sweep(
                context, analysed.ctx, identity, grid, workspace, learner=learner, chunk=chunk, progress=progress
            )
        ]
    summaries = []
    for seed in seeds:
        run = train_prompt(
            dataclasses.replace(config, seed=seed), workspace, context=context, force=force, progress=progress
        )
        if on_run is not None:
            on_run(run)
        summaries.append(sweep_trained_run(context, run, grid, workspace, chunk=chunk, progress=progress))
    return summaries


def resolve_n_ctx(config: RunConfig) -> int:
    """The number of context vectors the run will have, without loading the model (``ctx_init`` fixes it)."""
    if not config.prompt.ctx_init:
        return config.prompt.n_ctx
    import open_clip

    from nemesis_analysis.models import register_model_configs

    register_model_configs()
    tokens = open_clip.get_tokenizer(config.backbone)([config.prompt.ctx_init])
    return int(eos_positions(tokens)[0]) - 1


@dataclass
class AnalysisPrompt:
    """A learned context read for analysis, with what is known of where it came from."""

    ctx: Tensor  # (n_ctx, width) or (classes, n_ctx, width)
    run_id: str  # the artifact's run_id, or a hash of its tensor file when it records none
    metadata: dict  # the artifact's metadata (empty when the format carries none)
    prompt_config: PromptConfig | None  # the layout recorded with the context, when recorded
    path: Path

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    @property
    def csc(self) -> bool:
        return self.ctx.dim() == 3


def load_context_for_analysis(path: Path | str, learner: PromptLearner | None = None) -> AnalysisPrompt:
    """Read a saved prompt to corrupt: our artifact (a folder with prompt.safetensors + prompt.json).

    With ``learner``, also check that the context fits it (classes, width, n_ctx, CSC); without, only read
    (the CLI reads first to validate flags against n_ctx before loading any model). Never unpickles.
    New formats (e.g. Dassl/CoOp checkpoints) are added here, dispatching on the path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"--prompt {path} does not exist; pass a prompt folder (prompt.safetensors + prompt.json)")
    from nemesis_analysis.prompt_import import find_dassl_checkpoint, read_dassl_checkpoint

    directory = path if path.is_dir() else path.parent
    dassl = None if (directory / ARTIFACT_TENSORS).is_file() else find_dassl_checkpoint(path)
    if dassl is not None:  # a CoOp/Dassl prompt_learner/model.pth.tar-N trained elsewhere
        ctx, metadata = read_dassl_checkpoint(dassl)
        tensor_file = dassl
    else:
        ctx, metadata = load_prompt(path)
        tensor_file = directory / ARTIFACT_TENSORS
    run_id = metadata.get("run_id")
    if not run_id:
        digest = hashlib.sha256(tensor_file.read_bytes()).hexdigest()[:12]
        run_id = f"file-{digest}"
    prompt_config = None
    if "prompt" in metadata:
        recorded = dict(metadata["prompt"])
        prompt_config = PromptConfig(
            n_ctx=int(recorded.get("n_ctx", ctx.shape[-2])),
            csc=bool(recorded.get("csc", ctx.dim() == 3)),
            class_token_position=recorded.get("class_token_position", "end"),
        )
    prompt = AnalysisPrompt(
        ctx=ctx.float(), run_id=str(run_id), metadata=metadata, prompt_config=prompt_config, path=path
    )
    if learner is not None:
        check_context_fits(prompt, learner)
    return prompt


def check_context_fits(prompt: AnalysisPrompt, learner: PromptLearner) -> None:
    """Raise :class:`ModelError` unless the context fits the loaded model and dataset."""
    ctx, meta = prompt.ctx, prompt.metadata
    if ctx.dim() not in (2, 3):
        raise ModelError(
            f"{prompt.path}: a context must be (n_ctx, width) or (classes, n_ctx, width), got {tuple(ctx.shape)}"
        )
    backbone = meta.get("backbone")
    if backbone and backbone != learner.loaded.backbone:
        raise ModelError(
            f"{prompt.path} was trained on {backbone} but the model is {learner.loaded.backbone}; "
            f"pass --backbone {backbone} (and its --pretrained weights)"
        )
    width = meta.get("width", ctx.shape[-1])
    if width != learner.width or ctx.shape[-1] != learner.width:
        raise ModelError(
            f"{prompt.path} has context width {ctx.shape[-1]} but {learner.loaded.backbone}'s text width is "
            f"{learner.width}; pass the backbone it was trained with"
        )
    names = meta.get("classnames")
    if names is not None and list(names) != list(learner.classnames):
        extra = sorted(set(names) ^ set(learner.classnames))[:3]
        detail = f"e.g. {', '.join(map(repr, extra))} differ" if extra else "the order differs"
        raise ModelError(
            f"{prompt.path} was learned for {len(names)} other class names than the dataset's "
            f"{len(learner.classnames)} ({detail}); pass the dataset it was trained on"
        )
    if ctx.dim() == 3 and ctx.shape[0] != learner.num_classes:
        raise ModelError(
            f"{prompt.path} holds class-specific context for {ctx.shape[0]} classes; the dataset has "
            f"{learner.num_classes}"
        )
    if ctx.shape[-2] != learner.n_ctx or (ctx.dim() == 3) != bool(learner.config.csc):
        raise ModelError(
            f"{prompt.path} has n_ctx={ctx.shape[-2]}, csc={ctx.dim() == 3}; the prompt layout has "
            f"n_ctx={learner.n_ctx}, csc={learner.config.csc}"
        )


def identity_for_prompt(prompt: AnalysisPrompt, config: RunConfig, learner: PromptLearner) -> dict:
    """Identity columns for an analysed artifact: the artifact's own config when recorded, else the flags'."""
    recorded = prompt.metadata.get("config")
    source = RunConfig.from_dict(recorded) if recorded else config
    identity = source.identity_columns()
    identity.update(
        run_id=prompt.run_id,
        dataset=config.dataset,
        backbone=learner.loaded.backbone,
        n_ctx=prompt.n_ctx,
        csc=prompt.csc,
        class_token_position=learner.config.class_token_position.value,
        precision=identity["precision"] or learner.loaded.precision.value,
    )
    if not recorded:
        identity["pretrained"] = learner.loaded.pretrained
    return identity


# ------------------------------------------------------------------------------------------ naive reference


class FullLengthPrompts:
    """Full-length (77-token) class prompts, for the reference-style path: nothing is cut at EOS."""

    def __init__(self, learner: PromptLearner):
        loaded = learner.loaded
        self.learner = learner
        tokens, index = _layout_tokens(loaded, learner.classnames, learner.n_ctx, learner.config.class_token_position)
        with torch.no_grad():
            self.base = loaded.model.token_embedding(tokens).float()  # (classes, 77, width)
        self.ctx_index = index.to(loaded.device)  # (classes, n_ctx)
        self.eos = eos_positions(tokens)  # (classes,)

    @torch.no_grad()
    def text_features(self, ctx: Tensor) -> Tensor:
        """Normalised class features for one context: (classes, embed), the model's encode_text on 77 tokens."""
        loaded = self.learner.loaded
        num_classes = self.base.shape[0]
        ctx = ctx.to(device=self.base.device, dtype=self.base.dtype)
        if ctx.dim() == 2:
            ctx = ctx[None].expand(num_classes, -1, -1)  # (classes, n_ctx, width)
        prompts = self.base.clone()  # (classes, 77, width)
        prompts[torch.arange(num_classes, device=prompts.device)[:, None], self.ctx_index] = ctx
        with loaded.autocast():
            features = encode_text_from_embeddings(loaded.model, prompts, self.eos, truncate=False)
        return F.normalize(features.float(), dim=-1)


@torch.no_grad()
def evaluate_naive(
    context: RunContext,
    ctx: Tensor,
    grid: Sequence[Corruption],
    run_id: str,
    learner: PromptLearner | None = None,
    samples=None,
    progress: bool = False,
) -> Tensor:
    """Reference-style predictions (len(grid), n_test): per variant, re-encode the test images, build the
    corrupted prompts at full length (77 tokens, no EOS cut) and classify. Slow by design."""
    loaded, dataset = context.loaded, context.dataset
    samples = dataset.test if samples is None else samples
    if learner is None:
        prompt = PromptConfig(n_ctx=ctx.shape[-2], csc=ctx.dim() == 3)
        learner = PromptLearner(loaded, dataset.classnames, prompt)
    full = FullLengthPrompts(learner)
    out = []
    with progress_bar("naive corruption path", total=len(grid), enabled=progress) as advance:
        for corruption in grid:
            variant = corrupt_context(ctx.detach().float().cpu(), corruption, run_id)
            features = encode_samples(loaded, dataset, samples, progress=False).to(loaded.device)  # (n_test, embed)
            text = full.text_features(variant)  # (classes, embed)
            out.append(predict_classes(features @ text.T).cpu())
            advance(1)
    if not out:
        return torch.empty(0, len(samples), dtype=torch.long)
    return torch.stack(out)


def accuracy_of(predictions: Tensor, labels: Tensor) -> list[float]:
    """Percent accuracy of each row of a (variants, n_test) prediction matrix."""
    return _accuracy(predictions, labels).tolist()


__all__ = [
    "AnalysisPrompt",
    "CPU_MEMORY_BUDGET",
    "CUDA_MEMORY_BUDGET",
    "FullLengthPrompts",
    "SweepSummary",
    "accuracy_of",
    "auto_chunk",
    "check_context_fits",
    "describe_corruption",
    "evaluate_naive",
    "format_summary",
    "identity_for_prompt",
    "learner_for_identity",
    "load_context_for_analysis",
    "predict_corruptions",
    "predict_variants",
    "resolve_n_ctx",
    "run_corruption_sweep",
    "sweep_trained_run",
]
