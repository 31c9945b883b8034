"""Builds the paper's result tables (few-shot, base-to-new, domain generalization, cross-dataset) from runs and evaluations.

Every builder takes the ``runs`` and ``evaluations`` tables as DataFrames (torch-free) and returns a
:class:`ResultTable`: one row per dataset plus an "average" row, one column per regularizer (and shot count
or split), and in each cell the mean and sample std over seeds, the number of seeds and the 95% Student-t
interval of the mean (none with one seed). A cell without
a run says "no run"; an average over datasets is given only when every dataset row has the cell
("incomplete" otherwise). :func:`compare_paper` adds the published value and the difference, and
:func:`render` writes Markdown, LaTeX or CSV.

Rules: base-to-new accuracies B (base classes) and N (new classes) are each averaged over seeds first,
then ``H = 2BN / (B + N)``; the average row's H is the harmonic mean of the averaged B and N. The
average row's std is over seeds of the per-seed average across datasets (seeds that every dataset has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nemesis_analysis import stats
from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.report import analysis, paper
from nemesis_analysis.storage import schema

TABLE_KINDS: tuple[str, ...] = ("fewshot", "base2new", "dg", "crossdataset")
FORMATS: tuple[str, ...] = ("md", "latex", "csv")
AVERAGE = "average"
NO_RUN = "no run"


@dataclass
class Cell:
    """One table cell: mean, sample std (NaN with one seed) and seeds, or a note instead of a value."""

    mean: float = math.nan
    std: float = math.nan
    n_seeds: int = 0
    note: str = ""  # "no run", "incomplete (k of n datasets)", ...
    paper: float = math.nan  # the published value, when compared
    paper_note: str = ""  # why the published value is shown without a difference ("" when comparable)

    @property
    def diff(self) -> float:
        return math.nan if self.paper_note else self.mean - self.paper

    @property
    def ci95(self) -> tuple[float, float]:
        """The 95% Student-t interval of the mean over seeds (NaN with one seed, or without a std: H cells)."""
        return stats.t_interval_from(self.mean, self.std, self.n_seeds)


@dataclass
class ResultTable:
    """Rows (datasets, then "average"), columns (regularizer labels) and their cells."""

    kind: str
    title: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    compared: bool = False
    keys: dict[str, tuple] = field(
        default_factory=dict
    )  # column -> (prompt_method, regularizer, weight, shots or B/N/H)
    backbone: str = ""  # the one backbone of the table's runs

    def cell(self, row: str, column: str) -> Cell:
        return self.cells.get((row, column), Cell(note=NO_RUN))


def harmonic_mean(base: float, new: float) -> float:
    """H = 2BN / (B + N); NaN when either is NaN, 0 when both are 0."""
    if pd.isna(base) or pd.isna(new):
        return math.nan
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def seed_cell(values: pd.Series) -> Cell:
    """Mean, sample std and count of per-seed values (one value per seed)."""
    values = values.dropna()
    if values.empty:
        return Cell(note=NO_RUN)
    return Cell(float(values.mean()), analysis.sample_std(values), int(values.size))


# --------------------------------------------------------------------------- inputs


def _weights(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """The Nemesis weight (runs.norm_weight) of each row's run; NaN for CoOp or an unknown run."""
    if "norm_weight" not in runs.columns:
        return pd.Series(math.nan, index=frame.index)
    weights = runs.drop_duplicates("run_id", keep="last").set_index("run_id")["norm_weight"]
    weight = frame["run_id"].map(weights).astype(float)
    return weight.where(frame["regularizer"] != "coop")


def column_label(regularizer: str, weight: float, prompt_method: str = "coop") -> str:
    """'coop', 'nemesis-pun (weight 1)', 'cocoop', 'cocoop + nemesis-pun (weight 1)': runs of different
    prompt methods or Nemesis weights are different columns."""
    label = regularizer if pd.isna(weight) else f"{regularizer} (weight {weight:g})"
    if prompt_method in ("coop", "", None) or pd.isna(prompt_method):
        return label
    return prompt_method if regularizer == "coop" else f"{prompt_method} + {label}"


# What a column label always names; any other setting that differs between runs of a cell is appended.
_LABELLED = ("prompt_method", "regularizer", "norm_weight")


def _column_labels(frame: pd.DataFrame, runs: pd.DataFrame, by: list[str]) -> pd.Series:
    """One label per row: its prompt method, regulariser and weight, plus ``[setting value, ...]`` for every
    other setting that differs between runs that would share a cell (:func:`analysis.identity_by`)."""
    weight = _weights(frame, runs)
    labels = pd.Series([column_label(r, w, p) for r, w, p in zip(frame["regularizer"], weight, frame["prompt_method"])],
                       index=frame.index, dtype=object)  # fmt: skip
    joined = analysis.with_run_settings(frame, runs)
    keys = [*by, *_LABELLED]
    extra = analysis.identity_by(joined, keys)[len(keys) :]
    for column in extra:
        labels = labels + " [" + column + " " + joined[column].astype(str) + "]"
    return labels


def _column_keys(frame: pd.DataFrame, runs: pd.DataFrame, extra: pd.Series | None = None) -> dict[str, tuple]:
    """{column label: (prompt_method, regularizer, weight, extra)} for matching published values."""
    weight = _weights(frame, runs)
    extras = extra if extra is not None else pd.Series(None, index=frame.index)
    return {
        label: (p, m, w, x)
        for label, p, m, w, x in zip(frame["column"], frame["prompt_method"], frame["regularizer"], weight, extras)
    }


def _one_backbone(frame: pd.DataFrame, what: str) -> str:
    backbones = sorted(frame["backbone"].dropna().unique())
    if len(backbones) > 1:
        raise ConfigError(
            f"{what} exist for several backbones ({', '.join(backbones)}); filter the rows to one backbone"
        )
    return backbones[0] if backbones else ""


def _per_seed(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """One value per key and seed (several runs of a seed, e.g. reruns, are averaged)."""
    return frame.groupby([*keys, "seed"], sort=True, dropna=False)[value].mean().reset_index()


def _evaluations(evaluations: pd.DataFrame, runs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    analysis.require_columns(
        evaluations, [*schema.KEYS["evaluations"], "protocol", "acc", "seed", "regularizer"], "evaluations table"
    )
    table = schema.with_column_defaults("evaluations", evaluations)
    table = table.drop_duplicates(list(schema.KEYS["evaluations"]), keep="last")
    table = table[table["protocol"] == protocol]
    if table.empty:
        raise NoDataError(f"no evaluations with protocol {protocol}; run `nemesis train --protocol {protocol}` first")
    _one_backbone(table, f"{protocol} evaluations")
    by = ["dataset"] if protocol == "base2new" else ["dataset", "eval_dataset"]
    return table.assign(column=_column_labels(table, runs, by))


# --------------------------------------------------------------------------- averages


def _fill(table: ResultTable, per_seed: pd.DataFrame, row_col: str, column_col: str, value: str) -> None:
    """Cells of the dataset rows from per-seed values, then the average row."""
    for (row, column), values in per_seed.groupby([row_col, column_col], sort=True):
        table.cells[(str(row), str(column))] = seed_cell(values[value])
    datasets = [r for r in table.rows if r != AVERAGE]
    for column in per_seed[column_col].unique():
        table.cells[(AVERAGE, column)] = _average_cell(table, per_seed, datasets, row_col, column_col, column, value)


def _average_cell(table, per_seed, datasets, row_col, column_col, column, value) -> Cell:
    have = [d for d in datasets if not table.cell(d, column).note]
    if len(have) < len(datasets):
        return Cell(note=f"incomplete ({len(have)} of {len(datasets)} datasets)")
    mean = float(np.mean([table.cell(d, column).mean for d in datasets]))
    rows = per_seed[(per_seed[column_col] == column) & per_seed[row_col].isin(datasets)]
    counts = rows.groupby("seed")[row_col].nunique()
    common = counts[counts == len(datasets)].index
    per_seed_average = rows[rows["seed"].isin(common)].groupby("seed")[value].mean()
    return Cell(mean, analysis.sample_std(per_seed_average), int(len(common)))


# --------------------------------------------------------------------------- builders


def fewshot(runs: pd.DataFrame, evaluations: pd.DataFrame | None = None) -> ResultTable:
    """Final test accuracy per dataset (rows) and regularizer x shots (columns), from the runs table."""
    analysis.require_columns(
        runs, ["run_id", "dataset", "backbone", "shots", "seed", "regularizer", "final_test_acc"], "runs table"
    )
    table = schema.with_column_defaults("runs", runs).drop_duplicates("run_id", keep="last")
    if "protocol" in table.columns:
        table = table[table["protocol"].fillna("fewshot") == "fewshot"]
    if table.empty:
        raise NoDataError("no few-shot runs; run `nemesis train` first")
    _one_backbone(table, "runs")
    table = table.assign(
        column=_column_labels(table, runs, ["dataset", "shots"])
        + " "
        + table["shots"].astype(int).astype(str)
        + "-shot"
    )
    order = table.sort_values(["regularizer", "shots"])["column"].drop_duplicates().tolist()
    rows = sorted(table["dataset"].unique()) + [AVERAGE]
    out = ResultTable("fewshot", "Few-shot accuracy (%)", rows, order, keys=_column_keys(table, runs, table["shots"].astype(int)),
                      backbone=_one_backbone(table, "runs"))  # fmt: skip
    _fill(out, _per_seed(table, ["dataset", "column"], "final_test_acc"), "dataset", "column", "final_test_acc")
    return out


def base2new(evaluations: pd.DataFrame, runs: pd.DataFrame | None = None) -> ResultTable:
    """Base, new and harmonic-mean accuracy per trained dataset (rows) and regularizer (columns)."""
    runs = runs if runs is not None else pd.DataFrame(columns=["run_id"])
    table = _evaluations(evaluations, runs, "base2new")
    table = table[table["eval_dataset"] == table["dataset"]]
    methods = sorted(table["column"].unique())
    rows = sorted(table["dataset"].unique()) + [AVERAGE]
    columns = [f"{m} {part}" for m in methods for part in ("B", "N", "H")]
    keys = {
        f"{label} {part}": (p, m, w, part)
        for label, (p, m, w, _) in _column_keys(table, runs).items()
        for part in ("B", "N", "H")
    }
    out = ResultTable("base2new", "Base-to-new accuracy (%): base B, new N, harmonic mean H = 2BN/(B+N)", rows, columns, keys=keys,
                      backbone=_one_backbone(table, "base2new evaluations"))  # fmt: skip
    for classes, part in (("base", "B"), ("new", "N")):
        split = table[table["eval_classes"] == classes]
        split = split.assign(column=split["column"] + f" {part}")
        _fill(out, _per_seed(split, ["dataset", "column"], "acc"), "dataset", "column", "acc")
    for method in methods:
        for row in rows:
            base, new = out.cell(row, f"{method} B"), out.cell(row, f"{method} N")
            if base.note or new.note:
                out.cells[(row, f"{method} H")] = Cell(note=base.note or new.note)
            else:
                out.cells[(row, f"{method} H")] = Cell(
                    harmonic_mean(base.mean, new.mean), math.nan, min(base.n_seeds, new.n_seeds)
                )
    out.notes.append(
        "H is computed from B and N averaged over seeds (no std); the average row's H from the averaged B and N."
    )
    return out


def _transfer(evaluations: pd.DataFrame, runs: pd.DataFrame | None, protocol: str, title: str) -> ResultTable:
    runs = runs if runs is not None else pd.DataFrame(columns=["run_id"])
    table = _evaluations(evaluations, runs, protocol)
    table = table[table["eval_classes"] == "all"]
    sources = sorted(table["dataset"].unique())
    targets = sorted(d for d in table["eval_dataset"].unique() if d not in sources)
    rows = [*sources, *targets, AVERAGE]
    out = ResultTable(protocol, title, rows, sorted(table["column"].unique()), keys=_column_keys(table, runs),
                      backbone=_one_backbone(table, f"{protocol} evaluations"))  # fmt: skip
    per_seed = _per_seed(table, ["eval_dataset", "column"], "acc")
    for (row, column), values in per_seed.groupby(["eval_dataset", "column"], sort=True):
        out.cells[(str(row), str(column))] = seed_cell(values["acc"])
    for column in out.columns:
        out.cells[(AVERAGE, column)] = _average_cell(out, per_seed, targets, "eval_dataset", "column", column, "acc")
    out.notes.append(f"Source dataset(s) {', '.join(sources)}; the average row is over the target datasets only.")
    return out


def dg(evaluations: pd.DataFrame, runs: pd.DataFrame | None = None) -> ResultTable:
    """Domain generalization: accuracy on the source (ImageNet) and each target variant per regularizer."""
    return _transfer(evaluations, runs, "dg", "Domain generalization accuracy (%)")


def crossdataset(evaluations: pd.DataFrame, runs: pd.DataFrame | None = None) -> ResultTable:
    """Cross-dataset transfer: accuracy on the source and on every other dataset per regularizer."""
    return _transfer(evaluations, runs, "crossdataset", "Cross-dataset accuracy (%)")


def per_seed_values(kind: str, runs: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """The per-seed values behind the dataset rows of table ``kind``: row, column, seed, value.

    Same rows, columns and filters as :func:`build`, so each cell's mean is the mean of its values here;
    a base-to-new H per seed is the harmonic mean of that seed's B and N (the table's H is that of the means).
    """
    if kind == "fewshot":
        table = runs.drop_duplicates("run_id", keep="last")
        if "protocol" in table.columns:
            table = table[table["protocol"].fillna("fewshot") == "fewshot"]
        labels = _column_labels(table, runs, ["dataset", "shots"])  # as fewshot() labels its columns
        table = table.assign(column=labels + " " + table["shots"].astype(int).astype(str) + "-shot")
        out = _per_seed(table, ["dataset", "column"], "final_test_acc").rename(columns={"final_test_acc": "value"})
        return out.rename(columns={"dataset": "row"})
    if kind not in TABLE_KINDS:
        raise ConfigError(f"unknown table {kind!r}; choose one of: {', '.join(TABLE_KINDS)}")
    table = _evaluations(evaluations, runs, kind)
    if kind != "base2new":
        table = table[table["eval_classes"] == "all"]
        return _per_seed(table, ["eval_dataset", "column"], "acc").rename(
            columns={"eval_dataset": "row", "acc": "value"}
        )
    table = table[table["eval_dataset"] == table["dataset"]]
    parts = {
        part: _per_seed(table[table["eval_classes"] == classes], ["dataset", "column"], "acc")
        for classes, part in (("base", "B"), ("new", "N"))
    }
    both = parts["B"].merge(parts["N"], on=["dataset", "column", "seed"], suffixes=("_b", "_n"))
    harmonic = both.assign(acc=[harmonic_mean(b, n) for b, n in zip(both["acc_b"], both["acc_n"])])
    parts["H"] = harmonic[["dataset", "column", "seed", "acc"]]
    frames = [frame.assign(column=frame["column"] + f" {part}") for part, frame in parts.items()]
    out = pd.concat(frames, ignore_index=True).rename(columns={"dataset": "row", "acc": "value"})
    return out[["row", "column", "seed", "value"]]


def build(kind: str, runs: pd.DataFrame, evaluations: pd.DataFrame) -> ResultTable:
    """The table ``kind`` (one of TABLE_KINDS) from the runs and evaluations tables."""
    if kind not in TABLE_KINDS:
        raise ConfigError(f"unknown table {kind!r}; choose one of: {', '.join(TABLE_KINDS)}")
    if kind == "fewshot":
        return fewshot(runs, evaluations)
    return {"base2new": base2new, "dg": dg, "crossdataset": crossdataset}[kind](evaluations, runs)


# --------------------------------------------------------------------------- the paper


def _paper_value(published: pd.DataFrame, kind: str, row: str, key: tuple) -> float:
    """The published value for our cell (row, column key), NaN when the paper has none.

    A row matches on prompt method and regulariser, and on the Nemesis weight where the paper states one
    (its "omega" label): CoOp runs are never set against the paper's CoCoOp numbers.
    """
    prompt_method, regularizer, weight, extra = key
    rows = published[(published["regularizer"] == regularizer) & (published["prompt_method"] == prompt_method)]
    if "norm_weight" in rows.columns:
        stated = rows["norm_weight"].notna()
        rows = rows[~stated | (rows["norm_weight"] == weight)] if not pd.isna(weight) else rows[~stated]
    if kind == "fewshot":
        rows = rows[(rows["dataset"] == row) & (rows["shots"] == extra)]
        column = "acc"
    elif kind == "dg":
        rows, column = rows[rows["eval_dataset"] == row], "acc"
    else:
        rows, column = rows[rows["dataset"] == row], {"B": "base", "N": "new", "H": "h"}[extra]
    return float(rows[column].iloc[0]) if len(rows) else math.nan


def _incomparable(table: ResultTable, row: str) -> str:
    """Why our cell and the paper's differ in what they measure (backbone, dataset set), or ""."""
    stated = paper.PAPER_BACKBONES.get(table.kind)
    if stated and table.backbone and table.backbone != stated:
        return f"other backbone: ours {table.backbone}, the paper's {stated}"
    ours = sorted(r for r in table.rows if r != AVERAGE)
    if row == AVERAGE and table.kind in ("fewshot", "base2new") and set(ours) != set(paper.PAPER_DATASETS):
        return f"other datasets: ours {', '.join(ours)}, the paper's {len(paper.PAPER_DATASETS)}"
    return ""


def compare_paper(table: ResultTable) -> ResultTable:
    """Add the published value to every cell the paper reports (NaN elsewhere), with its caveats."""
    published = paper.load(table.kind) if table.kind != "crossdataset" else None
    for row in table.rows:
        for column in table.columns:
            value = math.nan if published is None else _paper_value(published, table.kind, row, table.keys[column])
            if not math.isnan(value):
                cell = table.cells.setdefault((row, column), Cell(note=NO_RUN))
                cell.paper, cell.paper_note = value, _incomparable(table, row)
    table.compared = True
    sources = sorted(set(published[published["regularizer"] != "zero-shot"]["source"])) if published is not None else []
    table.notes += [f"Paper: {s}" for s in sources]
    if table.kind == "fewshot":
        table.notes.append("Paper values were read off a plot (+-0.1) and exist only for the 11-dataset average.")
    if table.kind in ("fewshot", "base2new"):
        n = len(table.rows) - 1
        table.notes.append(
            f"Our average row is over the {n} dataset(s) in this table; the paper's is over its full dataset set."
        )
    if table.kind in ("dg", "base2new"):
        table.notes.append(paper.OMEGA_CAVEAT)
    if table.kind == "crossdataset":
        table.notes.append("The paper publishes no cross-dataset numbers.")
    return table


# --------------------------------------------------------------------------- output


def cell_text(cell: Cell, pm: str = " ± ") -> str:
    """'71.23 ± 0.45 (n=3)' (analysis.format_mean_std and the seeds), or the cell's note."""
    if cell.note:
        return cell.note
    low, high = cell.ci95
    interval = "" if math.isnan(low) else f" {analysis.format_interval(low, high)}"
    return f"{analysis.format_mean_std(cell.mean, cell.std, sep=pm)} (n={cell.n_seeds}){interval}"


def _wide(table: ResultTable, pm: str = " ± ") -> tuple[list[str], list[list[str]]]:
    header = ["dataset"]
    for column in table.columns:
        header += [column, f"{column} paper", f"{column} Δ"] if table.compared else [column]
    body = []
    for row in table.rows:
        line = [row]
        for column in table.columns:
            cell = table.cell(row, column)
            line.append(cell_text(cell, pm))
            if table.compared:
                has = not math.isnan(cell.paper)
                line.append(analysis.format_cell(cell.paper))
                line.append(f"{cell.diff:+.2f}" if has and not cell.note and not cell.paper_note else
                            f"– ({cell.paper_note})" if has and cell.paper_note else "–")  # fmt: skip
        body.append(line)
    return header, body


def to_frame(table: ResultTable) -> pd.DataFrame:
    """Long numeric form: row, column, mean, std, n_seeds, ci95_low, ci95_high (95% Student-t interval of the
    mean over seeds), note (and paper, diff when compared)."""
    records = []
    for row in table.rows:
        for column in table.columns:
            cell = table.cell(row, column)
            low, high = cell.ci95
            record = {"row": row, "column": column, "mean": cell.mean, "std": cell.std, "n_seeds": cell.n_seeds,
                      "ci95_low": low, "ci95_high": high, "note": cell.note}  # fmt: skip
            if table.compared:
                record.update(paper=cell.paper, diff=cell.diff, paper_note=cell.paper_note)
            records.append(record)
    return pd.DataFrame(records)


def to_markdown(table: ResultTable) -> str:
    header, body = _wide(table)
    frame = pd.DataFrame(body, columns=header)
    notes = "".join(f"\n\n{note}" for note in table.notes)
    return f"{table.title}\n\n{analysis.format_table_markdown(frame)}{notes}\n"


def latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
    return "".join(replacements.get(ch, ch) for ch in text)


def to_latex(table: ResultTable) -> str:
    """A tabular environment (booktabs rules), one row per dataset, then the average row."""
    header, body = _wide(table, pm=" $\\pm$ ")
    escape = lambda text: text if "$\\pm$" in text else latex_escape(text)  # noqa: E731
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(h).replace("Δ", "$\\Delta$") for h in header) + " \\\\")
    lines.append("\\midrule")
    for line in body:
        if line[0] == AVERAGE:
            lines.append("\\midrule")
        cells = [escape(c).replace("–", "--") for c in line]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% {latex_escape(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"


def render(table: ResultTable, format: str) -> str:
    if format not in FORMATS:
        raise ConfigError(f"unknown table format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format == "csv":
        return to_frame(table).to_csv(index=False)
    return to_markdown(table) if format == "md" else to_latex(table)
