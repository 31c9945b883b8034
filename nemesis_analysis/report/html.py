"""One self-contained HTML file from a report's parts: jinja2 template, figures as base64 PNG, no external resources.

Torch-free. The template (``templates/study.html.j2``, package data) holds the layout and its inline
CSS; this module turns tables, result tables and figures into plain view dicts for it. Tables read
without JavaScript; the file loads nothing from the network, so it reads offline and as an attachment.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import jinja2
import pandas as pd
from matplotlib.figure import Figure

from nemesis_analysis.report import paper
from nemesis_analysis.report.tables import AVERAGE, ResultTable

TEMPLATE = "study.html.j2"
FIGURE_DPI = 96
READ_OFF_PLOT_MARK = "†"
OMEGA_MARK = "ω?"


@dataclass
class FigureView:
    title: str
    uri: str = ""  # data:image/png;base64,...
    skipped: str = ""  # why the figure is not drawn (no rows for it, ...)


def number(value, digits: int = 2) -> str:
    """A float with ``digits`` decimals, "–" for NaN or None; other values as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def figure_view(title: str, build) -> FigureView:
    """Draw ``build()`` (a matplotlib Figure) into a PNG data URI; an error of ours becomes the reason it is skipped."""
    from nemesis_analysis.errors import NemesisError

    try:
        fig = build()
    except NemesisError as error:
        return FigureView(title, skipped=str(error))
    return FigureView(title, uri=figure_uri(fig))


def figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    finally:
        fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def frame_view(frame: pd.DataFrame, digits: int = 2) -> dict:
    """{"columns": [...], "rows": [[text, ...], ...]} of a DataFrame (floats with ``digits`` decimals)."""
    rows = [[number(v, digits) for v in row] for row in frame.itertuples(index=False, name=None)]
    return {"columns": [str(c) for c in frame.columns], "rows": rows}


def _read_off_plot(kind: str) -> bool:
    """True where the paper's values of this table were read off a figure (every published row is)."""
    if kind not in paper.PAPER_TABLES:
        return False
    return bool(paper.load(kind)["read_off_plot"].all())


def comparison_view(table: ResultTable) -> dict:
    """The cells the paper reports, one line each: row, column, ours (mean ± std, n), paper (flagged), Δ."""
    off_plot = _read_off_plot(table.kind)
    lines = []
    for row in table.rows:
        for column in table.columns:
            cell = table.cell(row, column)
            if math.isnan(cell.paper):
                continue
            weight = table.keys.get(column, (None, None, math.nan, None))[
                2
            ]  # (prompt method, regularizer, weight, part)
            omega = table.kind in ("base2new", "dg") and not pd.isna(weight)
            ours = cell.note or (f"{cell.mean:.2f}" if math.isnan(cell.std) else f"{cell.mean:.2f} ± {cell.std:.2f}")
            delta = math.nan if cell.note else cell.diff
            lines.append({
                "row": row, "column": column, "ours": ours, "n": cell.n_seeds if not cell.note else "",
                "paper": f"{cell.paper:.2f}", "delta": f"– ({cell.paper_note})" if cell.paper_note else number(delta), "sign": "" if math.isnan(delta) else "up" if delta >= 0 else "down",
                "flags": " ".join([READ_OFF_PLOT_MARK] * off_plot + [OMEGA_MARK] * omega),
            })  # fmt: skip
    return {"title": table.title, "kind": table.kind, "lines": lines, "notes": list(table.notes),
            "read_off_plot": off_plot, "omega": table.kind in ("base2new", "dg")}  # fmt: skip


def result_table_view(table: ResultTable) -> dict:
    """Our whole table: one line per dataset (the average last), one column per method label."""
    rows = []
    for row in table.rows:
        cells = []
        for column in table.columns:
            cell = table.cell(row, column)
            text = cell.note or (f"{cell.mean:.2f}" if math.isnan(cell.std) else f"{cell.mean:.2f} ± {cell.std:.2f}")
            cells.append(text if cell.note else f"{text} (n={cell.n_seeds})")
        rows.append({"name": row, "cells": cells, "average": row == AVERAGE})
    return {"title": table.title, "columns": list(table.columns), "rows": rows}


def seed_view(summary: pd.DataFrame) -> dict:
    """The per-seed table: row, column, each seed, n, mean ± std, 95% interval."""
    seeds = [c for c in summary.columns if str(c).startswith("seed ")]
    lines = []
    for record in summary.to_dict("records"):
        interval = "–" if math.isnan(record["ci_low"]) else f"[{record['ci_low']:.2f}, {record['ci_high']:.2f}]"
        mean_std = number(record["mean"]) + ("" if math.isnan(record["std"]) else f" ± {record['std']:.2f}")
        lines.append(
            [record["row"], record["column"], *[number(record[s]) for s in seeds], str(record["n"]), mean_std, interval]
        )
    return {"columns": ["dataset", "column", *seeds, "n", "mean ± std", "95% interval (t)"], "rows": lines}


def environment() -> jinja2.Environment:
    loader = jinja2.PackageLoader("nemesis_analysis.report", "templates")
    env = jinja2.Environment(
        loader=loader, autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined
    )
    env.filters["number"] = number
    return env


def render_html(context: dict) -> str:
    """The report's HTML from its context (see study.report.report_context for the keys)."""
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            **context, read_off_plot_mark=READ_OFF_PLOT_MARK, omega_mark=OMEGA_MARK, omega_caveat=paper.OMEGA_CAVEAT
        )
    )
