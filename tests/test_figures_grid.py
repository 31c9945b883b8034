"""Figures and summaries never mix incomparable data; counts as the paper plots them; files get umask modes."""

from __future__ import annotations

import logging
import os
import stat

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.report import analysis, figures, plots, summaries
from nemesis_analysis.storage import store

IDENTITY = {"dataset": "digits", "backbone": "tiny", "pretrained": "tiny", "regularizer": "coop", "n_ctx": 4, "csc": False,
            "class_token_position": "end", "precision": "fp32"}  # fmt: skip
FULL = [
    (op, p, f)
    for op, factors in (("rescale", (0.0, 0.5, 2.0)), ("replace", (0.01, 1.0)))
    for p in range(4)
    for f in factors
]
SMALL = [("rescale", p, f) for p in range(4) for f in (0.0, 0.5)]  # eight cells, a subset of FULL


def rows(seed: int, shots: int, cells, effect) -> list[dict]:
    out = [{**IDENTITY, "run_id": f"s{seed}k{shots}", "shots": shots, "seed": seed, "op": "none", "position": -1, "factor": 1.0,
            "rep": 0, "acc": 50.0, "acc_original": 50.0, "delta": 0.0, "norm_before": 1.0, "norm_after": 1.0,
            "low_norm_effect": False, "n_test": 100}]  # fmt: skip
    for op, position, factor in cells:
        after = factor if op == "rescale" else 0.5  # every cell here lowers the norm except rescale by 2
        delta = 1.0 if effect(op, position, factor) else -1.0
        out.append({**out[0], "op": op, "position": position, "factor": factor, "acc": 50.0 + delta, "delta": delta,
                    "norm_after": after, "low_norm_effect": after < 1.0 and delta > 0})  # fmt: skip
    return out


def readme_scenario(shots: int = 16) -> pd.DataFrame:
    """Seed 1 swept on the full grid (effects only in cells outside the small grid), seeds 2 and 3 on eight cells."""
    outside = lambda op, p, f: op == "replace"  # noqa: E731
    inside = lambda op, p, f: p == 0  # noqa: E731
    frame = rows(1, shots, FULL, lambda op, p, f: outside(op, p, f) or inside(op, p, f))
    return pd.DataFrame(frame + rows(2, shots, SMALL, inside) + rows(3, shots, SMALL, inside))


def test_frequency_uses_the_cells_every_seed_has(caplog):
    table = readme_scenario()
    mixed = analysis.low_norm_frequency(table)
    # Seed 1 alone: 2 (position 0) + 8 (replace) effects of 16 reducing cells; mixed with 2/8 twice.
    assert mixed["frequency_mean"].item() == pytest.approx((100 * 10 / 16 + 25 + 25) / 3)
    with caplog.at_level(logging.WARNING, logger="nemesis_analysis.report.analysis"):
        same = analysis.low_norm_frequency(table, same_grid=True)
    assert same["frequency_mean"].item() == pytest.approx(25.0) and same["frequency_std"].item() == 0.0
    assert (same["n_reducing"].item(), same["num_seeds"].item()) == (24, 3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("lacks 12 of the group's 20 corruption cells" in w for w in warnings)
    assert any("seed 2" in w for w in warnings) and any("seed 3" in w for w in warnings)
    gaps = analysis.grid_gaps(table)
    assert sorted(gaps["seed"]) == [2, 3] and set(gaps["n_cells"]) == {8}
    assert ("replace", 0, 0, 0.01, 0, 0) in gaps["missing"].iloc[0]  # (op, prompt_index, position, factor, rep, layer)


def test_frequency_figure_and_counts_on_the_scenario(tmp_path):
    store.append_rows(tmp_path, "corruptions", readme_scenario(16))
    store.append_rows(tmp_path, "corruptions", readme_scenario(4))
    fig = figures.frequency_figure(tmp_path)
    (line,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(line.lines[0].get_ydata(), [25.0, 25.0])
    fig = figures.frequency_figure(tmp_path, measure="count")
    (line,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(line.lines[0].get_ydata(), [2.0, 2.0])  # 2 effects per seed on the common cells
    assert "count" in fig.axes[0].get_ylabel()
    counts = analysis.low_norm_counts(readme_scenario(), same_grid=True)
    assert (counts["count_mean"].item(), counts["n_reducing_mean"].item(), counts["num_seeds"].item()) == (2.0, 8.0, 3)
    with pytest.raises(Exception, match="measure"):
        plots.plot_frequency(counts, measure="ratio")


def test_heatmap_has_a_row_per_shot_count_and_says_what_it_averages(tmp_path):
    store.append_rows(tmp_path, "corruptions", readme_scenario(16))
    four = readme_scenario(4)
    four["delta"] = 3 * four["delta"]
    store.append_rows(tmp_path, "corruptions", four)
    fig = figures.heatmap_figure(tmp_path, "digits")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("(4-shot)" in t for t in titles) and any("(16-shot)" in t for t in titles)
    suptitle = fig._suptitle.get_text()
    assert (
        "Digits" in suptitle and "one row per shot count" in suptitle and "3 seeds" in suptitle and "CoOp" in suptitle
    )
    fig = figures.heatmap_figure(tmp_path, "digits", shots=4)
    assert "4-shot" in fig._suptitle.get_text() and "3 seeds" in fig._suptitle.get_text()
    grid4 = analysis.delta_grid(four, op="rescale")
    mesh = fig.axes[0].collections[0]
    np.testing.assert_allclose(np.ma.filled(mesh.get_array(), np.nan).reshape(grid4.shape), grid4.to_numpy())


def test_written_files_get_umask_modes(tmp_path):
    store.append_rows(tmp_path, "corruptions", readme_scenario(16))
    old = os.umask(0o002)
    try:
        png = plots.save_figure(figures.frequency_figure(tmp_path), tmp_path / "figs" / "f.png")
        written = summaries.write_summary(summaries.summary_tables(tmp_path), tmp_path / "out")
    finally:
        os.umask(old)
    for path in [png, *written]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    assert {p.name for p in written} >= {"summary_frequency.csv", "summary_frequency_counts.md"}
    counts = pd.read_csv(tmp_path / "out" / "summary_frequency_counts.csv")
    assert list(counts["n_effect"]) == [2, 2, 2] and list(counts["n_reducing"]) == [8, 8, 8]


def test_summary_table_command(tmp_path):
    rows = []
    for seed, (base, new) in ((1, (80.0, 60.0)), (2, (84.0, 64.0))):
        for classes, acc in (("base", base), ("new", new)):
            rows.append({**IDENTITY, "run_id": f"r{seed}", "shots": 16, "seed": seed, "protocol": "base2new", "prompt_method": "cocoop",
                         "eval_dataset": "digits", "eval_classes": classes, "acc": acc, "n_test": 50, "n_classes": 5})  # fmt: skip
    store.append_rows(tmp_path, "evaluations", rows)
    runner = CliRunner()
    result = runner.invoke(app, ["summary", "--reports", str(tmp_path), "--table", "base2new", "--compare", "paper"])
    assert result.exit_code == 0, result.output
    h = 2 * 82 * 62 / (82 + 62)
    assert f"{h:.2f} (n=2)" in result.output and "76.50" in result.output and "not confirmed" in result.output
    assert "cocoop H paper" in result.output and "other datasets: ours digits" in result.output  # digits vs 11: no Δ
    assert (tmp_path / "table_base2new_vs_paper.md").is_file()
    result = runner.invoke(app, ["summary", "--reports", str(tmp_path), "--table", "base2new", "--format", "csv"])
    assert result.exit_code == 0 and (tmp_path / "table_base2new.csv").is_file()
    result = runner.invoke(app, ["summary", "--reports", str(tmp_path), "--table", "dg"])
    assert result.exit_code == 2 and "protocol dg" in result.output
    result = runner.invoke(app, ["summary", "--reports", str(tmp_path), "--table", "fewshot", "--format", "docx"])
    assert result.exit_code == 2


def test_plot_frequency_as_count_command(tmp_path):
    store.append_rows(tmp_path, "corruptions", readme_scenario(16))
    runner = CliRunner()
    result = runner.invoke(
        app, ["plot", "frequency", "--reports", str(tmp_path), "--as", "count", "--out", str(tmp_path / "c.png")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").stat().st_size > 5000
    result = runner.invoke(app, ["plot", "frequency", "--reports", str(tmp_path), "--as", "ratio"])
    assert result.exit_code == 2


def test_figures_refuse_and_summaries_split_runs_that_differ_in_a_setting(tmp_path):
    """Two PUN runs of one seed at weights 1 and 20: the summary shows two rows with a norm_weight column, the
    frequency and heatmap figures refuse in one line naming the setting (exit 2)."""
    reports = tmp_path / "rep"
    corruptions, runs = [], []
    for run_id, weight, effect in (("w1", 1.0, True), ("w20", 20.0, False)):
        part = rows(1, 16, SMALL, lambda op, p, f, effect=effect: effect)
        corruptions += [{**row, "run_id": run_id, "regularizer": "nemesis-pun"} for row in part]
        runs.append({**IDENTITY, "run_id": run_id, "shots": 16, "seed": 1, "regularizer": "nemesis-pun", "norm_weight": weight,
                     "final_test_acc": 60.0, "zero_shot_acc": 40.0, "epochs": 50, "ctx_init": "", "beta": 1.0,
                     "norm_type": "l2", "pan_positions": 1, "pan_factor": 0.0, "omega_schedule": "sigmoid", "lr": 0.002,
                     "batch_size": 32, "recipe": "", "mean_norm": 1.0, "checkpoint": "", "seconds": 1.0})  # fmt: skip
    store.append_rows(reports, "corruptions", corruptions)
    store.append_rows(reports, "runs", runs)
    tables = summaries.summary_tables(reports)
    frequency = tables["frequency"].set_index("norm_weight")["frequency_mean"].to_dict()
    assert frequency == {1.0: 100.0, 20.0: 0.0} and tables["runs"]["num_seeds"].tolist() == [1, 1]
    for args in (["plot", "frequency"], ["plot", "heatmap", "--dataset", "digits"]):
        result = CliRunner().invoke(app, [*args, "--reports", str(reports)])
        assert result.exit_code == 2, result.output
        assert "differ in norm_weight (1.0, 20.0)" in result.output and "Traceback" not in result.output
