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
