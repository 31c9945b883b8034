"""CLI: errors are one line with exit code 2; train writes its tables."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from nemesis_analysis.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--backbone", "ViT-Z-99"], "unknown backbone 'ViT-Z-99'"),
        (["--dataset", "caltech101", "--data-root", "/nonexistent/data"], "data root /nonexistent/data does not exist"),
        (["--dataset", "caltech101"], "needs --data-root"),
        (["--shots", "0"], "shots must be at least 1, got 0 (flag --shots)"),
        (["--n-ctx", "0"], "prompt.n_ctx must be at least 1, got 0 (flag --n-ctx)"),
        (["--lr", "nan"], "optim.lr must be a finite number, got nan (flag --lr)"),
        (["--pan", "--pan-factor", "inf"], "nemesis.pan_factor must be a finite number, got inf (flag --pan-factor)"),
        (["--beta", "1.5"], "nemesis.beta must lie in [0, 1], got 1.5 (flag --beta)"),
        (["--alpha", "-1"], "nemesis.weight must be >= 0, got -1.0 (flag --norm-weight)"),
        (["--set", "optim.momentum=1"], "optim.momentum must lie in [0, 1), got 1.0"),
        (["--set", "nemesis.gamma=1"], "unknown config key 'nemesis.gamma'"),
        (["--set", "shots=four"], "shots: cannot read 'four' as int (flag --shots)"),
        (["--class-token-position", "side"], "unknown class-token position 'side'"),
        (["--pun", "--pan"], "only one of --pun, --pan"),
        (["--precision", "fp16", "--device", "cpu"], "needs a CUDA device"),
        (["--pretrained", "/no/such/weights.pt"], "weights file /no/such/weights.pt not found"),
        (
            ["--backbone", "RN50", "--pretrained", "openai", "--offline", "--cache-dir", "/no/such/cache"],
            "not in the local cache and offline mode forbids downloading",
        ),
    ],
)
def test_train_errors_are_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.delenv("NEMESIS_DATA", raising=False)
    result = runner.invoke(
        app, ["train", "--quiet", "--checkpoints", str(tmp_path / "ck"), "--reports", str(tmp_path / "rep"), *args]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "rep").exists()  # nothing written


def test_train_cli_writes_tables(checkpoints_dir, tmp_path):
    args = [
        "train",
        "--quiet",
        "--shots",
        "1",
        "--epochs",
        "2",
        "--pun",
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nemesis-pun" in result.output and "zero-shot accuracy" in result.output
    runs = pd.read_parquet(tmp_path / "runs")
    assert list(runs.regularizer) == ["nemesis-pun"] and runs.epochs.iloc[0] == 2
    assert len(pd.read_parquet(tmp_path / "trajectories")) == 2 * 16
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reused finished run" in again.output
    assert len(pd.read_parquet(tmp_path / "runs")) == 1


def test_recipe_paper_prints_and_records_every_change(checkpoints_dir, tmp_path):
    args = [
        "train",
        "--quiet",
        "--shots",
        "1",
        "--n-ctx",
        "2",
        "--csc",
        "--pun",
        "--recipe",
        "paper",
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    changes = "epochs=50 (CoOp table), optim.drop_last=True, nemesis.csc_reduction=sum"
    assert f"recipe paper: {changes}" in result.output
    runs = pd.read_parquet(tmp_path / "runs")
    assert list(runs.recipe) == ["paper"] and list(runs.recipe_changes) == [changes] and runs.epochs.iloc[0] == 50


def test_corrupt_recipe_paper_uses_the_corruption_scripts_epochs(tmp_path):
    result = runner.invoke(
        app,
        [
            "corrupt",
            "--shots",
            "2",
            "--recipe",
            "paper",
            "--print-config",
            "--checkpoints",
            str(tmp_path / "ck"),
            "--reports",
            str(tmp_path / "rep"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recipe paper: epochs=50 (corruption-script table), optim.drop_last=True" in result.output
    assert "\nepochs = 50\n" in result.output and "drop_last = true" in result.output
    trained = runner.invoke(app, ["train", "--shots", "2", "--recipe", "paper", "--print-config"])
    assert "epochs=100 (CoOp table)" in trained.output and "\nepochs = 100\n" in trained.output
