"""Figures: what is drawn must be the numbers of the tables, with readable labels."""

from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors
from matplotlib.collections import QuadMesh
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.report import analysis, plots

RUN_DEFAULTS = {
    "backbone": "ViT-B-16",
    "pretrained": "openai",
    "n_ctx": 4,
    "csc": False,
    "class_token_position": "end",
    "precision": "fp32",
}
SHOTS = [1, 2, 4, 8, 16]
POSITIONS = 4
EPOCHS = 5


def legend_labels(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return [t.get_text() for legend in legends if legend is not None for t in legend.get_texts()]


def containers(ax, kind) -> list:
    return [c for c in ax.containers if isinstance(c, kind)]


@pytest.fixture
def freq() -> pd.DataFrame:
    rows = []
    for i, shots in enumerate(SHOTS):
        rows.append(
            {
                "dataset": "dtd",
                "backbone": "ViT-B-16",
                "shots": shots,
                "regularizer": "coop",
                "frequency_mean": 10.0 + i,
                "frequency_std": 1.0,
                "num_seeds": 3,
            }
        )
        rows.append(
            {
                "dataset": "eurosat",
                "backbone": "ViT-B-16",
                "shots": shots,
                "regularizer": "coop",
                "frequency_mean": 30.0 - i,
                "frequency_std": np.nan,
                "num_seeds": 1,
            }
        )
    return pd.DataFrame(rows)


def norm_value(regularizer: str, seed: int, epoch: int, position: int) -> float:
    # Nemesis shrinks the norm over training, CoOp grows it; seeds differ by 0.2.
    slope = -0.1 if regularizer == "nemesis-pun" else 0.3
    return 1.0 + 0.5 * position + slope * epoch + 0.2 * seed


def acc_value(regularizer: str, seed: int, epoch: int) -> float:
    return 50.0 + 5.0 * epoch + (2.0 if regularizer == "nemesis-pun" else 0.0) + seed


@pytest.fixture
def traj() -> pd.DataFrame:
    rows = []
    for regularizer, seed, epoch, position in itertools.product(
        ("coop", "nemesis-pun"), (1, 2), range(EPOCHS), range(POSITIONS)
    ):
        rows.append(
            {
                "run_id": f"{regularizer}-{seed}",
                "dataset": "oxford_pets",
                "shots": 16,
                "seed": seed,
                "regularizer": regularizer,
                **RUN_DEFAULTS,
                "epoch": epoch,
                "position": position,
                "norm": norm_value(regularizer, seed, epoch, position),
                "norm_l1": 10 * norm_value(regularizer, seed, epoch, position),
                "norm_inf": np.nan,
                "test_acc": acc_value(regularizer, seed, epoch),
                "train_loss": 1.0,
                "ce_loss": 1.0,
                "norm_loss": 0.0,
                "omega": 1.0,
                "alpha": np.nan,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def corruptions() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed, (op, factors), position, rep in itertools.product(
        (1, 2), (("rescale", (0.0, 0.5, 2.0)), ("replace", (0.0, 0.02))), range(POSITIONS), range(2)
    ):
        for factor in factors:
            norm_before = 1.0 + position
            norm_after = norm_before * factor if op == "rescale" else factor * 27.7
            delta = float(np.round(rng.normal(0, 2), 2))
            rows.append(
                {
                    "run_id": f"r{seed}", "dataset": "dtd", "shots": 16, "seed": seed, "regularizer": "coop", **RUN_DEFAULTS,
                    "op": op, "position": position, "factor": factor, "rep": rep, "acc": 60 + delta,
                    "acc_original": 60.0, "delta": delta, "norm_before": norm_before, "norm_after": norm_after,
                    "low_norm_effect": norm_after < norm_before and delta > 0, "n_test": 100,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- frequency


def test_frequency_lines(freq):
    fig = plots.plot_frequency(freq)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("Shots per class")
    assert ax.get_ylabel() == "Low-Norm Effect frequency (%)"
    assert ax.get_xscale() == "log"
    assert ax.get_xticks().tolist() == SHOTS
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "16"]
    bars = containers(ax, ErrorbarContainer)
    assert len(bars) == 2
    np.testing.assert_allclose(bars[0].lines[0].get_ydata(), [10, 11, 12, 13, 14])
    np.testing.assert_allclose(bars[1].lines[0].get_ydata(), [30, 29, 28, 27, 26])
    # Error bar of dtd at 1 shot spans mean ± std = 9..11.
    segment = bars[0].lines[2][0].get_segments()[0]
    np.testing.assert_allclose(segment[:, 1], [9.0, 11.0])
    assert legend_labels(fig) == ["DTD", "EuroSAT"]
    assert bars[0].lines[0].get_color() == plots.dataset_style("dtd")[0]
    assert "ViT-B-16" in ax.get_title() and "CoOp" in ax.get_title()
    assert any("norm-reducing" in t.get_text() for t in fig.texts)  # caption


def test_frequency_accepts_per_seed_and_raw_rows(corruptions):
    per_seed = analysis.low_norm_frequency_per_seed(corruptions)
    expected = analysis.low_norm_frequency(corruptions)["frequency_mean"].to_numpy()
    for table in (per_seed, corruptions):
        fig = plots.plot_frequency(table)
        heights = [p.get_height() for c in containers(fig.axes[0], BarContainer) for p in c]
        np.testing.assert_allclose(heights, expected)


def test_frequency_single_shot_is_bars(freq):
    fig = plots.plot_frequency(freq[freq.shots == 4])
    ax = fig.axes[0]
    bar_sets = containers(ax, BarContainer)
    assert len(bar_sets) == 1 and len(bar_sets[0]) == 2
    np.testing.assert_allclose([p.get_height() for p in bar_sets[0]], [12.0, 28.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["DTD", "EuroSAT"]
    assert bar_sets[0][0].get_facecolor() != bar_sets[0][1].get_facecolor()
    assert ax.get_ylabel() == "Low-Norm Effect frequency (%)" and ax.get_xlabel() == "Dataset"
    assert "4 shots per class" in ax.get_title()


def test_frequency_several_methods(freq):
    both = pd.concat([freq, freq.assign(regularizer="nemesis-pun", frequency_mean=freq.frequency_mean / 2)])
    fig = plots.plot_frequency(both)
    ax = fig.axes[0]
    assert len(containers(ax, ErrorbarContainer)) == 4
    assert "DTD · Nemesis (PUN)" in legend_labels(fig)
    styles = {c.lines[0].get_linestyle() for c in containers(ax, ErrorbarContainer)}
    assert len(styles) == 2  # one line style per regularizer
    bars = plots.plot_frequency(both[both.shots == 16])
    groups = containers(bars.axes[0], BarContainer)
    assert len(groups) == 2
    assert mcolors.to_hex(groups[1][0].get_facecolor()) == plots.regularizer_color("nemesis-pun").lower()
    assert legend_labels(bars) == ["CoOp", "Nemesis (PUN)"]


# --------------------------------------------------------------------------- trajectory


def test_trajectory_twin_axes(traj):
    fig = plots.plot_trajectory(traj)
    assert len(fig.axes) == 2
    ax, ax_acc = fig.axes
    assert ax.get_xlabel() == "Epoch"
    assert ax.get_ylabel() == "Mean L2 norm ‖p_i‖₂"
    assert ax_acc.get_ylabel() == "Test accuracy (%)"
    norm_lines, acc_lines = ax.get_lines(), ax_acc.get_lines()
    assert len(norm_lines) == 2 and len(acc_lines) == 2
    assert all(line.get_linestyle() == "-" for line in norm_lines)
    assert all(line.get_linestyle() == "--" for line in acc_lines)
    epochs = np.arange(EPOCHS)
    # Mean over positions 0..3 (+0.75) and seeds 1, 2 (+0.3).
    np.testing.assert_allclose(norm_lines[0].get_ydata(), 1.0 + 0.75 + 0.3 * epochs + 0.3)
    np.testing.assert_allclose(norm_lines[1].get_ydata(), 1.0 + 0.75 - 0.1 * epochs + 0.3)
    np.testing.assert_allclose(acc_lines[1].get_ydata(), 50.0 + 5.0 * epochs + 2.0 + 1.5)
    assert norm_lines[0].get_color() == plots.regularizer_color("coop")
    assert acc_lines[1].get_color() == plots.regularizer_color("nemesis-pun")
    labels = legend_labels(fig)
    assert labels[:2] == ["CoOp", "Nemesis (PUN)"]
    assert any("norm" in label and "left" in label for label in labels)
    assert any("accuracy" in label and "right" in label for label in labels)
    assert "OxfordPets" in ax.get_title()


def test_trajectory_other_norm(traj):
    fig = plots.plot_trajectory(traj, norm_column="norm_l1")
    assert fig.axes[0].get_ylabel() == "Mean L1 norm ‖p_i‖₁"
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata()[0], 10 * (1.0 + 0.75 + 0.3))


def test_trajectory_per_position(traj):
    fig = plots.plot_trajectory(traj, per_position=True)
    main = [ax for ax in fig.axes if ax.get_xlabel() == "Epoch"]
    assert len(main) == 2 and len(fig.axes) == 4  # a twin accuracy axis per panel
    for ax, regularizer in zip(main, ("coop", "nemesis-pun")):
        lines = ax.get_lines()
        assert len(lines) == POSITIONS + 1  # every position, then the bold mean
        assert ax.get_title() == plots.regularizer_label(regularizer)
        slope = 0.3 if regularizer == "coop" else -0.1
        np.testing.assert_allclose(lines[3].get_ydata(), 1.0 + 1.5 + slope * np.arange(EPOCHS) + 0.3)
        assert lines[0].get_linewidth() < lines[-1].get_linewidth()
    labels = legend_labels(fig)
    assert any(label.startswith("Per-position") for label in labels)
    assert any("accuracy" in label for label in labels)


# --------------------------------------------------------------------------- heatmap


def test_heatmap_matches_delta_grid(corruptions):
    fig = plots.plot_heatmap(corruptions)
    assert len(fig.axes) == 3  # rescale, replace, colour bar
    colorbar_ax = fig.axes[-1]
    assert colorbar_ax.get_ylabel() == "Δ accuracy (points)"
    for ax, op in zip(fig.axes[:2], ("rescale", "replace")):
        grid = analysis.delta_grid(corruptions, op=op)
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        np.testing.assert_allclose(np.ma.filled(mesh.get_array(), np.nan).reshape(grid.shape), grid.to_numpy())
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(p) for p in range(POSITIONS)]
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{f:g}" for f in grid.columns]
        assert ax.get_ylabel() == "Context position i"
        norm = mesh.norm
        assert norm(0.0) == pytest.approx(0.5) and norm.vmin == pytest.approx(-norm.vmax)
        assert norm.vmax == pytest.approx(
            max(np.abs(analysis.delta_grid(corruptions, op=o).to_numpy()).max() for o in ("rescale", "replace"))
        )
    assert fig.axes[0].get_xlabel() == "Scale factor s"
    assert fig.axes[1].get_xlabel() == "Replacement std σ"


def test_heatmap_only_present_ops(corruptions):
    fig = plots.plot_heatmap(corruptions[corruptions.op == "rescale"])
    assert len(fig.axes) == 2
    with pytest.raises(NoDataError):
        plots.plot_heatmap(corruptions, dataset="eurosat")


# --------------------------------------------------------------------------- norms


def test_norms_highlight():
    fig = plots.plot_norms([1.0, 2.0, 3.0, 4.0], highlight=[1, 3])
    ax = fig.axes[0]
    bar_sets = containers(ax, BarContainer)
    patches = sorted((p for c in bar_sets for p in c), key=lambda p: p.get_x())
    assert [p.get_height() for p in patches] == [1.0, 2.0, 3.0, 4.0]
    colors = [mcolors.to_hex(p.get_facecolor()) for p in patches]
    assert colors[1] == colors[3] != colors[0] == colors[2]
    assert "Shrinking raised accuracy" in legend_labels(fig)
    assert ax.get_xlabel() == "Context position i" and ax.get_ylabel() == "L2 norm ‖p_i‖₂"
    with pytest.raises(ConfigError, match="7"):
        plots.plot_norms([1.0, 2.0], highlight=[7])


def test_norms_from_tables(traj, corruptions):
    fig = plots.plot_norms(traj[traj.regularizer == "coop"], highlight=[0])
    heights = sorted((p.get_x(), p.get_height()) for c in containers(fig.axes[0], BarContainer) for p in c)
    # Last epoch (4), mean over seeds 1 and 2.
    np.testing.assert_allclose([h for _, h in heights], [1.0 + 0.5 * i + 1.2 + 0.3 for i in range(POSITIONS)])
    fig = plots.plot_norms(corruptions, highlight=analysis.low_norm_positions(corruptions, "r1"))
    heights = sorted((p.get_x(), p.get_height()) for c in containers(fig.axes[0], BarContainer) for p in c)
    np.testing.assert_allclose([h for _, h in heights], [1.0 + i for i in range(POSITIONS)])


# --------------------------------------------------------------------------- errors, colours, saving


@pytest.mark.parametrize(
    "plot",
    [plots.plot_frequency, plots.plot_trajectory, plots.plot_heatmap, plots.plot_norms],
    ids=["frequency", "trajectory", "heatmap", "norms"],
)
def test_empty_tables_raise_no_data(plot, freq, traj, corruptions):
    table = {
        plots.plot_frequency: freq,
        plots.plot_trajectory: traj,
        plots.plot_heatmap: corruptions,
        plots.plot_norms: traj,
    }[plot]
    with pytest.raises(NoDataError):
        plot(table.iloc[0:0])
    with pytest.raises(NoDataError):
        plot(pd.DataFrame({"unrelated": [1.0]}))


def test_norms_empty_sequence():
    with pytest.raises(NoDataError):
        plots.plot_norms([])


def test_method_colours_are_stable_and_distinct():
    assert (
        plots.regularizer_color("coop")
        != plots.regularizer_color("nemesis-pun")
        != plots.regularizer_color("nemesis-pan")
    )
    assert plots.regularizer_color("nemesis-beta0.5") == plots.regularizer_color("nemesis-beta0.5")
    assert plots.regularizer_label("nemesis-beta0.5") == "Nemesis (β = 0.5)"
    assert plots.dataset_label("oxford_flowers") == "Flowers102"
    pairs = {
        plots.dataset_style(d)
        for d in (
            "imagenet",
            "caltech101",
            "oxford_pets",
            "stanford_cars",
            "oxford_flowers",
            "food101",
            "fgvc_aircraft",
            "sun397",
            "dtd",
            "eurosat",
            "ucf101",
        )
    }
    assert len(pairs) == 11


def test_save_figure_formats(tmp_path):
    fig = plots.plot_norms([1.0, 2.0, 3.0], highlight=[2])
    png = plots.save_figure(fig, tmp_path / "deep" / "dir" / "norms.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=0.5)
    svg = plots.save_figure(fig, tmp_path / "norms", format="svg")
    assert svg.name == "norms.svg" and b"<svg" in svg.read_bytes()[:1000]
    pdf = plots.save_figure(fig, tmp_path / "norms.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # Same figure, same bytes (no dates in the file); and no temporary files left.
    assert plots.save_figure(fig, tmp_path / "again.svg").read_bytes() == svg.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.svg", "deep", "norms.pdf", "norms.svg"]
    with pytest.raises(ConfigError, match="suffix"):
        plots.save_figure(fig, tmp_path / "x.png", format="pdf")
    with pytest.raises(ConfigError, match="unsupported"):
        plots.save_figure(fig, tmp_path / "x", format="docx")


def test_layout_is_stable_across_draws(freq, traj, corruptions):
    # Constrained layout re-runs on every draw; an artist that overhangs its axes by a
    # growing amount (a wide legend or title) would shrink the axes each time it is saved.
    figures = [
        plots.plot_frequency(freq),
        plots.plot_trajectory(traj),
        plots.plot_trajectory(traj, per_position=True),
        plots.plot_heatmap(corruptions),
        plots.plot_norms(corruptions, highlight=[0, 1, 2]),
    ]
    for fig in figures:
        positions = []
        for _ in range(3):
            fig.savefig(io.BytesIO(), format="png", dpi=50)  # a bare Figure's canvas.draw() is a no-op
            positions.append([ax.get_position().bounds for ax in fig.axes])
        np.testing.assert_allclose(positions[1], positions[2])
        assert fig.axes[0].get_position().width > 0.25
