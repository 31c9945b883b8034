"""`nemesis plot ...` and `nemesis summary` on fixture tables written through store.append_rows."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from matplotlib.container import ErrorbarContainer
from safetensors.numpy import save_file
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.report import analysis, figures
from nemesis_analysis.storage import schema, store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"
N_CTX = 4
EPOCHS = 3
SEEDS = (1, 2)
DATASETS = ("digits", "eurosat")
SHOTS = (1, 4)
RESCALE = (0.5, 2.0)  # 0.5 lowers the norm, 2.0 raises it
REPLACE = (0.0, 0.02)  # both far below the trained norms (> 1): they lower the norm


def run_id(regularizer: str, dataset: str, shots: int, seed: int) -> str:
    return f"{dataset}-{shots}-{seed}-{regularizer}"


def identity(regularizer: str, dataset: str, shots: int, seed: int) -> dict:
    return {
        "run_id": run_id(regularizer, dataset, shots, seed),
        "dataset": dataset,
        "backbone": "nemesis-tiny",
        "pretrained": "embedded",
        "shots": shots,
        "seed": seed,
        "regularizer": regularizer,
        "n_ctx": N_CTX,
        "csc": False,
        "class_token_position": "end",
        "precision": "fp32",
    }


def final_acc(regularizer: str, dataset: str, shots: int, seed: int) -> float:
    # digits 4-shot coop: seeds 1, 2 -> 70, 74 (mean 72, sample std 2*sqrt(2)).
    return (
        60.0
        + 2.5 * shots
        + (5.0 if regularizer == "nemesis-pun" else 0.0)
        + (10.0 if dataset == "eurosat" else 0.0)
        + 4.0 * (seed - 1)
    )


def position_norm(regularizer: str, position: int, epoch: int) -> float:
    slope = -0.1 if regularizer == "nemesis-pun" else 0.2
    return 1.5 + 0.5 * position + slope * epoch


def effect(position: int, seed: int) -> bool:
    """Which norm-reducing corruptions raise accuracy: positions 0 and 2 on seed 1, position 0 on seed 2."""
    return position == 0 or (position == 2 and seed == 1)


def write_tables(reports: Path, checkpoints: Path | None = None, corruptions: bool = True) -> None:
    runs, traj, corr = [], [], []
    for dataset in DATASETS:
        for shots in SHOTS:
            for seed in SEEDS:
                for regularizer in ("coop", "nemesis-pun"):
                    ident = identity(regularizer, dataset, shots, seed)
                    acc = final_acc(regularizer, dataset, shots, seed)
                    for epoch in range(EPOCHS):
                        for position in range(N_CTX):
                            norm = position_norm(regularizer, position, epoch)
                            traj.append({**ident, "epoch": epoch, "position": position, "norm": norm, "norm_l1": 10 * norm,
                                         "norm_inf": norm / 4, "test_acc": acc - (EPOCHS - 1 - epoch), "train_loss": 1.0,
                                         "ce_loss": 1.0, "norm_loss": 0.0, "omega": 1.0, "alpha": math.nan, "lr": 0.002})  # fmt: skip
                    norms = [position_norm(regularizer, p, EPOCHS - 1) for p in range(N_CTX)]
                    checkpoint = ""
                    if checkpoints is not None:
                        folder = checkpoints / ident["run_id"]
                        folder.mkdir(parents=True, exist_ok=True)
                        # Vectors along the first axis: their L2 norms are exactly `norms`.
                        ctx = np.zeros((N_CTX, 8), dtype=np.float32)
                        ctx[:, 0] = norms
                        save_file({"ctx": ctx}, str(folder / "prompt.safetensors"))
                        checkpoint = str(folder)
                    runs.append({**ident, "epochs": EPOCHS, "ctx_init": "", "beta": math.nan, "norm_weight": 1.0,
                                 "norm_type": "l2", "pan_positions": 1, "pan_factor": 0.1, "omega_schedule": "sigmoid",
                                 "lr": 0.002, "batch_size": 32, "recipe": "", "final_test_acc": acc,
                                 "zero_shot_acc": 50.0 if dataset == "digits" else 40.0 + seed,
                                 "mean_norm": float(np.mean(norms)), "checkpoint": checkpoint, "seconds": 1.0})  # fmt: skip
                    if regularizer != "coop":
                        continue
                    corr.append({**ident, "op": "none", "position": -1, "factor": math.nan, "rep": 0, "acc": acc,
                                 "acc_original": acc, "delta": 0.0, "norm_before": math.nan, "norm_after": math.nan,
                                 "low_norm_effect": False, "n_test": 100})  # fmt: skip
                    for position in range(N_CTX):
                        before = norms[position]
                        cases = [("rescale", f, before * f) for f in RESCALE] + [
                            ("replace", s, s * math.sqrt(8)) for s in REPLACE
                        ]
                        for op, factor, after in cases:
                            reduces = after < before
                            delta = (
                                (1.0 + position + factor) if (reduces and effect(position, seed)) else -(1.0 + factor)
                            )
                            corr.append({**ident, "op": op, "position": position, "factor": factor, "rep": 0,
                                         "acc": acc + delta, "acc_original": acc, "delta": delta, "norm_before": before,
                                         "norm_after": after, "low_norm_effect": bool(reduces and delta > 0), "n_test": 100})  # fmt: skip
    store.append_rows(reports, "runs", runs)
    store.append_rows(reports, "trajectories", traj)
    if corruptions:
        store.append_rows(reports, "corruptions", corr)


@pytest.fixture
def reports(tmp_path) -> Path:
    folder = tmp_path / "reports"
    write_tables(folder, tmp_path / "checkpoints")
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 5000 and data[:8] == PNG_MAGIC


def printed_path(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- figures


PLOT_COMMANDS = {
    "frequency": ([], "frequency"),
    "trajectory": (["--dataset", "digits", "--shots", "4", "--seed", "1"], "trajectory_digits_4shot_seed1"),
    "trajectory-positions": (
        ["--dataset", "digits", "--shots", "4", "--seed", "1", "--per-position"],
        "trajectory_digits_4shot_seed1_positions",
    ),
    "heatmap": (["--dataset", "digits"], "heatmap_digits"),
    "norms": (["--run", run_id("coop", "digits", 4, 1)], f"norms_{run_id('coop', 'digits', 4, 1)}"),
}


@pytest.mark.parametrize("case", PLOT_COMMANDS)
def test_plot_writes_png_at_default_path(runner, reports, case):
    args, stem = PLOT_COMMANDS[case]
    command = case.split("-")[0]
    result = invoke(runner, "plot", command, *args, "--reports", reports)
    assert result.exit_code == 0, result.output
    expected = reports / "figures" / f"{stem}.png"
    assert printed_path(result) == expected
    assert_png(expected)


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
@pytest.mark.parametrize("command", ["frequency", "heatmap"])
def test_plot_formats(runner, reports, command, fmt):
    args = PLOT_COMMANDS[command][0]
    result = invoke(runner, "plot", command, *args, "--reports", reports, "--format", fmt)
    assert result.exit_code == 0, result.output
    path = printed_path(result)
    assert path.suffix == f".{fmt}" and path.parent == reports / "figures"
    data = path.read_bytes()
    if fmt == "pdf":
        assert data.startswith(PDF_MAGIC)
    else:
        assert b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")


def test_out_option_and_suffix(runner, reports, tmp_path):
    out = tmp_path / "elsewhere" / "fig.svg"
    result = invoke(
        runner, "plot", "norms", "--run", run_id("coop", "digits", 1, 2), "--reports", reports, "--out", out
    )
    assert result.exit_code == 0, result.output
    assert printed_path(result) == out and b"<svg" in out.read_bytes()[:2000]  # format from the suffix
    out_png = tmp_path / "noext"
    result = invoke(runner, "plot", "frequency", "--reports", reports, "--out", out_png)
    assert result.exit_code == 0
    assert_png(tmp_path / "noext.png")
    result = invoke(runner, "plot", "frequency", "--reports", reports, "--out", out, "--format", "png")
    assert result.exit_code == 2 and "suffix .svg" in result.output
    result = invoke(runner, "plot", "frequency", "--reports", reports, "--format", "jpg2")
    assert result.exit_code == 2 and "png, pdf, svg" in result.output
    assert not (reports / "figures").exists()  # nothing written on a bad format


@pytest.mark.parametrize(
    "command, args, producer",
    [
        ("frequency", [], "nemesis corrupt"),
        ("heatmap", ["--dataset", "digits"], "nemesis corrupt"),
        ("trajectory", ["--dataset", "digits", "--shots", "4", "--seed", "1"], "nemesis train"),
        ("norms", ["--run", "abc"], "nemesis train"),
    ],
)
def test_no_data_names_the_command(runner, tmp_path, command, args, producer):
    result = invoke(runner, "plot", command, *args, "--reports", tmp_path / "empty")
    assert result.exit_code == 2
    assert f"`{producer}" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one message (rich may wrap it)
    assert not (tmp_path / "empty" / "figures").exists()


def test_no_match_lists_what_exists(runner, reports):
    result = invoke(
        runner, "plot", "trajectory", "--dataset", "digits", "--shots", "16", "--seed", "1", "--reports", reports
    )
    assert result.exit_code == 2
    assert (
        "shots=16" in result.output
        and "1, 4" in result.output
        and "nemesis train --dataset digits --shots 16" in result.output
    )
    result = invoke(runner, "plot", "frequency", "--datasets", "dtd", "--reports", reports)
    assert result.exit_code == 2 and "digits, eurosat" in result.output


def test_norms_without_corruptions_reads_checkpoint(runner, tmp_path):
    reports = tmp_path / "reports"
    write_tables(reports, tmp_path / "checkpoints", corruptions=False)
    # Without trajectories the norms come from the saved prompt.
    rid = run_id("nemesis-pun", "eurosat", 4, 2)
    full, norms = figures.run_norms(reports, "eurosat-4-2-nem")  # a unique prefix works too
    assert full == rid
    with pytest.raises(ConfigError, match="ambiguous"):
        figures.run_norms(reports, "eurosat-4-2")
    np.testing.assert_allclose(norms["norm"], [position_norm("nemesis-pun", p, EPOCHS - 1) for p in range(N_CTX)])
    for table in ("trajectories",):
        for part in (reports / table).glob("*.parquet"):
            part.unlink()
    _, from_checkpoint = figures.run_norms(reports, rid)
    np.testing.assert_allclose(from_checkpoint["norm"], norms["norm"], rtol=1e-6)
    result = invoke(runner, "plot", "norms", "--run", rid, "--reports", reports)
    assert result.exit_code == 0, result.output
    assert_png(printed_path(result))


def test_figures_draw_the_table_numbers(reports):
    freq_fig = figures.frequency_figure(reports, datasets="digits")
    ax = freq_fig.axes[0]
    # Seed 1: 2 of 4 positions have an effect over 3 norm-reducing corruptions each -> 50%; seed 2: 25%.
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert container.get_label() == "Digits"  # --datasets kept one of the two datasets
    line = container.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [1, 4])
    np.testing.assert_allclose(line.get_ydata(), [37.5, 37.5])
    norms_fig = figures.norms_figure(reports, run_id("coop", "digits", 4, 1))
    heights = [round(p.get_height(), 6) for p in norms_fig.axes[0].patches]
    assert sorted(heights) == sorted(round(position_norm("coop", p, EPOCHS - 1), 6) for p in range(N_CTX))
    hit_colors = {p.get_x() + p.get_width() / 2: p.get_facecolor() for p in norms_fig.axes[0].patches}
    assert hit_colors[0] == hit_colors[2] != hit_colors[1]  # positions 0 and 2 highlighted (seed 1)
    traj_fig = figures.trajectory_figure(reports, "digits", 4, 1)
    norm_lines = [line for line in traj_fig.axes[0].get_lines() if line.get_label() in ("CoOp", "Nemesis (PUN)")]
    assert len(norm_lines) == 2
    heat = figures.heatmap_figure(reports, "digits")
    assert [a.get_title() for a in heat.axes[:2]][0].startswith("RESCALE")


def test_trajectory_keeps_one_comparable_run_per_method(reports):
    base = store.read_table(reports, "trajectories")
    split = base[(base.dataset == "digits") & (base.shots == 4) & (base.seed == 1)]
    # A newer CoOp run of the same split with other prompt options (n_ctx 8), and a re-run of PUN.
    other = split[split.regularizer == "coop"].assign(run_id="other-coop", n_ctx=8, norm=100.0)
    rerun = split[split.regularizer == "nemesis-pun"].assign(run_id="newer-pun", norm=0.5)
    store.append_rows(reports, "trajectories", other)
    store.append_rows(reports, "trajectories", rerun)
    fig = figures.trajectory_figure(reports, "digits", 4, 1)
    lines = {
        line.get_label(): line for line in fig.axes[0].get_lines() if line.get_label() in ("CoOp", "Nemesis (PUN)")
    }
    # The n_ctx=4 set holds both regularizers, so it wins over the newer single CoOp run.
    np.testing.assert_allclose(
        lines["CoOp"].get_ydata(), [np.mean([position_norm("coop", p, e) for p in range(N_CTX)]) for e in range(EPOCHS)]
    )
    np.testing.assert_allclose(lines["Nemesis (PUN)"].get_ydata(), [0.5] * EPOCHS)  # the newest PUN run
    assert "seed 1" in fig.axes[0].get_title()


def test_render_all(reports, tmp_path):
    paths = figures.render_all(reports, tmp_path / "figs", "png", max_per_kind=2)
    names = sorted(p.name for p in paths)
    digits = run_id("coop", "digits", 1, 1)
    # Frequency, the first 2 splits x (mean, per-position), both datasets' heatmaps, 2 runs' norms
    # (runs with corruptions first).
    assert names == sorted(
        [
            "frequency.png",
            "trajectory_digits_1shot_seed1.png",
            "trajectory_digits_1shot_seed1_positions.png",
            "trajectory_digits_1shot_seed2.png",
            "trajectory_digits_1shot_seed2_positions.png",
            "heatmap_digits.png",
            "heatmap_eurosat.png",
            f"norms_{digits}.png",
            f"norms_{run_id('coop', 'digits', 1, 2)}.png",
        ]
    )
    for path in paths:
        assert path.parent == tmp_path / "figs" and path.read_bytes()[:8] == PNG_MAGIC
    assert figures.render_all(tmp_path / "nothing", tmp_path / "none") == []


# ------------------------------------------------------------------------------------- summary


def test_summary_tables_and_files(runner, reports):
    result = invoke(runner, "summary", "--reports", reports)
    assert result.exit_code == 0, result.output
    assert "trained runs" in result.output and "Low-Norm Effect frequency" in result.output
    for name in ("runs", "corruptions", "frequency"):
        assert (reports / f"summary_{name}.csv").is_file() and (reports / f"summary_{name}.md").is_file()
        assert str(reports / f"summary_{name}.csv") in result.output.replace("\n", "")

    runs = pd.read_csv(reports / "summary_runs.csv")
    assert len(runs) == 2 * 2 * 2  # datasets x shots x regularizers
    row = runs[(runs.dataset == "digits") & (runs.shots == 4) & (runs.regularizer == "coop")].iloc[0]
    assert row.final_test_acc_mean == pytest.approx(72.0)
    assert row.final_test_acc_std == pytest.approx(2 * math.sqrt(2))
    assert row.zero_shot_acc_mean == pytest.approx(50.0) and row.zero_shot_acc_std == pytest.approx(0.0)
    assert row.num_seeds == 2
    row = runs[(runs.dataset == "eurosat") & (runs.shots == 1) & (runs.regularizer == "nemesis-pun")].iloc[0]
    assert row.final_test_acc_mean == pytest.approx(60 + 2.5 + 5 + 10 + 2)  # seeds: +0, +4
    assert row.zero_shot_acc_mean == pytest.approx(41.5) and row.zero_shot_acc_std == pytest.approx(math.sqrt(0.5))
    assert row.mean_norm_mean == pytest.approx(
        np.mean([position_norm("nemesis-pun", p, EPOCHS - 1) for p in range(N_CTX)])
    )
    markdown = (reports / "summary_runs.md").read_text()
    assert "| 72.00 ± 2.83" in markdown and "| 50.00 ± 0.00" in markdown

    corr = pd.read_csv(reports / "summary_corruptions.csv")
    assert set(corr.op) == {"rescale", "replace"} and set(corr.regularizer) == {"coop"}
    row = corr[(corr.dataset == "digits") & (corr.shots == 4) & (corr.op == "rescale")].iloc[0]
    assert row.acc_original_mean == pytest.approx(72.0) and row.acc_original_std == pytest.approx(2 * math.sqrt(2))
    assert row.best_delta == pytest.approx(1.0 + 2 + 0.5)  # position 2, factor 0.5, seed 1
    assert row.worst_delta == pytest.approx(-3.0)  # factor 2.0 raises the norm
    assert row.n_rows == N_CTX * len(RESCALE) * len(SEEDS) and row.n_low_norm_effect == 3

    freq = pd.read_csv(reports / "summary_frequency.csv")
    row = freq[(freq.dataset == "eurosat") & (freq.shots == 1)].iloc[0]
    assert row.frequency_mean == pytest.approx(37.5) and row.frequency_std == pytest.approx(math.sqrt(2 * 12.5**2))
    assert analysis.FREQUENCY_DEFINITION in (reports / "summary_frequency.md").read_text()


def write_pre_rename_copy(reports: Path, old: Path) -> None:
    """Every part of ``reports`` rewritten with pyarrow as parts were before the rename: ``method``, no ``regularizer``."""
    for table in schema.TABLES:
        for part in (reports / table).glob("part-*.parquet"):
            arrow = pq.read_table(part)
            target = old / table / part.name
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                arrow.rename_columns(["method" if n == "regularizer" else n for n in arrow.column_names]), target
            )


def frequency_lines(fig) -> dict[str, tuple[list, list]]:
    return {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
            for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)}  # fmt: skip


def test_parts_written_before_the_regularizer_rename_read_everywhere(runner, reports, tmp_path):
    old = tmp_path / "old-reports"
    write_pre_rename_copy(reports, old)
    part = next((old / "runs").glob("part-*.parquet"))
    assert "method" in pq.read_schema(part).names and "regularizer" not in pq.read_schema(part).names
    for table in ("runs", "trajectories", "corruptions"):  # the store reads them under the new name
        pd.testing.assert_frame_equal(store.read_table(old, table), store.read_table(reports, table))
    # summary: the same files as from parts written after the rename
    for folder, out in ((old, tmp_path / "old-summary"), (reports, tmp_path / "new-summary")):
        assert invoke(runner, "summary", "--reports", folder, "--out", out).exit_code == 0
    for name in ("runs", "corruptions", "frequency", "frequency_counts"):
        assert (tmp_path / "old-summary" / f"summary_{name}.csv").read_text() == (
            tmp_path / "new-summary" / f"summary_{name}.csv"
        ).read_text()
    assert "regularizer" in pd.read_csv(tmp_path / "old-summary" / "summary_runs.csv").columns
    # analysis on the tables read back
    frequency = analysis.low_norm_frequency(store.read_table(old, "corruptions"))
    assert set(frequency.regularizer) == {"coop"} and len(frequency) == len(DATASETS) * len(SHOTS)
    # plots: --regularizer filters old parts; the former --method spelling still works
    assert frequency_lines(figures.frequency_figure(old, regularizer="coop")) == frequency_lines(
        figures.frequency_figure(reports)
    )
    assert (
        invoke(
            runner, "plot", "frequency", "--regularizer", "coop", "--reports", old, "--out", tmp_path / "f.png"
        ).exit_code
        == 0
    )
    assert (
        invoke(
            runner,
            "plot",
            "heatmap",
            "--dataset",
            "digits",
            "--method",
            "coop",
            "--reports",
            old,
            "--out",
            tmp_path / "h.png",
        ).exit_code
        == 0
    )
    refused = runner.invoke(app, ["plot", "frequency", "--regularizer", "nemesis-pun", "--reports", str(old)])
    assert (
        refused.exit_code == 2 and "regularizer=nemesis-pun" in refused.output and "regularizer: coop" in refused.output
    )
    traj = figures.trajectory_figure(old, "digits", 4, 1)
    assert {line.get_label() for line in traj.axes[0].get_lines()} >= {"CoOp", "Nemesis (PUN)"}


def test_summary_out_and_runs_only(runner, tmp_path):
    reports = tmp_path / "reports"
    write_tables(reports, corruptions=False)
    result = invoke(runner, "summary", "--reports", reports, "--out", tmp_path / "tables")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tables" / "summary_runs.csv").is_file()
    assert not (tmp_path / "tables" / "summary_corruptions.csv").exists()
    assert "no corruptions rows yet" in result.output


def test_summary_no_data(runner, tmp_path):
    result = invoke(runner, "summary", "--reports", tmp_path / "none")
    assert result.exit_code == 2 and "`nemesis train" in result.output


def test_summary_compare_to_pairs_matched_runs(runner, reports):
    result = invoke(runner, "summary", "--reports", reports, "--compare-to", "coop")
    assert result.exit_code == 0, result.output
    comparison = pd.read_csv(reports / "summary_comparison.csv")
    assert len(comparison) == len(DATASETS) * len(SHOTS) and set(comparison.regularizer) == {"nemesis-pun"}
    assert (comparison.n_pairs == len(SEEDS)).all()
    assert comparison.mean_diff.to_numpy() == pytest.approx(5.0)  # final_acc: PUN is CoOp + 5 on every seed
    assert comparison.ci95_low.to_numpy() == pytest.approx(5.0) and comparison.ci95_high.to_numpy() == pytest.approx(
        5.0
    )
    assert "mean_diff" in (reports / "summary_comparison.md").read_text()
    refused = invoke(runner, "summary", "--reports", reports, "--compare-to", "kgcoop")
    assert refused.exit_code == 2 and "no kgcoop runs to compare with" in refused.output
    bad = invoke(runner, "summary", "--reports", reports, "--fdr", "0")
    assert bad.exit_code == 2 and "--fdr must be between 0 and 1" in bad.output
