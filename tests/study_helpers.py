"""A tiny study for the study tests: digits + the tiny CLIP, 2 seeds x CoOp and PUN, 2 epochs, 2 positions, 1 factor."""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_STUDY = """
[study]
name = "tiny"

[grid]
datasets = ["digits"]
shots = [2]
seeds = [1, 2]
backbones = ["nemesis-tiny"]
methods = ["coop", "pun"]
epochs = 2

[prompt]
n_ctx = 4

[corrupt]
ops = ["rescale"]
positions = [0, 1]
factors = [0.5]
chunk = 1

[outputs]
checkpoints = "{checkpoints}"
reports = "{reports}"
device = "cpu"

[resources]
num_cpus = 1
max_retries = 2
"""


def write_tiny_study(folder: Path, warm_checkpoints: Path, extra: str = "", datasets: str = '["digits"]') -> Path:
    """A study file whose checkpoints folder starts with the session's tiny CLIP (so nothing is pretrained)."""
    checkpoints, reports = folder / "checkpoints", folder / "reports"
    checkpoints.mkdir(parents=True, exist_ok=True)
    tiny = Path(warm_checkpoints) / "nemesis-tiny"
    if tiny.is_dir() and not (checkpoints / "nemesis-tiny").exists():
        shutil.copytree(tiny, checkpoints / "nemesis-tiny")
    text = TINY_STUDY.format(checkpoints=checkpoints, reports=reports).replace(
        'datasets = ["digits"]', f"datasets = {datasets}"
    )
    path = folder / "study.toml"
    path.write_text(text + extra)
    return path
