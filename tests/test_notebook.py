"""notebooks/exploration.ipynb runs top to bottom on the embedded default (trains the demo's 3 runs once)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "exploration.ipynb"


def test_notebook_executes(checkpoints_dir, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    # The kernel inherits this process's environment: point the notebook at temp folders.
    monkeypatch.setenv("NEMESIS_CHECKPOINTS", str(checkpoints_dir))
    monkeypatch.setenv("NEMESIS_REPORTS", str(reports))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    text = "".join(out.get("text", "") for out in outputs) + "".join(
        out.get("data", {}).get("text/markdown", "") for out in outputs
    )
    # Trajectory (mean and per position) and the two norms figures need only the trained runs.
    assert len(images) >= 4
    assert "CoOp reached" in text and "Nemesis PUN" in text
    assert (reports / "runs").is_dir() and (reports / "figures").is_dir()
    assert (reports / "figures" / "trajectory_digits_16shot_seed1.png").is_file()
    # The demo's sweep ran, so every figure is drawn.
    assert (reports / "corruptions").is_dir()
    assert len(images) >= 6, text
    assert "Low-Norm Effect frequency for coop" in text
    assert (reports / "figures" / "frequency.png").is_file() and (reports / "figures" / "heatmap_digits.png").is_file()


STUDY_NOTEBOOK = NOTEBOOK.parent / "study.ipynb"


def test_study_notebook_executes(checkpoints_dir, tmp_path, monkeypatch):
    """notebooks/study.ipynb on the demo study's smoke run: tables, the paper comparison, statistics, figures, report."""
    reports = tmp_path / "reports"
    monkeypatch.setenv("NEMESIS_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("NEMESIS_REPORTS", str(reports))
    monkeypatch.setenv("NEMESIS_STUDY_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(STUDY_NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(STUDY_NOTEBOOK.parent)}}
    )
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    text = "".join(out.get("text", "") for out in outputs)
    assert len(images) >= 3, text  # frequency, trajectory, heatmap
    assert "5 jobs run now, 0 failed" in text  # encode, 2 train, 2 corrupt: the demo study on one seed
    assert "nemesis-pun (weight 1) 5-shot" not in text and "nemesis-pun (weight 1) 4-shot - coop 4-shot" in text
    assert (reports / "studies" / "demo" / "report.html").is_file()
