"""The statistics on a real sweep: three digits seeds over positions 0-7, checked against scipy computed here,
independently of the library (binomtest, false_discovery_control, the t distribution), in the tables and the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.config import RunConfig
from nemesis_analysis.corruption.ops import GridSpec
from nemesis_analysis.corruption.sweep_runs import sweep_runs
from nemesis_analysis.report import figures
from nemesis_analysis.storage import store

SEEDS = (1, 2, 3)
GRID = GridSpec(positions=(range(0, 8),), factors=(0.0, 0.25, 0.5, 2.0), stds=(0.5, 2.0), reps=1)


@pytest.fixture(scope="module")
def reports(tiny_session, tmp_path_factory):
    session = tiny_session.replace(reports_dir=tmp_path_factory.mktemp("stats-reports"))
    summaries = sweep_runs(RunConfig(shots=2, epochs=3), session, GRID, seeds=list(SEEDS))
    assert len(summaries) == len(SEEDS)
    return session.reports_dir


@pytest.fixture(scope="module")
def rows(reports) -> pd.DataFrame:
    return store.read_table(reports, "corruptions")


def independent_frequency(rows: pd.DataFrame, fdr: float = 0.05) -> pd.DataFrame:
    """Per seed: the raw and the BH-significant Low-Norm Effect frequency, from scipy alone."""
    out = []
    for seed, run in rows[rows.op != "none"].groupby("seed"):
        q = scipy_stats.false_discovery_control(run["p_value"].to_numpy(), method="bh")
        reducing = (run["norm_after"] < run["norm_before"]).to_numpy()
        effect = reducing & (run["delta"] > 0).to_numpy()
        out.append({"seed": seed, "frequency": 100 * effect.sum() / reducing.sum(),
                    "frequency_significant": 100 * (effect & (q < fdr)).sum() / reducing.sum()})  # fmt: skip
    return pd.DataFrame(out)


def interval(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    return scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values))


def test_every_row_has_counts_and_an_exact_p_value(rows):
    assert sorted(rows["seed"].unique()) == list(SEEDS) and len(rows) == len(SEEDS) * (1 + 8 * (4 + 2))
    change = rows["delta"] * rows["n_test"] / 100
    assert ((rows["n_gained"] - rows["n_lost"]) - change).abs().max() < 1e-6
    for row in rows.itertuples():
        n = int(row.n_gained + row.n_lost)
        expected = 1.0 if n == 0 else scipy_stats.binomtest(int(row.n_gained), n, 0.5).pvalue
        assert row.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert (rows["p_value"] < 1e-3).any()  # replacing a position by a large vector costs many images


def test_summary_frequency_csv_equals_independent_bh_and_t(reports, rows):
    result = CliRunner().invoke(app, ["summary", "--reports", str(reports)])
    assert result.exit_code == 0, result.output
    frequency = pd.read_csv(reports / "summary_frequency.csv")
    assert len(frequency) == 1
    got = frequency.iloc[0]
    expected = independent_frequency(rows)
    for stem in ("frequency", "frequency_significant"):
        assert got[f"{stem}_mean"] == pytest.approx(expected[stem].mean(), rel=1e-12)
        assert got[f"{stem}_n"] == len(SEEDS)
        low, high = interval(expected[stem])
        assert (got[f"{stem}_ci95_low"], got[f"{stem}_ci95_high"]) == pytest.approx((low, high), rel=1e-9)
    per_seed = pd.read_csv(reports / "summary_frequency_counts.csv").sort_values("seed")
    np.testing.assert_allclose(per_seed["frequency_significant"], expected["frequency_significant"])
    markdown = (reports / "summary_frequency.md").read_text()
    assert "frequency_significant 95% CI" in markdown and "Benjamini-Hochberg" in markdown


def test_figures_draw_the_intervals_and_the_significant_share(reports, rows):
    expected = independent_frequency(rows)
    ax = figures.frequency_figure(reports).axes[0]
    (errors,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    ((_, low), (_, high)) = errors.lines[2][0].get_segments()[0]
    assert (low, high) == pytest.approx(interval(expected["frequency"]), rel=1e-9)
    hatched = [p.get_height() for p in ax.patches if p.get_hatch()]
    assert hatched == pytest.approx([expected["frequency_significant"].mean()])

    heat = figures.heatmap_figure(reports, "digits")
    framed = sum(isinstance(p, Rectangle) for a in heat.axes for p in a.patches)
    significant = set()
    for _, run in rows[rows.op != "none"].groupby("seed"):
        q = scipy_stats.false_discovery_control(run["p_value"].to_numpy(), method="bh")
        significant |= set(zip(run["op"][q < 0.05], run["position"][q < 0.05], run["factor"][q < 0.05]))
    assert framed == len(significant) > 0
