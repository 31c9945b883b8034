"""Smoke mode: the same study structure on the embedded default, to prove a study file end to end on a CPU.

Every dataset becomes ``digits`` and every backbone the tiny CLIP; two epochs, at most 4 shots, the first seed, every
variant and every job kind (encode, train, corrupt, evaluate) are kept; corruption sweeps keep their ops
and factors on two positions, one draw, a few test images. A recipe is dropped (it would set the backbone
or the epochs back; its dataset rules do not apply to digits). Transfer protocols (dg,
crossdataset) train on their source dataset only, so a smoke run trains them as few-shot runs and
evaluates on digits. Outputs go to ``./smoke/<name>/`` (never the study's ``[outputs]``, which on a
cluster names shared paths), on the CPU whatever ``[resources]`` asks, offline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nemesis_analysis.study.spec import Backbone, Outputs, Resources, Study

SMOKE_DATASET = "digits"
SMOKE_BACKBONE = Backbone("nemesis-tiny", "embedded")
SMOKE_EPOCHS = 2  # the first is CoOp's constant-lr warm-up: a second one learns, and trajectories have a slope
SMOKE_MAX_SHOTS = 4  # larger shot counts train as 4 shots (batch-1 methods step once per image)
SMOKE_POSITIONS = 2  # corruption sweeps: the first two positions, one draw per replace std
SMOKE_MAX_TEST = 60  # corruption sweeps: a stratified subsample of the test images
SMOKE_FOLDER = Path("smoke")
_SOURCE_ONLY_PROTOCOLS = ("dg", "crossdataset")  # train on ImageNet only: refused on digits


def smoke_root(study: Study) -> Path:
    """``./smoke/<name>`` (relative to the current directory)."""
    return SMOKE_FOLDER / study.name


def smoke_study(study: Study, checkpoints: Path | None = None, reports: Path | None = None) -> Study:
    """``study`` mapped onto the embedded default, writing under ``./smoke/<name>/`` unless overridden."""
    grid = study.grid
    protocol = "fewshot" if grid.protocol in _SOURCE_ONLY_PROTOCOLS else grid.protocol
    smoke_grid = dataclasses.replace(
        grid, datasets=(SMOKE_DATASET,), backbones=(SMOKE_BACKBONE,), seeds=grid.seeds[:1], epochs=SMOKE_EPOCHS,
        shots=tuple(dict.fromkeys(min(shots, SMOKE_MAX_SHOTS) for shots in grid.shots)),
        precision=None, protocol=protocol, recipe=None,
    )  # fmt: skip
    corrupt = study.corrupt
    if corrupt is not None:
        positions = corrupt.positions[:SMOKE_POSITIONS] if corrupt.positions else tuple(range(SMOKE_POSITIONS))
        corrupt = dataclasses.replace(corrupt, positions=positions, reps=1, max_test=SMOKE_MAX_TEST)
    evaluate = study.evaluate
    if evaluate is not None:
        evaluate = dataclasses.replace(evaluate, targets=(SMOKE_DATASET,))
    root = smoke_root(study)
    outputs = Outputs(checkpoints=root / "checkpoints", reports=root / "reports", device="cpu", offline=True)
    resources = Resources(num_cpus=1.0, num_gpus=0.0, max_retries=study.resources.max_retries, max_parallel=None)
    smoke = dataclasses.replace(
        study, grid=smoke_grid, corrupt=corrupt, evaluate=evaluate, outputs=outputs, resources=resources
    )
    return smoke.with_outputs(checkpoints, reports)
