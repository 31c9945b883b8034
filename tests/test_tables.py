"""Paper tables from synthetic runs and evaluations, checked against hand-computed numbers."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from nemesis_analysis.report import paper, tables
from nemesis_analysis.storage import schema

IDENTITY = {
    "backbone": "RN50",
    "pretrained": "openai",
    "n_ctx": 16,
    "csc": False,
    "class_token_position": "end",
    "precision": "fp32",
}


def run(run_id, dataset, shots, seed, regularizer, acc, weight=1.0):
    return {**IDENTITY, "run_id": run_id, "dataset": dataset, "shots": shots, "seed": seed, "regularizer": regularizer,
            "final_test_acc": acc, "norm_weight": weight}  # fmt: skip


def evaluation(run_id, dataset, seed, regularizer, protocol, eval_dataset, classes, acc):
    return {**IDENTITY, "run_id": run_id, "dataset": dataset, "shots": 16, "seed": seed, "regularizer": regularizer,
            "protocol": protocol, "eval_dataset": eval_dataset, "eval_classes": classes, "acc": acc,
            "n_test": 100, "n_classes": 10}  # fmt: skip


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [
        run("a1", "dtd", 1, 1, "coop", 50.0), run("a2", "dtd", 1, 2, "coop", 54.0),
        run("b1", "eurosat", 1, 1, "coop", 70.0), run("b2", "eurosat", 1, 2, "coop", 80.0),
        run("c1", "dtd", 1, 1, "nemesis-pun", 60.0),  # no eurosat nemesis-pun run
        run("a1", "dtd", 1, 1, "coop", 52.0),  # a rerun of a1: the last row wins
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_fewshot_cells_and_average(runs):
    table = tables.fewshot(runs)
    assert table.rows == ["dtd", "eurosat", "average"]
    assert table.columns == ["coop 1-shot", "nemesis-pun (weight 1) 1-shot"]
    dtd = table.cell("dtd", "coop 1-shot")
    assert (dtd.mean, dtd.std, dtd.n_seeds) == (53.0, pytest.approx(math.sqrt(2)), 2)
    average = table.cell("average", "coop 1-shot")
    assert average.mean == pytest.approx((53.0 + 75.0) / 2)
    # Per-seed averages over datasets: seed 1 (52 + 70) / 2 = 61, seed 2 (54 + 80) / 2 = 67.
    assert average.std == pytest.approx(math.sqrt(18)) and average.n_seeds == 2
    assert table.cell("eurosat", "nemesis-pun (weight 1) 1-shot").note == "no run"
    assert table.cell("average", "nemesis-pun (weight 1) 1-shot").note == "incomplete (1 of 2 datasets)"
    text = tables.render(table, "md")
    assert "no run" in text and "53.00 ± 1.41 (n=2)" in text and " 0.00" not in text


def b2n_evaluations() -> pd.DataFrame:
    rows = []
    values = {
        ("dtd", 1): (80.0, 60.0),
        ("dtd", 2): (84.0, 64.0),
        ("eurosat", 1): (90.0, 50.0),
        ("eurosat", 2): (92.0, 54.0),
    }
    for (dataset, seed), (base, new) in values.items():
        rid = f"{dataset}{seed}"
        rows.append(evaluation(rid, dataset, seed, "coop", "base2new", dataset, "base", base))
        rows.append(evaluation(rid, dataset, seed, "coop", "base2new", dataset, "new", new))
    return pd.DataFrame(rows)


def test_base2new_harmonic_mean_from_seed_averages():
    table = tables.base2new(b2n_evaluations())
    assert table.columns == ["coop B", "coop N", "coop H"]
    b, n = 82.0, 62.0  # dtd, averaged over seeds first
    assert table.cell("dtd", "coop B").mean == b and table.cell("dtd", "coop N").mean == n
    assert table.cell("dtd", "coop H").mean == pytest.approx(2 * b * n / (b + n))
    # Not the mean of per-seed H values:
    per_seed = [2 * 80 * 60 / 140, 2 * 84 * 64 / 148]
    assert table.cell("dtd", "coop H").mean != pytest.approx(sum(per_seed) / 2, abs=1e-6)
    avg_b, avg_n = (82.0 + 91.0) / 2, (62.0 + 52.0) / 2
    assert table.cell("average", "coop B").mean == pytest.approx(avg_b)
    assert table.cell("average", "coop H").mean == pytest.approx(2 * avg_b * avg_n / (avg_b + avg_n))
    assert table.cell("average", "coop B").n_seeds == 2
    assert tables.harmonic_mean(80.0, 0.0) == 0.0 and math.isnan(tables.harmonic_mean(math.nan, 1.0))


def test_base2new_compare_paper_shows_published_values_and_caveat():
    # The paper's base-to-new numbers are CoCoOp's, averaged over the 11 datasets.
    cocoop = b2n_evaluations().assign(prompt_method="cocoop")
    everything = pd.concat(
        [cocoop.assign(dataset=d, eval_dataset=d, run_id=cocoop.run_id + d) for d in paper.PAPER_DATASETS]
    )
    table = tables.compare_paper(tables.base2new(everything))
    cell = table.cell("average", "cocoop H")
    assert cell.paper == 76.5 and cell.diff == pytest.approx(cell.mean - 76.5) and not cell.paper_note
    assert math.isnan(table.cell("dtd", "cocoop H").paper)
    text = tables.render(table, "md")
    assert "cocoop H paper" in text and "76.50" in text and paper.OMEGA_CAVEAT in text


def test_base2new_compare_never_pools_or_mislabels_prompt_methods():
    """CoOp and CoCoOp runs are two columns; CoOp is never set against CoCoOp's published numbers; a table over
    other datasets shows the paper's value without a difference and says why in the cell."""
    mixed = pd.concat([b2n_evaluations(), b2n_evaluations().assign(prompt_method="cocoop", acc=lambda f: f.acc - 10,
                                                                   run_id=lambda f: "c" + f.run_id)])  # fmt: skip
    table = tables.compare_paper(tables.base2new(mixed))
    assert table.columns == ["cocoop B", "cocoop N", "cocoop H", "coop B", "coop N", "coop H"]
    assert table.cell("dtd", "coop B").mean == 82.0 and table.cell("dtd", "cocoop B").mean == 72.0
    assert math.isnan(table.cell("average", "coop H").paper)  # the paper has no CoOp base-to-new row
    cell = table.cell("average", "cocoop H")
    assert (
        cell.paper == 76.5 and math.isnan(cell.diff) and cell.paper_note.startswith("other datasets: ours dtd, eurosat")
    )
    text = tables.render(table, "md")
    assert "– (other datasets: ours dtd, eurosat, the paper's 11)" in text
    frame = tables.to_frame(table)
    assert frame[(frame.row == "average") & (frame.column == "cocoop H")]["paper_note"].iloc[0] == cell.paper_note


def test_dg_rows_average_over_targets_and_paper():
    rows = []
    for seed, accs in ((1, (62.0, 55.0, 33.0)), (2, (64.0, 57.0, 35.0))):
        for target, acc in zip(("imagenet", "imagenetv2", "imagenet_sketch"), accs):
            rows.append(evaluation(f"r{seed}", "imagenet", seed, "coop", "dg", target, "all", acc))
    table = tables.compare_paper(tables.dg(pd.DataFrame(rows)))
    assert table.rows == ["imagenet", "imagenet_sketch", "imagenetv2", "average"]
    assert table.cell("imagenetv2", "coop").mean == 56.0
    assert table.cell("average", "coop").mean == pytest.approx((56.0 + 34.0) / 2)
    assert table.cell("imagenetv2", "coop").paper == 55.04
    assert table.cell("imagenet_sketch", "coop").diff == pytest.approx(34.0 - 32.64)


def test_crossdataset_has_no_paper_values():
    rows = [
        evaluation("r1", "imagenet", 1, "coop", "crossdataset", d, "all", a)
        for d, a in (("imagenet", 60.0), ("dtd", 40.0))
    ]
    table = tables.compare_paper(tables.crossdataset(pd.DataFrame(rows)))
    assert table.cell("dtd", "coop").mean == 40.0 and math.isnan(table.cell("dtd", "coop").paper)
    assert table.cell("average", "coop").mean == 40.0


def test_latex_structure(runs):
    text = tables.render(tables.compare_paper(tables.fewshot(runs)), "latex")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    depth = 0
    for ch in re.sub(r"\\[{}]", "", body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    rows = [line for line in body.splitlines() if line.endswith("\\\\")]
    assert [r.split(" & ")[0] for r in rows] == ["dataset", "dtd", "eurosat", "average"]
    assert all(r.count(" & ") == rows[0].count(" & ") for r in rows)
    assert "\\begin{tabular}" in body and "\\end{tabular}" in body and "nemesis-pun" in body


def test_csv_long_form(runs):
    frame = pd.read_csv(pd.io.common.StringIO(tables.render(tables.fewshot(runs), "csv")))
    row = frame[(frame["row"] == "dtd") & (frame["column"] == "coop 1-shot")].iloc[0]
    assert (row["mean"], row["n_seeds"]) == (53.0, 2)


def test_paper_values_match_the_published_markdown():
    fewshot = paper.load("fewshot")
    pan16 = fewshot[(fewshot["regularizer"] == "nemesis-pan") & (fewshot["shots"] == 16)].iloc[0]
    assert pan16["acc"] == 74.6 and pan16["read_off_plot"] and "read off the plot" in pan16["note"]
    dg = paper.load("dg")
    pun10 = dg[
        (dg["regularizer"] == "nemesis-pun") & (dg["norm_weight"] == 10) & (dg["eval_dataset"] == "imagenet_r")
    ].iloc[0]
    assert pun10["acc"] == 56.78 and not pun10["read_off_plot"] and "not confirmed" in pun10["note"]
    b2n = paper.load("base2new")
    pan20 = b2n[(b2n["regularizer"] == "nemesis-pan") & (b2n["norm_weight"] == 20)].iloc[0]
    assert (pan20["base"], pan20["new"], pan20["h"]) == (80.3, 73.9, 77.0)
    frequency = paper.load("frequency")
    assert frequency["count"].max() == 53
    assert frequency[(frequency["dataset"] == "oxford_pets") & (frequency["shots"] == 2)]["count"].item() == 53


def test_evaluations_schema():
    assert schema.KEYS["evaluations"] == ("run_id", "eval_dataset", "eval_classes")
    assert {"protocol", "eval_dataset", "eval_classes", "acc", "n_test", "n_classes"} <= set(
        schema.columns("evaluations")
    )
    assert set(schema.IDENTITY_COLUMNS) <= set(schema.columns("evaluations"))


def test_cells_give_the_student_t_interval_over_seeds(runs):
    from scipy import stats as scipy_stats

    table = tables.fewshot(runs)
    frame = tables.to_frame(table).set_index(["row", "column"])
    dtd = frame.loc[("dtd", "coop 1-shot")]
    low, high = scipy_stats.t.interval(0.95, 1, loc=53.0, scale=scipy_stats.sem([52.0, 54.0]))
    assert (dtd["ci95_low"], dtd["ci95_high"]) == pytest.approx((low, high), rel=1e-12)
    one_seed = frame.loc[("dtd", "nemesis-pun (weight 1) 1-shot")]
    assert math.isnan(one_seed["ci95_low"]) and math.isnan(one_seed["ci95_high"])
    assert f"53.00 ± 1.41 (n=2) [{low:.2f}, {high:.2f}]" in tables.render(table, "md")
