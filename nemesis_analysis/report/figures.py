"""Turns the tables under a reports folder into the paper's figures (no torch here).

Each ``*_figure`` function reads the tables under a reports folder, filters them, and returns a
matplotlib Figure from :mod:`nemesis_analysis.report.plots`. When the rows a figure needs are not there
it raises :class:`~nemesis_analysis.errors.NoDataError` whose message names the command that
produces them, so the CLI can print one line and exit 2. :func:`render_all` renders every figure
whose data exists (the demo and the notebook use it). Summary and paper tables live in
:mod:`nemesis_analysis.report.summaries`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.report import analysis, plots
from nemesis_analysis.report.reading import PRODUCERS, read_nonempty
from nemesis_analysis.storage import schema, store

logger = logging.getLogger(__name__)

FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
FIGURES_FOLDER = "figures"
# Prompt options that must agree for runs to count as "the same setting" in a trajectory figure.
_PROMPT_COLUMNS: tuple[str, ...] = ("prompt_method", "pretrained", "n_ctx", "csc", "class_token_position", "precision")


# --------------------------------------------------------------------------- reading


def _split_names(values: str | Iterable[str] | None) -> list[str] | None:
    """'a,b' or ['a', 'b'] -> ['a', 'b']; None or empty -> None."""
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    names = [v.strip() for v in values if v and v.strip()]
    return names or None


def _filter(frame: pd.DataFrame, table_dir: Path, producer: str, **filters: object) -> pd.DataFrame:
    """Keep rows matching every non-None filter (a list means "any of"); NoDataError if none match."""
    mask = pd.Series(True, index=frame.index)
    used = {}
    for column, value in filters.items():
        if value is None:
            continue
        used[column] = value
        if isinstance(value, (list, tuple, set)):
            mask &= frame[column].isin(list(value))
        else:
            mask &= frame[column] == value
    out = frame[mask]
    if out.empty:
        wanted = ", ".join(
            f"{c}={','.join(map(str, v)) if isinstance(v, (list, tuple, set)) else v}" for c, v in used.items()
        )
        available = "; ".join(
            f"{c}: {', '.join(map(str, sorted(frame[c].dropna().unique())))}" for c in used if c in frame.columns
        )
        raise NoDataError(f"no rows in {table_dir} with {wanted} (available {available}); run {producer} first")
    return out


def figure_name(kind: str, **params: object) -> str:
    """File stem of a figure: frequency, trajectory_digits_16shot_seed1, heatmap_digits, norms_<run_id>."""
    if kind == "frequency":
        stem = "frequency"
    elif kind == "trajectory":
        stem = f"trajectory_{params['dataset']}_{params['shots']}shot_seed{params['seed']}"
        if params.get("per_position"):
            stem += "_positions"
    elif kind == "heatmap":
        stem = f"heatmap_{params['dataset']}"
        if params.get("shots") is not None:
            stem += f"_{int(params['shots'])}shot"
    elif kind == "norms":
        stem = f"norms_{params['run_id']}"
    else:
        raise ConfigError(f"unknown figure kind {kind!r}; kinds: frequency, trajectory, heatmap, norms")
    # Dataset names may be paths (folder:/x/y): keep file names plain.
    return re.sub(r"[^0-9A-Za-z._-]+", "-", stem)


def figure_path(reports_dir: Path | str, name: str, format: str = "png") -> Path:
    """reports/figures/<name>.<format>."""
    return Path(reports_dir) / FIGURES_FOLDER / f"{name}.{check_format(format)}"


def check_format(format: str) -> str:
    format = str(format).lower().lstrip(".")
    if format not in FIGURE_FORMATS:
        raise ConfigError(f"unsupported figure format {format!r}; choose one of: {', '.join(FIGURE_FORMATS)}")
    return format


def resolve_output(reports_dir: Path | str, name: str, out: Path | str | None, format: str | None) -> tuple[Path, str]:
    """(path, format) from --out and --format: the format defaults to --out's suffix, else png."""
    if out is None:
        format = check_format(format or "png")
        return figure_path(reports_dir, name, format), format
    out = Path(out)
    suffix = out.suffix[1:].lower()
    if format is None:
        format = suffix if suffix in FIGURE_FORMATS else "png"
    format = check_format(format)
    if suffix in FIGURE_FORMATS and suffix != format:
        raise ConfigError(f"--out {str(out)!r} has suffix .{suffix} but --format is {format!r}")
    if suffix != format:
        out = out.with_name(f"{out.name}.{format}")
    return out, format


def save(fig: Figure, path: Path | str, format: str) -> Path:
    """plots.save_figure (atomic, 300 dpi), then release the figure."""
    try:
        return plots.save_figure(fig, path, format)
    finally:
        fig.clear()


# --------------------------------------------------------------------------- figures


def frequency_figure(
    reports_dir: Path | str,
    backbone: str | None = None,
    regularizer: str | None = None,
    datasets: str | Sequence[str] | None = None,
    min_delta: float = 0.0,
    measure: str = "percent",
    fdr: float = analysis.DEFAULT_FDR,
) -> Figure:
    """Figure 1(b): Low-Norm Effect frequency (percent or count) against shots, one line per dataset, with
    the 95% interval over seeds and the share of effects that survive Benjamini-Hochberg control at ``fdr``.

    Seeds of a (dataset, backbone, shots, regularizer) are compared on the corruption cells they all have
    (analysis.restrict_to_common_grid warns about the cells a seed lacks).
    """
    analysis.check_fdr(fdr)
    table_dir = store.table_path(reports_dir, "corruptions")
    corruptions = read_nonempty(reports_dir, "corruptions")
    corruptions = _filter(
        corruptions,
        table_dir,
        PRODUCERS["corruptions"],
        backbone=backbone,
        regularizer=regularizer,
        dataset=_split_names(datasets),
    )
    corruptions = analysis.with_run_settings(corruptions, store.read_table(reports_dir, "runs"))
    analysis.refuse_pooled_settings(
        analysis.rows_for_view(corruptions), analysis.GROUP_COLUMNS, f"corruptions in {table_dir}"
    )
    if measure == "count":
        return plots.plot_frequency(analysis.low_norm_counts(corruptions, min_delta, same_grid=True), measure="count")
    freq = analysis.low_norm_frequency(corruptions, min_delta=min_delta, same_grid=True, fdr=fdr)
    return plots.plot_frequency(freq, measure=measure)


def _pick_trajectory_runs(traj: pd.DataFrame) -> pd.DataFrame:
    """The newest run per regularizer among runs sharing prompt options (n_ctx, csc, ...).

    Runs with different prompt options are not the same experiment; of the option sets present,
    the one with the most regularizers wins, ties going to the most recently written.
    """
    order = list(dict.fromkeys(traj["run_id"]))  # write order: parts sort by time, a run writes its rows at once
    first = traj.drop_duplicates("run_id").set_index("run_id").loc[order].reset_index()
    columns = [c for c in _PROMPT_COLUMNS if c in first.columns]
    first["_options"] = first[columns].astype(str).agg("|".join, axis=1) if columns else ""
    first["_order"] = range(len(first))
    ranking = first.groupby("_options").agg(regularizers=("regularizer", "nunique"), newest=("_order", "max"))
    best = ranking.sort_values(["regularizers", "newest"]).index[-1]
    chosen = first[first["_options"] == best].groupby("regularizer", sort=True)["run_id"].last()
    dropped = sorted(set(order) - set(chosen))
    if dropped:
        logger.warning(
            "trajectory figure: left out %d older run(s) or run(s) with other prompt options: %s",
            len(dropped),
            ", ".join(dropped),
        )
    return traj[traj["run_id"].isin(set(chosen))]


def trajectory_figure(
    reports_dir: Path | str,
    dataset: str,
    shots: int,
    seed: int,
    backbone: str | None = None,
    per_position: bool = False,
) -> Figure:
    """Figure 3: norm and test accuracy per epoch, CoOp against each Nemesis variant of the same split."""
    table_dir = store.table_path(reports_dir, "trajectories")
    traj = read_nonempty(reports_dir, "trajectories")
    producer = f"`nemesis train --dataset {dataset} --shots {shots} --seed {seed}` (with --pun or --pan for Nemesis)"
    traj = _filter(traj, table_dir, producer, dataset=dataset, shots=int(shots), seed=int(seed), backbone=backbone)
    backbones = sorted(traj["backbone"].unique())
    if len(backbones) > 1:
        raise ConfigError(
            f"trajectories of {dataset} {shots}-shot seed {seed} exist for several backbones ({', '.join(backbones)}); choose one with --backbone"
        )
    traj = _pick_trajectory_runs(traj)
    base = (
        "Per-position prompt norms during training" if per_position else "Prompt norm and test accuracy during training"
    )
    context = f"{plots.dataset_label(dataset)} · {backbones[0]} · {int(shots)}-shot · seed {int(seed)}"
    return plots.plot_trajectory(traj, per_position=per_position, title=f"{base}\n{context}")


def _default_regularizer(corruptions: pd.DataFrame, regularizer: str | None) -> str | None:
    """Averaging deltas over regularizers would mix different prompts: default to CoOp, or the only one."""
    if regularizer is not None:
        return regularizer
    present = sorted(corruptions["regularizer"].dropna().unique())
    if len(present) <= 1:
        return present[0] if present else None
    if "coop" in present:
        return "coop"
    raise ConfigError(
        f"corruptions exist for several regularizers ({', '.join(present)}); choose one with --regularizer"
    )


def _default_prompt_method(corruptions: pd.DataFrame, prompt_method: str | None) -> str | None:
    """Deltas of different prompt methods are not averaged: default to CoOp, or the only prompt method."""
    if prompt_method is not None or "prompt_method" not in corruptions.columns:
        return prompt_method
    present = sorted(corruptions["prompt_method"].dropna().unique())
    if len(present) <= 1 or "coop" in present:
        return "coop" if "coop" in present else (present[0] if present else None)
    raise ConfigError(
        f"corruptions exist for several prompt methods ({', '.join(present)}); choose one (prompt_method=...)"
    )


def heatmap_figure(
    reports_dir: Path | str,
    dataset: str,
    regularizer: str | None = None,
    backbone: str | None = None,
    shots: int | None = None,
    prompt_method: str | None = None,
    fdr: float = analysis.DEFAULT_FDR,
) -> Figure:
    """Accuracy delta by position x factor/std, one panel per op and shot count (never averaged over shots)
    nor over prompt methods: CoOp by default, or ``prompt_method``; cells whose change survives
    Benjamini-Hochberg control at ``fdr`` are framed."""
    table_dir = store.table_path(reports_dir, "corruptions")
    corruptions = read_nonempty(reports_dir, "corruptions")
    producer = f"`nemesis corrupt --dataset {dataset}`"
    corruptions = _filter(
        corruptions,
        table_dir,
        producer,
        dataset=dataset,
        backbone=backbone,
        shots=None if shots is None else int(shots),
    )
    prompt_method = _default_prompt_method(corruptions, prompt_method)
    corruptions = _filter(corruptions, table_dir, producer, prompt_method=prompt_method)
    regularizer = _default_regularizer(corruptions, regularizer)
    corruptions = _filter(corruptions, table_dir, producer, regularizer=regularizer)
    corruptions = analysis.with_run_settings(corruptions, store.read_table(reports_dir, "runs"))
    analysis.refuse_pooled_settings(
        analysis.rows_for_view(corruptions), analysis.GROUP_COLUMNS, f"corruptions of {dataset} in {table_dir}"
    )
    present = sorted(int(k) for k in corruptions["shots"].unique())
    n_seeds = corruptions["seed"].nunique()
    context = " · ".join(
        [plots.dataset_label(dataset), *sorted(map(str, corruptions["backbone"].unique())),
         "one row per shot count" if len(present) > 1 else f"{present[0]}-shot", plots.regularizer_label(regularizer),
         f"mean over {n_seeds} seed{'s' if n_seeds != 1 else ''} and reps"]
    )  # fmt: skip
    title = f"Accuracy change from corrupting one context vector\n{context}"
    return plots.plot_heatmap(corruptions, dataset=dataset, regularizer=regularizer, title=title, fdr=fdr)


def _match_run_id(run_id: str, known: Iterable[str]) -> str | None:
    """The run id itself, or the only known id it is a prefix of."""
    known = set(known)
    if run_id in known:
        return run_id
    matches = sorted(k for k in known if k.startswith(run_id))
    if len(matches) > 1:
        raise ConfigError(f"run id prefix {run_id!r} is ambiguous: {', '.join(matches)}")
    return matches[0] if matches else None


def checkpoint_norms(checkpoint: Path | str) -> list[float]:
    """Per-position L2 norms of a saved prompt (prompt.safetensors), read with numpy; CSC averages classes."""
    from safetensors.numpy import load_file

    path = Path(checkpoint)
    path = path / "prompt.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise NoDataError(f"no prompt artifact at {path}; train the run again with `nemesis train`")
    ctx = load_file(str(path))["ctx"].astype(np.float64)  # (n_ctx, width) or (n_cls, n_ctx, width)
    norms = np.linalg.norm(ctx, axis=-1)  # (n_ctx,) or (n_cls, n_ctx)
    if norms.ndim == 2:
        norms = norms.mean(axis=0)  # mean of per-class norms, as nemesis.position_norms
    return [float(n) for n in norms]


def run_norms(reports_dir: Path | str, run_id: str) -> tuple[str, pd.DataFrame]:
    """(full run id, rows with identity columns, position and norm): last trajectory epoch, else the checkpoint."""
    traj = store.read_table(reports_dir, "trajectories")
    runs = store.read_table(reports_dir, "runs")
    full = _match_run_id(run_id, [*traj["run_id"], *runs["run_id"]])
    if full is None:
        known = ", ".join(sorted(set(runs["run_id"]) | set(traj["run_id"]))) or "none"
        raise NoDataError(
            f"no run {run_id!r} in {store.table_path(reports_dir, 'runs')} or {store.table_path(reports_dir, 'trajectories')} "
            f"(run ids: {known}); run {PRODUCERS['runs']} first"
        )
    rows = traj[(traj["run_id"] == full) & (traj["position"] >= 0)]
    if not rows.empty:
        rows = rows[rows["epoch"] == rows["epoch"].max()]
        return full, rows[[*schema.IDENTITY_COLUMNS, "position", "norm"]].reset_index(drop=True)
    run = runs[runs["run_id"] == full].iloc[-1]
    norms = checkpoint_norms(run["checkpoint"])
    identity = {c: run[c] for c in schema.IDENTITY_COLUMNS}
    return full, pd.DataFrame([{**identity, "position": i, "norm": n} for i, n in enumerate(norms)])


def norms_figure(reports_dir: Path | str, run_id: str) -> Figure:
    """Per-position norms of a trained prompt; positions where shrinking raised accuracy highlighted."""
    full, norms = run_norms(reports_dir, run_id)
    corruptions = store.read_table(reports_dir, "corruptions")
    highlight: list[int] = []
    note = "no corruption sweep yet: `nemesis corrupt` marks the Low-Norm positions"
    if (corruptions["run_id"] == full).any():
        highlight = analysis.low_norm_positions(corruptions, full)
        note = f"{len(highlight)} of {norms['position'].nunique()} positions: shrinking raised test accuracy"
    first = norms.iloc[0]
    context = " · ".join(
        [plots.regularizer_label(first["regularizer"]), plots.dataset_label(first["dataset"]), str(first["backbone"]),
         f"{int(first['shots'])}-shot", f"seed {int(first['seed'])}", f"run {full}"]
    )  # fmt: skip
    title = f"Per-position norms of the learned context\n{context}\n{note}"
    return plots.plot_norms(norms, highlight=highlight, title=title)


# --------------------------------------------------------------------------- all at once


def render_all(
    reports_dir: Path | str,
    out_dir: Path | str | None = None,
    format: str = "png",
    max_per_kind: int | None = 24,
) -> list[Path]:
    """Render every figure whose data exists into `out_dir` (default reports/figures); returns the paths.

    Frequency (all corruptions), a trajectory figure (and its per-position version) per
    (dataset, shots, seed, backbone), a heatmap per dataset with corruptions, and norms per run
    (runs with a corruption sweep first). `max_per_kind` bounds the figures of each kind.
    """
    format = check_format(format)
    out_dir = Path(out_dir) if out_dir is not None else Path(reports_dir) / FIGURES_FOLDER
    corruptions = store.read_table(reports_dir, "corruptions")
    traj = store.read_table(reports_dir, "trajectories")
    runs = store.read_table(reports_dir, "runs")
    jobs: list[tuple[str, Callable[[], Figure]]] = []

    def limited(items: list) -> list:
        if max_per_kind is not None and len(items) > max_per_kind:
            logger.info("render_all: %d figures of one kind, rendering the first %d", len(items), max_per_kind)
            return items[:max_per_kind]
        return items

    if not corruptions.empty:
        jobs.append((figure_name("frequency"), lambda: frequency_figure(reports_dir)))
    if not traj.empty:
        splits = (
            traj[["dataset", "shots", "seed", "backbone"]]
            .drop_duplicates()
            .sort_values(["dataset", "shots", "seed", "backbone"])
        )
        several = splits.duplicated(["dataset", "shots", "seed"], keep=False)
        for (dataset, shots, seed, backbone), dup in limited(
            list(zip(splits.itertuples(index=False, name=None), several))
        ):
            for per_position in (False, True):
                name = figure_name("trajectory", dataset=dataset, shots=shots, seed=seed, per_position=per_position)
                name = f"{name}_{backbone}" if dup else name
                jobs.append(
                    (
                        name,
                        lambda d=dataset, k=shots, s=seed, b=backbone, p=per_position: trajectory_figure(
                            reports_dir, d, k, s, b, p
                        ),
                    )
                )
    if not corruptions.empty:
        for dataset in limited(sorted(corruptions["dataset"].unique())):
            jobs.append((figure_name("heatmap", dataset=dataset), lambda d=dataset: heatmap_figure(reports_dir, d)))
    run_ids = list(dict.fromkeys([*corruptions["run_id"], *runs["run_id"], *traj["run_id"]]))
    for run_id in limited(run_ids):
        jobs.append((figure_name("norms", run_id=run_id), lambda r=run_id: norms_figure(reports_dir, r)))

    paths = []
    for name, build in jobs:
        try:
            fig = build()
        except (NoDataError, ConfigError) as error:  # e.g. no norm-reducing corruption: nothing to draw
            logger.warning("skipped figure %s: %s", name, error)
            continue
        paths.append(save(fig, out_dir / f"{name}.{format}", format))
    return paths


__all__ = [
    "FIGURE_FORMATS",
    "checkpoint_norms",
    "figure_name",
    "figure_path",
    "frequency_figure",
    "heatmap_figure",
    "norms_figure",
    "render_all",
    "resolve_output",
    "run_norms",
    "save",
    "trajectory_figure",
]
