"""CLI over real-layout data and weights: `nemesis datasets`, `nemesis models`, --recipe coop, and a CoOp
checkpoint trained elsewhere analysed by `nemesis corrupt`, all on fixture trees (no network, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from nemesis_analysis.cli import app, build_run_config
from nemesis_analysis.data.fixtures import make_fixture_root

runner = CliRunner()


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- datasets


@pytest.fixture()
def damaged_root(tmp_path) -> Path:
    """Three datasets in the real layouts, each with one planted problem except dtd; the rest absent."""
    root = make_fixture_root(tmp_path / "data", ["caltech101", "dtd", "oxford_pets"])
    caltech = root / "caltech-101"
    split = json.loads((caltech / "split_zhou_Caltech101.json").read_text())
    missing = caltech / "101_ObjectCategories" / split["train"][0][0]
    missing.unlink()  # a split entry whose image is gone
    broken = caltech / "101_ObjectCategories" / split["test"][0][0]
    broken.write_bytes(b"not an image")  # an image PIL cannot open
    (root / "oxford_pets" / "split_zhou_OxfordPets.json").unlink()  # the split file is missing
    return root


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_datasets_reports_every_problem_and_exits_0(damaged_root):
    before = snapshot(damaged_root)
    result = runner.invoke(app, ["datasets", "--data-root", str(damaged_root)])
    assert result.exit_code == 0, result.output
    out = result.output
    problems = [line for line in lines_of(out) if line.startswith("problem:")]
    caltech = [p for p in problems if p.startswith("problem: caltech101:")]
    assert len(caltech) == 2
    assert "1 of 6 train entries point at missing files" in caltech[0] and "re-extract the images" in caltech[0]
    assert (
        "1 of 6 sampled test images cannot be opened" in caltech[1] and "replace them with intact copies" in caltech[1]
    )
    pets = [p for p in problems if p.startswith("problem: oxford_pets:")]
    assert len(pets) == 1 and "split_zhou_OxfordPets.json not found; download split_zhou_OxfordPets.json" in pets[0]
    assert not any(p.startswith("problem: dtd:") for p in problems)
    assert any(p.startswith("problem: eurosat: not found at") and "download it there" in p for p in problems)
    for name in ("caltech101", "dtd", "oxford_pets", "imagenet", "ucf101"):
        assert name in out
    assert "3 of 15 datasets found, 1 without problems" in out
    assert snapshot(damaged_root) == before  # a report: nothing created, changed or deleted


def test_datasets_counts_on_a_clean_root(tmp_path):
    root = make_fixture_root(tmp_path / "data", ["dtd"], num_classes=4, images_per_split=(3, 1, 2))
    result = runner.invoke(app, ["datasets", "--data-root", str(root), "--sample", "0"])
    assert result.exit_code == 0, result.output
    row = next(line for line in lines_of(result.output) if "│ dtd" in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[:6] == ["dtd", "ok", "4", "12", "4", "8"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "diagnose needs --data-root DIR"),
        (["--data-root", "/nonexistent/data"], "data root /nonexistent/data does not exist"),
        (["--data-root", ".", "--sample", "-1"], "--sample must be at least 0"),
    ],
)
def test_datasets_user_errors_exit_2(args, message, monkeypatch):
    monkeypatch.delenv("NEMESIS_DATA", raising=False)
    result = runner.invoke(app, ["datasets", *args])
    assert result.exit_code == 2, result.output
    assert len(lines_of(result.output)) == 1 and message in result.output


# --------------------------------------------------------------------------------------------- models


def test_models_lists_tags_and_cached_weights(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "RN50.pt").write_bytes(b"placeholder")  # open_clip's legacy cache name for RN50/openai
    result = runner.invoke(
        app, ["models", "--filter", "rn50", "--cache-dir", str(cache), "--checkpoints", str(tmp_path / "ck")]
    )
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells
        for line in lines_of(result.output)
        if (cells := [c.strip() for c in line.split("│") if c.strip()]) and cells[0].startswith("RN50")
    }
    assert set(rows) >= {"RN50", "RN50-quickgelu", "RN50x4"}
    assert "openai" in rows["RN50"][1] and rows["RN50"][2] == "openai"
    assert "ViT-B-16" not in result.output


def test_models_includes_the_tiny_clip(tmp_path):
    result = runner.invoke(app, ["models", "--filter", "tiny", "--checkpoints", str(tmp_path)])
    assert result.exit_code == 0 and "nemesis-tiny" in result.output and "embedded" in result.output
    result = runner.invoke(app, ["models", "--filter", "no-such-arch"])
    assert result.exit_code == 0 and "no architecture matches 'no-such-arch'" in result.output


# ---------------------------------------------------------------------------------------------- recipe


def test_recipe_coop_is_printed_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("NEMESIS_DATA", raising=False)
    root = make_fixture_root(tmp_path / "data", ["caltech101"])
    # Offline without cached RN50 weights: the recipe line first, then the missing file, exit 2.
    result = runner.invoke(
        app,
        [
            "train",
            "--quiet",
            "--recipe",
            "coop",
            "--dataset",
            "caltech101",
            "--shots",
            "2",
            "--data-root",
            str(root),
            "--offline",
            "--checkpoints",
            str(tmp_path / "ck"),
            "--reports",
            str(tmp_path / "rep"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "recipe coop: backbone=RN50, pretrained=openai" in result.output and "epochs=100" in result.output
    assert "RN50/openai are not in the local cache" in result.output
    config = build_run_config(
        dataset="caltech101", shots=2, n_ctx=4, csc=True, class_token_position="front", recipe="coop"
    )
    assert config.recipe == "coop" and config.backbone == "RN50" and config.prompt.n_ctx == 16
    assert not config.prompt.csc and config.config_columns()["recipe"] == "coop"


# -------------------------------------------------------------------- train, then corrupt a CoOp checkpoint


def has_command(name: str) -> bool:
    return any((c.name or c.callback.__name__) == name for c in app.registered_commands)


def test_train_then_corrupt_on_fixture_root(checkpoints_dir, tmp_path):
    root = make_fixture_root(tmp_path / "data", ["caltech101"], images_per_split=(2, 1, 3))
    reports = tmp_path / "reports"
    common = [
        "--dataset",
        "caltech101",
        "--data-root",
        str(root),
        "--backbone",
        "nemesis-tiny",
        "--shots",
        "1",
        "--seed",
        "1",
        "--epochs",
        "2",
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(reports),
    ]
    result = runner.invoke(app, ["train", "--quiet", *common])
    assert result.exit_code == 0, result.output
    runs = pd.read_parquet(reports / "runs")
    assert list(runs.dataset) == ["caltech101"] and list(runs.backbone) == ["nemesis-tiny"]
    if not has_command("corrupt"):
        pytest.skip("the corrupt command is not in this checkout yet")
    grid = ["--positions", "0", "--factors", "0.5", "--stds", "0", "--reps", "1"]
    result = runner.invoke(app, ["corrupt", "--quiet", *common, *grid])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(reports / "corruptions")
    assert set(table.op) == {"none", "rescale", "replace"} and set(table.dataset) == {"caltech101"}

    # The same context written as a CoOp/Dassl checkpoint, analysed through --prompt: same accuracy.
    from safetensors.torch import load_file

    run_dir = Path(runs.checkpoint.iloc[0])
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    ctx = load_file(str(run_dir / "prompt.safetensors"))["ctx"]
    dassl = tmp_path / "coop_output" / "prompt_learner"
    dassl.mkdir(parents=True)
    state = {
        "ctx": ctx,
        "token_prefix": torch.zeros(3, 1, ctx.shape[-1]),
        "token_suffix": torch.zeros(3, 60, ctx.shape[-1]),
    }
    torch.save({"state_dict": state, "epoch": 50, "optimizer": None, "scheduler": None}, dassl / "model.pth.tar-50")
    other_reports = tmp_path / "reports-coop"
    args = [
        "corrupt",
        "--quiet",
        "--dataset",
        "caltech101",
        "--data-root",
        str(root),
        "--backbone",
        "nemesis-tiny",
        "--prompt",
        str(dassl / "model.pth.tar-50"),
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(other_reports),
        *grid,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    imported = pd.read_parquet(other_reports / "corruptions")
    assert imported.acc_original.iloc[0] == pytest.approx(table.acc_original.iloc[0])

    # A checkpoint of another width is refused in one line, exit 2.
    torch.save({"state_dict": {"ctx": torch.zeros(16, 512)}, "epoch": 50}, dassl / "model.pth.tar-60")
    args[args.index("--prompt") + 1] = str(dassl / "model.pth.tar-60")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "width 512" in result.output and "text width is 128" in result.output
