"""Low-Norm Effect frequency and seed aggregates, checked against hand-computed numbers."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.report import analysis

RUN_DEFAULTS = {
    "backbone": "ViT-B-16",
    "pretrained": "openai",
    "shots": 16,
    "regularizer": "coop",
    "n_ctx": 4,
    "csc": False,
    "class_token_position": "end",
    "precision": "fp32",
}


def corruption_row(
    run_id, dataset, seed, op, position, factor, delta, norm_before, norm_after, rep=0, acc_original=60.0, **overrides
):
    row = {"run_id": run_id, "dataset": dataset, "seed": seed, **RUN_DEFAULTS, **overrides}
    row.update(
        op=op,
        position=position,
        factor=factor,
        rep=rep,
        acc=acc_original + delta,
        acc_original=acc_original,
        delta=delta,
        norm_before=norm_before,
        norm_after=norm_after,
        low_norm_effect=bool(op != "none" and norm_after < norm_before and delta > 0),
        n_test=500,
    )
    return row


@pytest.fixture
def corruptions() -> pd.DataFrame:
    r = corruption_row
    rows = [
        # dtd, seed 1: reducing rows pos0 (+1.0, effect), pos1 (-0.5), replace pos2 (+0.2, effect).
        r("a1", "dtd", 1, "none", -1, np.nan, 0.0, 1.0, 1.0),  # baseline: excluded
        r("a1", "dtd", 1, "rescale", 0, 0.5, 1.0, 2.0, 1.0),
        r("a1", "dtd", 1, "rescale", 1, 0.5, -0.5, 2.0, 1.0),
        r("a1", "dtd", 1, "rescale", 1, 2.0, 3.0, 2.0, 4.0),  # norm grows: excluded
        r("a1", "dtd", 1, "replace", 2, 0.0, 0.2, 2.0, 0.0),
        # dtd, seed 2: pos0 first measured -1.0 then re-measured +2.0 (dedupe keeps the last).
        r("a2", "dtd", 2, "none", -1, np.nan, 0.0, 1.0, 1.0, acc_original=62.0),
        r("a2", "dtd", 2, "rescale", 0, 0.5, -1.0, 2.0, 1.0, acc_original=62.0),
        r("a2", "dtd", 2, "rescale", 1, 0.5, 0.0, 2.0, 1.0, acc_original=62.0),  # delta 0 is not an effect
        r("a2", "dtd", 2, "rescale", 1, 1.0, 1.0, 2.0, 2.0, acc_original=62.0),  # equal norm: excluded
        r("a2", "dtd", 2, "replace", 0, 1.0, 5.0, 2.0, 3.0, acc_original=62.0),  # norm grows: excluded
        r("a2", "dtd", 2, "rescale", 0, 0.5, 2.0, 2.0, 1.0, acc_original=62.0),  # duplicate key, newer
        # eurosat: seed 1 100 %, seed 2 50 %.
        r("b1", "eurosat", 1, "rescale", 0, 0.5, 1.0, 3.0, 1.5, acc_original=80.0),
        r("b1", "eurosat", 1, "rescale", 1, 0.5, 2.0, 3.0, 1.5, acc_original=80.0),
        r("b2", "eurosat", 2, "rescale", 0, 0.5, -1.0, 3.0, 1.5, acc_original=82.0),
        r("b2", "eurosat", 2, "rescale", 1, 0.5, 1.0, 3.0, 1.5, acc_original=82.0),
        # nemesis-pun on dtd, one seed only.
        r("c1", "dtd", 1, "rescale", 0, 0.5, 1.0, 1.0, 0.5, regularizer="nemesis-pun"),
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [
        {"run_id": "a1", "dataset": "dtd", "seed": 1, "final_test_acc": 10.0, "zero_shot_acc": 40.0},  # stale
        {"run_id": "a2", "dataset": "dtd", "seed": 2, "final_test_acc": 72.0, "zero_shot_acc": 40.0},
        {"run_id": "a1", "dataset": "dtd", "seed": 1, "final_test_acc": 70.0, "zero_shot_acc": 40.0},
        {"run_id": "b1", "dataset": "eurosat", "seed": 1, "final_test_acc": 80.0, "zero_shot_acc": np.nan},
    ]
    table = pd.DataFrame(
        [{**RUN_DEFAULTS, **row, "checkpoint": f"checkpoints/{row['run_id']}", "seconds": 1.0} for row in rows]
    )
    return table


def select(df: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(df), dtype=bool)
    for column, value in where.items():
        mask &= df[column].to_numpy() == value
    assert mask.sum() == 1, f"expected one row for {where}, got {mask.sum()}"
    return df[mask].iloc[0]


# --------------------------------------------------------------------------- frequency


def test_frequency_per_seed_counts_and_percent(corruptions):
    per_seed = analysis.low_norm_frequency_per_seed(corruptions)
    assert list(per_seed.columns) == ["dataset", "backbone", "shots", "prompt_method", "regularizer", "seed", "n_reducing", "n_effect", "frequency",
                                      "n_significant", "frequency_significant", "n_invisible"]  # fmt: skip
    assert per_seed["frequency_significant"].isna().all()  # rows without p-values: unknown, not zero
    assert len(per_seed) == 5
    expected = {
        ("dtd", "coop", 1): (3, 2, 200 / 3),
        ("dtd", "coop", 2): (2, 1, 50.0),
        ("eurosat", "coop", 1): (2, 2, 100.0),
        ("eurosat", "coop", 2): (2, 1, 50.0),
        ("dtd", "nemesis-pun", 1): (1, 1, 100.0),
    }
    for (dataset, regularizer, seed), (n_reducing, n_effect, frequency) in expected.items():
        row = select(per_seed, dataset=dataset, regularizer=regularizer, seed=seed)
        assert (row["n_reducing"], row["n_effect"]) == (n_reducing, n_effect)
        assert row["frequency"] == pytest.approx(frequency)


def test_frequency_leaves_out_invisible_rows_counts_them_and_splits_by_layer(corruptions):
    base = analysis.low_norm_frequency(corruptions)
    marked = corruptions.assign(layer=0, invisible=False)
    reducing_effects = (marked["op"] != "none") & (marked["norm_after"] < marked["norm_before"]) & (marked["delta"] > 0)
    first = marked.index[reducing_effects & (marked["dataset"] == "dtd") & (marked["regularizer"] == "coop")][0]
    marked.loc[first, ["invisible", "layer"]] = [True, 1]
    freq = analysis.low_norm_frequency(marked)
    dtd, before = select(freq, dataset="dtd", regularizer="coop"), select(base, dataset="dtd", regularizer="coop")
    assert (dtd["n_reducing"], dtd["n_effect"], dtd["n_invisible"]) == (
        before["n_reducing"] - 1,
        before["n_effect"] - 1,
        1,
    )
    by_layer = analysis.low_norm_frequency(marked, by=["dataset", "regularizer", "layer"])
    layer1 = select(by_layer, dataset="dtd", regularizer="coop", layer=1)
    assert (layer1["n_reducing"], layer1["n_invisible"]) == (0, 1)


def test_delta_grid_keeps_layers_apart(corruptions):
    rows = corruptions[(corruptions["dataset"] == "dtd") & (corruptions["regularizer"] == "coop")]
    deep = pd.concat([rows.assign(layer=0), rows.assign(layer=1, delta=rows["delta"] + 10.0)], ignore_index=True)
    flat = analysis.delta_grid(rows, "dtd", regularizer="coop")
    layer1 = analysis.delta_grid(deep, "dtd", regularizer="coop", layer=1)
    assert list(layer1.index) == list(flat.index)
    assert layer1.to_numpy() == pytest.approx(flat.to_numpy() + 10.0, nan_ok=True)
    both = analysis.delta_grid(deep, "dtd", regularizer="coop")
    n_ctx = int(rows["n_ctx"].iloc[0])
    assert list(both.index) == list(flat.index) + [n_ctx + p for p in flat.index]
    assert both.iloc[len(flat) :].to_numpy() == pytest.approx(flat.to_numpy() + 10.0, nan_ok=True)


def test_frequency_min_delta(corruptions):
    per_seed = analysis.low_norm_frequency_per_seed(corruptions, min_delta=0.5)
    # dtd seed 1: +1.0 counts, +0.2 no longer does; seed 2: +2.0 counts.
    assert select(per_seed, dataset="dtd", regularizer="coop", seed=1)["frequency"] == pytest.approx(100 / 3)
    assert select(per_seed, dataset="dtd", regularizer="coop", seed=2)["frequency"] == pytest.approx(50.0)
    aggregate = analysis.low_norm_frequency(corruptions, min_delta=0.5)
    assert select(aggregate, dataset="dtd", regularizer="coop")["frequency_mean"] == pytest.approx((100 / 3 + 50) / 2)
    # min_delta above every delta: zero effects, the frequency is 0 (not NaN).
    high = analysis.low_norm_frequency_per_seed(corruptions, min_delta=10.0)
    assert (high["n_effect"] == 0).all() and (high["frequency"] == 0).all()


def test_frequency_aggregate_mean_std_over_seeds(corruptions):
    freq = analysis.low_norm_frequency(corruptions)
    assert list(freq.columns) == [
        "dataset", "backbone", "shots", "prompt_method", "regularizer",
        "frequency_mean", "frequency_std", "frequency_n", "frequency_ci95_low", "frequency_ci95_high",
        "frequency_significant_mean", "frequency_significant_std", "frequency_significant_n",
        "frequency_significant_ci95_low", "frequency_significant_ci95_high",
        "num_seeds", "n_effect", "n_significant", "n_reducing", "frequency_pooled", "n_invisible",
    ]  # fmt: skip
    assert len(freq) == 3
    dtd = select(freq, dataset="dtd", regularizer="coop")
    assert dtd["frequency_mean"] == pytest.approx((200 / 3 + 50) / 2)
    assert dtd["frequency_std"] == pytest.approx(abs(200 / 3 - 50) / math.sqrt(2))  # ddof=1
    assert (dtd["num_seeds"], dtd["n_effect"], dtd["n_reducing"]) == (2, 3, 5)
    assert dtd["frequency_pooled"] == pytest.approx(60.0)
    eurosat = select(freq, dataset="eurosat", regularizer="coop")
    assert eurosat["frequency_mean"] == pytest.approx(75.0)
    assert eurosat["frequency_std"] == pytest.approx(50 / math.sqrt(2))
    single = select(freq, dataset="dtd", regularizer="nemesis-pun")
    assert single["frequency_mean"] == pytest.approx(100.0)
    assert math.isnan(single["frequency_std"]) and single["num_seeds"] == 1


def test_frequency_custom_grouping(corruptions):
    freq = analysis.low_norm_frequency(corruptions, by=("dataset",))
    # Grouping by dataset alone never pools coop with nemesis-pun: the regularizer differs between their runs, so
    # it joins the grouping (and shows as a column); shots, backbone, ... are equal and stay out.
    assert list(freq.columns[:2]) == ["dataset", "regularizer"] and "shots" not in freq.columns
    coop = select(freq, dataset="dtd", regularizer="coop")
    assert coop["frequency_mean"] == pytest.approx((2 / 3 * 100 + 50.0) / 2)
    assert (coop["n_effect"], coop["n_reducing"]) == (3, 5)
    pun = select(freq, dataset="dtd", regularizer="nemesis-pun")
    assert (pun["frequency_mean"], pun["n_effect"], pun["n_reducing"]) == (100.0, 1, 1)
    assert len(select(freq, dataset="eurosat")) > 0  # eurosat has coop only: one row


def test_frequency_dedupe_keeps_last(corruptions):
    # Swap the two measurements of the duplicated key: now the -1.0 one is the latest.
    rows = corruptions.copy()
    duplicate = rows[(rows.run_id == "a2") & (rows.op == "rescale") & (rows.position == 0)].index
    rows.loc[duplicate, "delta"] = rows.loc[duplicate[::-1], "delta"].to_numpy()
    per_seed = analysis.low_norm_frequency_per_seed(rows)
    row = select(per_seed, dataset="dtd", regularizer="coop", seed=2)
    assert (row["n_reducing"], row["n_effect"]) == (2, 0)


def test_frequency_empty_and_baseline_only(corruptions):
    empty = analysis.low_norm_frequency(corruptions.iloc[0:0])
    assert empty.empty and "frequency_mean" in empty.columns
    baseline = analysis.low_norm_frequency_per_seed(corruptions[corruptions.op == "none"])
    assert baseline.empty
    with pytest.raises(NoDataError, match="norm_after"):
        analysis.low_norm_frequency(corruptions.drop(columns=["norm_after"]))


def test_frequency_nan_when_nothing_reduces(corruptions):
    grows = corruptions[(corruptions.run_id == "a1") & (corruptions.factor == 2.0)]
    per_seed = analysis.low_norm_frequency_per_seed(grows)
    assert per_seed["n_reducing"].tolist() == [0]
    assert math.isnan(per_seed["frequency"].iloc[0])


def test_frequency_definition_mentions_the_rule():
    text = analysis.FREQUENCY_DEFINITION
    for phrase in ("norm_after < norm_before", "delta > min_delta", "percentage", "seed"):
        assert phrase in text


# --------------------------------------------------------------------------- positions, grid


def test_low_norm_positions(corruptions):
    assert analysis.low_norm_positions(corruptions, "a1") == [0, 2]  # pos1 f2.0 raised acc but grew the norm
    assert analysis.low_norm_positions(corruptions, "a2") == [0]  # via the deduped +2.0
    assert analysis.low_norm_positions(corruptions, "b2") == [1]
    with pytest.raises(NoDataError, match="zz"):
        analysis.low_norm_positions(corruptions, "zz")


def test_delta_grid_values(corruptions):
    grid = analysis.delta_grid(corruptions, dataset="dtd", op="rescale", regularizer="coop")
    assert grid.index.name == "position" and grid.columns.name == "factor"
    assert grid.index.tolist() == [0, 1]
    assert grid.columns.tolist() == [0.5, 1.0, 2.0]
    expected = np.array([[1.5, np.nan, np.nan], [-0.25, 1.0, 3.0]])
    np.testing.assert_allclose(grid.to_numpy(), expected)
    replace = analysis.delta_grid(corruptions, dataset="dtd", op="replace")
    np.testing.assert_allclose(replace.to_numpy(), [[np.nan, 5.0], [0.2, np.nan]])
    assert replace.index.tolist() == [0, 2]
    assert analysis.delta_grid(corruptions, dataset="nowhere").empty
    with pytest.raises(ValueError, match="none"):
        analysis.delta_grid(corruptions, op="none")


def test_delta_grid_averages_reps_then_seeds():
    r = corruption_row
    rows = pd.DataFrame(
        [
            r("s1", "dtd", 1, "rescale", 0, 0.5, 1.0, 2.0, 1.0, rep=0),
            r("s1", "dtd", 1, "rescale", 0, 0.5, 2.0, 2.0, 1.0, rep=1),
            r("s1", "dtd", 1, "rescale", 0, 0.5, 3.0, 2.0, 1.0, rep=2),
            r("s2", "dtd", 2, "rescale", 0, 0.5, 4.0, 2.0, 1.0, rep=0),
        ]
    )
    grid = analysis.delta_grid(rows)
    # Seeds weigh equally: mean(mean(1, 2, 3), 4) = 3.0, not the flat mean 2.5.
    assert grid.loc[0, 0.5] == pytest.approx(3.0)


# --------------------------------------------------------------------------- summaries


def test_summarize_runs(runs):
    summary = analysis.summarize_runs(runs)
    assert list(summary.columns) == [
        "dataset", "backbone", "shots", "prompt_method", "regularizer",
        "final_test_acc_mean", "final_test_acc_std", "final_test_acc_n", "final_test_acc_ci95_low",
        "final_test_acc_ci95_high", "zero_shot_acc_mean", "zero_shot_acc_std", "zero_shot_acc_n",
        "zero_shot_acc_ci95_low", "zero_shot_acc_ci95_high", "num_seeds",
    ]  # fmt: skip
    dtd = select(summary, dataset="dtd")
    assert dtd["final_test_acc_mean"] == pytest.approx(71.0)  # the stale 10.0 row is replaced
    assert dtd["final_test_acc_std"] == pytest.approx(math.sqrt(2))
    assert dtd["zero_shot_acc_mean"] == pytest.approx(40.0) and dtd["zero_shot_acc_std"] == pytest.approx(0.0)
    assert dtd["num_seeds"] == 2
    eurosat = select(summary, dataset="eurosat")
    assert eurosat["final_test_acc_mean"] == pytest.approx(80.0)
    assert math.isnan(eurosat["final_test_acc_std"]) and math.isnan(eurosat["zero_shot_acc_mean"])
    assert eurosat["num_seeds"] == 1


def test_summarize_corruptions(corruptions):
    summary = analysis.summarize_corruptions(corruptions)
    assert "none" not in set(summary["op"])
    rescale = select(summary, dataset="dtd", regularizer="coop", op="rescale")
    assert rescale["best_delta"] == pytest.approx(3.0)
    assert rescale["worst_delta"] == pytest.approx(-0.5)
    assert rescale["mean_delta"] == pytest.approx((1.0 - 0.5 + 3.0 + 2.0 + 0.0 + 1.0) / 6)
    assert rescale["acc_original_mean"] == pytest.approx(61.0)
    assert rescale["acc_original_std"] == pytest.approx(math.sqrt(2))
    assert (rescale["num_seeds"], rescale["n_rows"], rescale["n_low_norm_effect"]) == (2, 6, 2)
    replace = select(summary, dataset="dtd", regularizer="coop", op="replace")
    assert (replace["best_delta"], replace["worst_delta"], replace["n_low_norm_effect"]) == (5.0, 0.2, 1)


# --------------------------------------------------------------------------- formatting


def test_format_mean_std():
    assert analysis.format_mean_std(71.234, 0.449) == "71.23 ± 0.45"
    assert analysis.format_mean_std(71.234, float("nan")) == "71.23"
    assert analysis.format_mean_std(float("nan"), 1.0) == ""
    assert analysis.format_mean_std(5, 1, fmt="{:.1f}") == "5.0 ± 1.0"


def test_merge_mean_std_and_markdown(runs):
    merged = analysis.merge_mean_std(analysis.summarize_runs(runs))
    assert list(merged.columns) == ["dataset", "backbone", "shots", "prompt_method", "regularizer", "final_test_acc",
                                    "final_test_acc 95% CI", "final_test_acc_n", "zero_shot_acc", "zero_shot_acc 95% CI",
                                    "zero_shot_acc_n", "num_seeds"]  # fmt: skip
    assert merged["final_test_acc"].tolist() == ["71.00 ± 1.41", "80.00"]
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)  # two seeds: 70 and 72
    assert merged["final_test_acc 95% CI"].tolist() == [f"[{71 - half:.2f}, {71 + half:.2f}]", ""]
    assert merged["zero_shot_acc"].tolist() == ["40.00 ± 0.00", ""]
    only = analysis.merge_mean_std(analysis.summarize_runs(runs), columns=["zero_shot_acc"])
    assert "final_test_acc_mean" in only.columns and "zero_shot_acc" in only.columns

    table = pd.DataFrame({"dataset": ["dtd", "a|b"], "acc": [71.234, np.nan], "num_seeds": [2, 1]})
    lines = analysis.format_table_markdown(table).splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["dataset", "acc", "num_seeds"]
    assert lines[1].replace(" ", "") == "|-------|----:|--------:|"
    assert "71.23" in lines[2] and lines[2].startswith("| dtd")
    assert "a\\|b" in lines[3] and "–" in lines[3]
    assert "71.2 " in analysis.format_table_markdown(table, float_fmt="{:.1f}")


def test_analysis_does_not_import_torch():
    code = (
        "import sys, nemesis_analysis.report.analysis, nemesis_analysis.report.plots; sys.exit('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# --------------------------------------------------------------------------- statistics


def test_paired_comparisons_match_runs_and_equal_ttest_rel():
    treated = {1: 71.0, 2: 74.5, 3: 73.0}
    base = {1: 70.0, 2: 72.0, 3: 72.5}
    rows = []
    for seed in (1, 2, 3):
        rows.append(
            {
                **RUN_DEFAULTS,
                "run_id": f"c{seed}",
                "dataset": "dtd",
                "seed": seed,
                "final_test_acc": base[seed],
                "zero_shot_acc": 40.0,
            }
        )
        rows.append({**RUN_DEFAULTS, "run_id": f"p{seed}", "dataset": "dtd", "seed": seed, "regularizer": "nemesis-pun",
                     "norm_weight": 1.0, "final_test_acc": treated[seed], "zero_shot_acc": 40.0})  # fmt: skip
    # Unmatched: another shot count for PUN (no CoOp run to pair with), and a CoOp run of another backbone.
    rows.append({**RUN_DEFAULTS, "run_id": "p9", "dataset": "dtd", "seed": 1, "shots": 4, "regularizer": "nemesis-pun",
                 "norm_weight": 1.0, "final_test_acc": 10.0, "zero_shot_acc": 40.0})  # fmt: skip
    rows.append(
        {
            **RUN_DEFAULTS,
            "run_id": "c9",
            "dataset": "dtd",
            "seed": 1,
            "backbone": "RN50",
            "final_test_acc": 0.0,
            "zero_shot_acc": 40.0,
        }
    )
    table = analysis.paired_comparisons(pd.DataFrame(rows), "coop")
    assert len(table) == 1
    row = table.iloc[0]
    a, b = list(treated.values()), list(base.values())
    diff = np.subtract(a, b)
    assert (row["regularizer"], row["baseline"], row["n_pairs"]) == ("nemesis-pun", "coop", 3)
    assert row["mean_diff"] == pytest.approx(diff.mean())
    assert row["p_value"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    low, high = scipy_stats.t.interval(0.95, 2, loc=diff.mean(), scale=scipy_stats.sem(diff))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((low, high), rel=1e-12)
    with pytest.raises(NoDataError, match="no kgcoop runs to compare with"):
        analysis.paired_comparisons(pd.DataFrame(rows), "kgcoop")


def test_q_values_are_bh_within_each_run_and_class_subset(corruptions):
    rng = np.random.default_rng(3)
    table = corruptions.assign(p_value=rng.uniform(0, 0.1, len(corruptions)), eval_classes="all")
    table = pd.concat([table, table[table.run_id == "a1"].assign(eval_classes="base")], ignore_index=True)
    with_q = analysis.with_q_values(table)
    for _, rows in with_q[with_q.op != "none"].groupby(["run_id", "eval_classes"]):
        expected = scipy_stats.false_discovery_control(rows["p_value"].to_numpy(), method="bh")
        np.testing.assert_allclose(rows["q_value"].to_numpy(), expected, rtol=1e-12)
    assert with_q[with_q.op == "none"]["q_value"].isna().all()


def test_frequency_significant_counts_effects_below_the_fdr(corruptions):
    table = corruptions.assign(p_value=1e-6)  # every row decisive: significant share == raw share
    per_seed = analysis.low_norm_frequency_per_seed(table)
    pd.testing.assert_series_equal(per_seed["frequency_significant"], per_seed["frequency"], check_names=False)
    none = analysis.low_norm_frequency_per_seed(corruptions.assign(p_value=0.5))
    assert (none["frequency_significant"].dropna() == 0).all() and none["n_significant"].sum() == 0
    with pytest.raises(ConfigError, match="--fdr"):
        analysis.low_norm_frequency(table, fdr=1.5)


# --------------------------------------------------------------------------- no pooling of settings


def test_runs_that_differ_in_a_setting_are_never_pooled_as_seeds():
    """PUN at weight 1 and at weight 20, and a base2new CoOp run beside a few-shot one: four groups, not two."""

    def run(run_id, seed, regularizer, weight, protocol, acc):
        return {
            **RUN_DEFAULTS,
            "run_id": run_id,
            "dataset": "dtd",
            "seed": seed,
            "regularizer": regularizer,
            "norm_weight": weight,
            "epochs": 50,
            "protocol": protocol,
            "final_test_acc": acc,
            "zero_shot_acc": 40.0,
        }

    runs = pd.DataFrame([
        run("p1", 1, "nemesis-pun", 1.0, "fewshot", 70.0), run("p2", 2, "nemesis-pun", 1.0, "fewshot", 72.0),
        run("q1", 1, "nemesis-pun", 20.0, "fewshot", 60.0), run("q2", 2, "nemesis-pun", 20.0, "fewshot", 62.0),
        run("c1", 1, "coop", 1.0, "fewshot", 80.0), run("b1", 1, "coop", 1.0, "base2new", 90.0),
    ])  # fmt: skip
    summary = analysis.summarize_runs(runs)
    assert {"norm_weight", "protocol"} <= set(summary.columns) and "epochs" not in summary.columns
    assert len(summary) == 4 and summary["num_seeds"].tolist() == [1, 1, 2, 2]
    weight_20 = select(summary, regularizer="nemesis-pun", norm_weight=20.0)
    assert (weight_20["final_test_acc_mean"], weight_20["num_seeds"]) == (61.0, 2)
    assert select(summary, regularizer="coop", protocol="base2new")["final_test_acc_mean"] == 90.0
    # Corruption rows carry no norm weight: it is joined from the runs table by run_id.
    r = corruption_row
    rows = [
        r(rid, "dtd", seed, "rescale", 0, 0.5, delta, 2.0, 1.0, regularizer="nemesis-pun")
        for rid, seed, delta in (("p1", 1, 1.0), ("p2", 2, 1.0), ("q1", 1, -1.0), ("q2", 2, -1.0))
    ]
    joined = analysis.with_run_settings(pd.DataFrame(rows), runs)
    frequency = analysis.low_norm_frequency(joined)
    assert frequency.set_index("norm_weight")["frequency_mean"].to_dict() == {1.0: 100.0, 20.0: 0.0}
    assert analysis.differing_settings(joined, analysis.GROUP_COLUMNS) == "norm_weight (1.0, 20.0)"
    with pytest.raises(ConfigError, match=r"differ in norm_weight \(1.0, 20.0\)"):
        analysis.refuse_pooled_settings(joined, analysis.GROUP_COLUMNS, "corruptions")
    analysis.refuse_pooled_settings(joined[joined.run_id.isin(["p1", "p2"])], analysis.GROUP_COLUMNS, "corruptions")
