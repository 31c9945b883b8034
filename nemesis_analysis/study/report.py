"""A study's one-file HTML report: what was run, the paper's tables beside ours, per-seed statistics, figures, manifest.

Written to ``REPORTS/studies/<name>/report.html`` by ``nemesis study report`` and at the end of
``nemesis study run``; ``nemesis demo`` writes one for the demo. The numbers come from the same library
calls as ``nemesis summary --table`` and ``nemesis plot`` (report.tables, report.figures); the HTML is built
by :mod:`nemesis_analysis.report.html` from a jinja2 template.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path

import pandas as pd

from nemesis_analysis.errors import NemesisError
from nemesis_analysis.report import figures, figures_protocols, html, manifest, plots, seeds, tables
from nemesis_analysis.storage import fsio, store
from nemesis_analysis.study.outputs import study_output_dir
from nemesis_analysis.study.plan import Plan, make_plan
from nemesis_analysis.study.spec import Study
from nemesis_analysis.study.status import count_states, failures, job_states

REPORT_FILE = "report.html"
MAX_FIGURES_PER_KIND = 6  # trajectories and heatmaps: the first splits / datasets


def report_path(study: Study) -> Path:
    return study_output_dir(study) / REPORT_FILE


def _table_kinds(runs: pd.DataFrame, evaluations: pd.DataFrame) -> list[str]:
    """The paper tables this study has rows for (few-shot from runs, the others from evaluations)."""
    kinds = []
    if (
        not runs.empty
        and (runs.get("protocol", pd.Series("fewshot", index=runs.index)).fillna("fewshot") == "fewshot").any()
    ):
        kinds.append("fewshot")
    if not evaluations.empty:
        kinds += [k for k in ("base2new", "dg", "crossdataset") if (evaluations["protocol"] == k).any()]
    return kinds


def result_tables(reports: Path) -> tuple[list[dict], list[str]]:
    """For each paper table with rows: our table, its comparison with the paper, and the per-seed summary."""
    runs, evaluations = store.read_table(reports, "runs"), store.read_table(reports, "evaluations")
    views, problems = [], []
    for kind in _table_kinds(runs, evaluations):
        try:
            table = tables.compare_paper(tables.build(kind, runs, evaluations))
            summary = seeds.seed_summary(tables.per_seed_values(kind, runs, evaluations))
        except NemesisError as error:
            problems.append(f"{kind}: {error}")
            continue
        views.append({"kind": kind, "ours": html.result_table_view(table), "paper": html.comparison_view(table),
                      "seeds": html.seed_view(summary)})  # fmt: skip
    return views, problems


def _splits(reports: Path) -> list[tuple]:
    traj = store.read_table(reports, "trajectories")
    if traj.empty:
        return []
    splits = traj[["dataset", "shots", "seed", "backbone"]].drop_duplicates().sort_values(["dataset", "shots", "seed"])
    return list(splits.itertuples(index=False, name=None))[:MAX_FIGURES_PER_KIND]


def figure_views(reports: Path) -> list[html.FigureView]:
    """Frequency (all classes, and base vs new), trajectories per split, heatmaps per dataset (and class subset)."""
    corruptions = store.read_table(reports, "corruptions")
    views = []
    if not corruptions.empty:
        if (corruptions["eval_classes"] == "all").any():
            views.append(html.figure_view("Low-Norm Effect frequency", lambda: figures.frequency_figure(reports)))
        if corruptions["eval_classes"].isin(["base", "new"]).any():
            views.append(
                html.figure_view(
                    "Low-Norm Effect on base vs new classes", lambda: figures_protocols.base_new_figure(reports)
                )
            )
    for dataset, shots, seed, backbone in _splits(reports):
        for per_position in (False, True):
            what = "per-position norms" if per_position else "norm and accuracy"
            title = f"Trajectory ({what}): {dataset} {int(shots)}-shot seed {int(seed)} ({backbone})"
            views.append(html.figure_view(title, lambda d=dataset, k=shots, s=seed, b=backbone, p=per_position:
                                          figures.trajectory_figure(reports, d, k, s, b, p)))  # fmt: skip
    for dataset in sorted(corruptions["dataset"].unique())[:MAX_FIGURES_PER_KIND] if not corruptions.empty else []:
        subsets = [
            c
            for c in ("all", "base", "new")
            if ((corruptions["dataset"] == dataset) & (corruptions["eval_classes"] == c)).any()
        ]
        for subset in subsets:
            if subset == "all":
                views.append(
                    html.figure_view(f"Heatmap: {dataset}", lambda d=dataset: figures.heatmap_figure(reports, d))
                )
            else:
                views.append(
                    html.figure_view(
                        f"Heatmap: {dataset}, {subset} classes",
                        lambda d=dataset, c=subset: _subset_heatmap(corruptions, d, c),
                    )
                )
    return views


def _subset_heatmap(corruptions: pd.DataFrame, dataset: str, classes: str):
    """The heatmap of a base2new sweep on one class subset (the rows without a Nemesis term, else the first)."""
    rows = corruptions[(corruptions["dataset"] == dataset) & (corruptions["eval_classes"] == classes)]
    regularizers = sorted(rows["regularizer"].unique())
    regularizer = "coop" if "coop" in regularizers else regularizers[0]
    rows = rows[rows["regularizer"] == regularizer].assign(eval_classes="all")  # the figure draws the "all" view
    prompt = ", ".join(sorted(rows["prompt_method"].unique()))
    title = (
        f"Accuracy change from corrupting one context vector\n{dataset} · {prompt} · {regularizer} · {classes} classes"
    )
    return plots.plot_heatmap(rows, dataset=dataset, regularizer=regularizer, title=title)


def _grid_lines(study: Study) -> list[tuple[str, str]]:
    grid = [(f"grid.{f.name}", _text(getattr(study.grid, f.name))) for f in dataclasses.fields(study.grid)]
    extra = [("run settings", _text(study.base))]
    extra += [(f"variants.{name}", _text(value)) for name, value in study.variants.items()]
    if study.corrupt is not None:
        extra.append(("corrupt", _text({k: v for k, v in dataclasses.asdict(study.corrupt).items() if v is not None})))
    if study.evaluate is not None:
        extra.append(("evaluate", _text(dataclasses.asdict(study.evaluate))))
    return (
        grid
        + extra
        + [("outputs.reports", str(study.outputs.reports)), ("outputs.checkpoints", str(study.outputs.checkpoints))]
    )


def _text(value) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return (
            "; ".join(
                f"{k} = {_text(v) if not isinstance(v, (tuple, list)) else '[' + _text(v) + ']'}"
                for k, v in value.items()
            )
            or "–"
        )
    if dataclasses.is_dataclass(value):
        return " / ".join(str(v) for v in dataclasses.asdict(value).values())
    return "–" if value is None else str(value)


def run_section(plan: Plan) -> dict:
    """Job counts by kind and state, the failed and blocked jobs with their errors, the plan's run ids."""
    states = job_states(plan)
    return {
        "counts": html.frame_view(count_states(states, ["kind"]), digits=0),
        "failures": html.frame_view(failures(states)),
        "n_jobs": len(plan.jobs),
        "n_done": int((states["state"] == "done").sum()) if not states.empty else 0,
    }


def planned_runs(plan: Plan) -> dict[str, tuple[str, dict]]:
    """run_id -> (label, planned config) of every train job, in plan order."""
    return {job.run_id: (job.label, job.payload["config"]) for job in plan.jobs if job.kind == "train"}


def report_context(study: Study, smoke: bool = False, plan: Plan | None = None) -> dict:
    """Everything the template shows, as plain values."""
    plan = plan or make_plan(study)
    reports = study.outputs.reports
    result_views, problems = result_tables(reports)
    source = study.path.read_text(encoding="utf-8") if study.path is not None and study.path.is_file() else ""
    configured = f"{study.outputs.device} ({study.resources.num_gpus:g} GPU, {study.resources.num_cpus:g} CPU per job)"
    return {
        "study": study, "smoke": smoke, "study_file": str(study.path or ""), "study_source": source,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "grid": _grid_lines(study), "run": run_section(plan), "tables": result_views, "table_problems": problems,
        "figures": figure_views(reports), "manifest": manifest.build_manifest(planned_runs(plan), study.outputs.checkpoints, configured),
        "json": _json_text,
    }  # fmt: skip


def _json_text(value) -> str:
    import json

    return json.dumps(
        value, indent=1, sort_keys=True, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)
    )


def write_study_report(study: Study, smoke: bool = False, plan: Plan | None = None) -> Path:
    """Write ``REPORTS/studies/<name>/report.html``; returns its path."""
    text = html.render_html(report_context(study, smoke, plan))
    return fsio.atomic_write_text(report_path(study), text, "the study report")
