"""Training: run identity, resume, accuracy, Nemesis norms, tables, divergence."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from nemesis_analysis import store
from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig, apply_recipe
from nemesis_analysis.data.fewshot import load_split, sample_few_shot
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import ConfigError, TrainingDiverged
from nemesis_analysis.train import Workspace, lr_at_epoch, train_prompt


def test_run_id_is_stable_and_sensitive():
    a = RunConfig(shots=4, seed=1)
    assert a.run_id == RunConfig(shots=4, seed=1).run_id
    assert len(a.run_id) == 12
    assert a.run_id != RunConfig(shots=4, seed=2).run_id
    assert a.run_id != RunConfig(shots=4, seed=1, nemesis=NemesisConfig(beta=1.0)).run_id
    assert a.run_id != RunConfig(shots=4, seed=1, prompt=PromptConfig(csc=True)).run_id
    # Round trip through JSON keeps the id (it is what resume and reuse rely on).
    assert RunConfig.from_dict(json.loads(json.dumps(a.to_dict()))).run_id == a.run_id
    # A known value guards against accidental changes of the hashing scheme.
    assert RunConfig(shots=4, seed=1).resolved("cpu").run_id == RunConfig(shots=4, seed=1, epochs=100, precision="fp32").run_id


def test_methods_and_recipes():
    assert RunConfig().method == "coop"
    assert RunConfig(nemesis=NemesisConfig(beta=1.0)).method == "nemesis-pun"
    assert RunConfig(nemesis=NemesisConfig(beta=0.0)).method == "nemesis-pan"
    assert RunConfig(nemesis=NemesisConfig(beta=0.5)).method == "nemesis-beta0.5"
    pan_pets = RunConfig(dataset="oxford_pets", nemesis=NemesisConfig(beta=0.0))
    paper, changed = apply_recipe(pan_pets, "paper")
    assert paper.nemesis.weight == 50.0 and paper.nemesis.omega.value == "constant" and paper.recipe == "paper"
    same, changed = apply_recipe(RunConfig(dataset="caltech101", nemesis=NemesisConfig(beta=0.0)), "paper")
    assert changed == {} and same.nemesis.weight == 1.0  # no dataset is special without the recipe... nor other datasets
    coop, changed = apply_recipe(RunConfig(dataset="caltech101", shots=2, backbone="nemesis-tiny"), "coop")
    assert (coop.backbone, coop.pretrained, coop.epochs, coop.prompt.n_ctx) == ("RN50", "openai", 100, 16)


def test_lr_schedule_matches_coop():
    config = RunConfig(epochs=10)
    assert lr_at_epoch(0, config) == pytest.approx(1e-5)
    assert lr_at_epoch(1, config) == pytest.approx(0.002)
    assert lr_at_epoch(6, config) == pytest.approx(0.5 * 0.002 * (1 + math.cos(math.pi * 5 / 10)))
    assert all(lr_at_epoch(e, config) > lr_at_epoch(e + 1, config) for e in range(1, 9))


def test_few_shot_sampling_is_deterministic_and_complete():
    data = load_dataset("digits")
    a = sample_few_shot(data.train, 4, seed=1)
    assert a == sample_few_shot(data.train, 4, seed=1)
    assert a != sample_few_shot(data.train, 4, seed=2)
    counts = pd.Series([s.label for s in a]).value_counts()
    assert (counts == 4).all() and len(counts) == 10
    # the split is fixed and disjoint
    train, test = {s.source for s in data.train}, {s.source for s in data.test}
    assert not train & test and len(data.test) == 540


def _config(**kwargs) -> RunConfig:
    base = dict(shots=2, epochs=4, optim=OptimConfig(batch_size=8))
    base.update(kwargs)
    return RunConfig(**base)


def test_resume_equals_uninterrupted(tiny_context, checkpoints_dir, tmp_path):
    config = _config(nemesis=NemesisConfig(beta=0.5))
    full_ws = Workspace(checkpoints_dir, tmp_path / "full")
    full = train_prompt(config, full_ws, context=tiny_context, progress=False, save_every=1)

    resumed_ws = Workspace(tmp_path / "ck", tmp_path / "resumed")
    resumed_ws.checkpoints_dir.mkdir()
    (resumed_ws.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    with pytest.raises(KeyboardInterrupt):
        train_prompt(config, resumed_ws, context=tiny_context, progress=False, save_every=1, stop_after_epoch=1)
    assert not store.existing_keys(resumed_ws.reports_dir, "trajectories", full.run_id)  # nothing half-written
    resumed = train_prompt(config, resumed_ws, context=tiny_context, progress=False, save_every=1)
    assert resumed.run_id == full.run_id and not resumed.reused

    a = store.read_table(full_ws.reports_dir, "trajectories").drop(columns=[])
    b = store.read_table(resumed_ws.reports_dir, "trajectories")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert resumed.final_test_acc == full.final_test_acc and resumed.position_norms == full.position_norms

    # a finished run is reused, not redone
    again = train_prompt(config, full_ws, context=tiny_context, progress=False)
    assert again.reused and again.final_test_acc == full.final_test_acc
    assert len(store.read_table(full_ws.reports_dir, "runs", dedupe=False)) == 1


def test_trajectory_table_has_one_row_per_epoch_and_position(tiny_context, checkpoints_dir, tmp_path):
    config = _config(epochs=3, prompt=PromptConfig(n_ctx=5), nemesis=NemesisConfig(beta=0.0))
    ws = Workspace(checkpoints_dir, tmp_path / "reports")
    result = train_prompt(config, ws, context=tiny_context, progress=False)
    traj = pd.read_parquet(tmp_path / "reports" / "trajectories")
    assert len(traj) == 3 * 5
    assert sorted(set(zip(traj.epoch, traj.position))) == [(e, p) for e in range(3) for p in range(5)]
    for column in ["run_id", "dataset", "backbone", "pretrained", "shots", "seed", "method", "n_ctx", "csc",
                   "class_token_position", "precision", "epoch", "position", "norm", "test_acc", "train_loss",
                   "ce_loss", "norm_loss", "omega", "alpha"]:
        assert column in traj.columns
    assert (traj.method == "nemesis-pan").all() and traj.alpha.between(0, 1).all()
    omega = traj.groupby("epoch").omega.first()
    assert omega[0] == pytest.approx(1 - 1 / (1 + math.exp(-0.2 * (0 - 1.5))))
    runs = pd.read_parquet(tmp_path / "reports" / "runs")
    assert runs.final_test_acc.iloc[0] == pytest.approx(traj[traj.epoch == 2].test_acc.iloc[0])
    split = load_split(result.run_dir / "split.json")
    assert len(split["train"]) == 2 * 10 and len(split["val"]) == 2 * 10
    # 20 images in batches of 8: the last batch of 4 is kept, so every image is seen each epoch
    assert (result.run_dir / "prompt.safetensors").is_file()


def test_coop_beats_zero_shot_and_pun_shrinks_norms(tiny_context, checkpoints_dir, tmp_path):
    ws = Workspace(checkpoints_dir, tmp_path / "reports")
    coop = train_prompt(RunConfig(shots=16, epochs=40), ws, context=tiny_context, progress=False)
    assert coop.final_test_acc > coop.zero_shot_acc + 10
    pun = train_prompt(RunConfig(shots=16, epochs=40, nemesis=NemesisConfig(beta=1.0)), ws, context=tiny_context,
                       progress=False)
    assert pun.mean_norm < coop.mean_norm
    assert pun.zero_shot_acc == coop.zero_shot_acc


def test_non_finite_loss_stops_with_epoch(tiny_context, checkpoints_dir, tmp_path):
    config = _config(epochs=3, optim=OptimConfig(lr=1e30, batch_size=8))
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train_prompt(config, Workspace(checkpoints_dir, tmp_path / "r"), context=tiny_context, progress=False,
                     save_every=1)
    state = json.loads((checkpoints_dir / config.resolved("cpu").run_id / "state.json").read_text())
    assert state["epoch"] == 0  # the last good checkpoint stays


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shots=0), "shots must be at least 1"),
        (dict(prompt=dict(n_ctx=0)), "prompt.n_ctx must be at least 1"),
        (dict(prompt=dict(class_token_position="side")), "class-token position"),
        (dict(nemesis=dict(beta=2.0)), r"nemesis.beta must lie in \[0, 1\]"),
        (dict(precision="fp64"), "precision"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({**RunConfig().to_dict(), **kwargs})


def test_state_killed_between_its_two_files_is_not_resumed(tiny_context, checkpoints_dir, tmp_path):
    from safetensors.torch import load_file

    config = _config(epochs=3)
    ws = Workspace(tmp_path / "ck", tmp_path / "reports")
    ws.checkpoints_dir.mkdir()
    (ws.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    with pytest.raises(KeyboardInterrupt):
        train_prompt(config, ws, context=tiny_context, progress=False, save_every=1, stop_after_epoch=1)
    run_dir = ws.run_dir(config.resolved("cpu").run_id)
    # Simulate a kill after the tensors of epoch 1 were replaced but before the JSON was: an older JSON.
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({"epoch": 0, "rows": state["rows"][:4]}))
    resumed = train_prompt(config, ws, context=tiny_context, progress=False, save_every=1)
    clean = train_prompt(config, Workspace(checkpoints_dir, tmp_path / "clean"), context=tiny_context, progress=False)
    assert resumed.position_norms == clean.position_norms and resumed.final_test_acc == clean.final_test_acc
    assert load_file(str(run_dir / "state.safetensors"))["ctx"].shape == (16, 128)
