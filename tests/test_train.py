"""Training: run identity, resume, accuracy, Nemesis norms, tables, divergence."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig, apply_recipe
from nemesis_analysis.data.fewshot import load_split, sample_few_shot
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import ConfigError, TrainingDiverged
from nemesis_analysis.storage import store
from nemesis_analysis.training.train import lr_at_epoch, train_prompt


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
    assert (
        RunConfig(shots=4, seed=1).resolved("cpu").run_id
        == RunConfig(shots=4, seed=1, epochs=100, precision="fp32").run_id
    )


def test_methods_and_recipes():
    assert RunConfig().regularizer == "coop"
    assert RunConfig(nemesis=NemesisConfig(beta=1.0)).regularizer == "nemesis-pun"
    assert RunConfig(nemesis=NemesisConfig(beta=0.0)).regularizer == "nemesis-pan"
    assert RunConfig(nemesis=NemesisConfig(beta=0.5)).regularizer == "nemesis-beta0.5"
    pan_pets = RunConfig(dataset="oxford_pets", nemesis=NemesisConfig(beta=0.0))
    paper, changed = apply_recipe(pan_pets, "paper")
    # the reference: PAN's weight 50, PUN keeps A, omega = 1
    assert paper.nemesis.pan_weight == 50.0 and paper.nemesis.weight == 1.0 and paper.recipe == "paper"
    assert paper.nemesis.omega.value == "constant" and paper.nemesis.pan_alpha_weight == 50.0
    same, changed = apply_recipe(RunConfig(dataset="caltech101", nemesis=NemesisConfig(beta=0.0)), "paper")
    # no dataset is special without the recipe... nor other datasets with it
    assert not {"nemesis.weight", "nemesis.pan_weight", "nemesis.omega"} & set(changed)
    assert same.nemesis.pan_alpha_weight == 1.0 and same.nemesis.omega.value == "sigmoid"
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


def _stop_after(last_epoch: int):
    return lambda epoch: epoch >= last_epoch


def test_resume_equals_uninterrupted(tiny_session, checkpoints_dir, tmp_path):
    config = _config(nemesis=NemesisConfig(beta=0.5))
    full_ws = tiny_session.replace(reports_dir=tmp_path / "full")
    full = train_prompt(config, full_ws, save_every=1)

    resumed_ws = tiny_session.replace(checkpoints_dir=tmp_path / "ck", reports_dir=tmp_path / "resumed")
    resumed_ws.checkpoints_dir.mkdir()
    (resumed_ws.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    stopped = train_prompt(config, resumed_ws, save_every=1, should_stop=_stop_after(1))
    assert stopped.stopped and not stopped.reused
    assert not store.existing_keys(resumed_ws.reports_dir, "trajectories", full.run_id)  # nothing half-written
    resumed = train_prompt(config, resumed_ws, save_every=1)
    assert resumed.run_id == full.run_id and not resumed.reused and not resumed.stopped

    a = store.read_table(full_ws.reports_dir, "trajectories").drop(columns=[])
    b = store.read_table(resumed_ws.reports_dir, "trajectories")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert resumed.final_test_acc == full.final_test_acc and resumed.position_norms == full.position_norms

    # a finished run is reused, not redone
    again = train_prompt(config, full_ws)
    assert again.reused and again.final_test_acc == full.final_test_acc
    assert len(store.read_table(full_ws.reports_dir, "runs", dedupe=False)) == 1


def test_trajectory_table_has_one_row_per_epoch_and_position(session):
    config = _config(epochs=3, prompt=PromptConfig(n_ctx=5), nemesis=NemesisConfig(beta=0.0))
    result = train_prompt(config, session)
    traj = pd.read_parquet(session.reports_dir / "trajectories")
    assert len(traj) == 3 * 5
    assert sorted(set(zip(traj.epoch, traj.position))) == [(e, p) for e in range(3) for p in range(5)]
    for column in [
        "run_id",
        "dataset",
        "backbone",
        "pretrained",
        "shots",
        "seed",
        "regularizer",
        "n_ctx",
        "csc",
        "class_token_position",
        "precision",
        "epoch",
        "position",
        "norm",
        "test_acc",
        "train_loss",
        "ce_loss",
        "norm_loss",
        "omega",
        "alpha",
    ]:
        assert column in traj.columns
    assert (traj.regularizer == "nemesis-pan").all() and traj.alpha.between(0, 1).all()
    omega = traj.groupby("epoch").omega.first()
    assert omega[0] == pytest.approx(1 - 1 / (1 + math.exp(-0.2 * (0 - 1.5))))
    runs = pd.read_parquet(session.reports_dir / "runs")
    assert runs.final_test_acc.iloc[0] == pytest.approx(traj[traj.epoch == 2].test_acc.iloc[0])
    split = load_split(result.run_dir / "split.json")
    assert len(split["train"]) == 2 * 10 and len(split["val"]) == 2 * 10
    # 20 images in batches of 8: the last batch of 4 is kept, so every image is seen each epoch
    assert (result.run_dir / "prompt.safetensors").is_file()


def test_coop_beats_zero_shot_and_pun_shrinks_norms(session):
    coop = train_prompt(RunConfig(shots=16, epochs=100), session)
    assert coop.final_test_acc > coop.zero_shot_acc + 10
    pun = train_prompt(RunConfig(shots=16, epochs=100, nemesis=NemesisConfig(beta=1.0)), session)
    assert pun.mean_norm < coop.mean_norm
    assert pun.zero_shot_acc == coop.zero_shot_acc


def test_non_finite_loss_stops_with_epoch(tiny_session, checkpoints_dir, tmp_path):
    config = _config(epochs=3, optim=OptimConfig(lr=1e30, batch_size=8))
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train_prompt(config, tiny_session.replace(reports_dir=tmp_path / "r"), save_every=1)
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


def test_state_killed_between_its_two_files_is_not_resumed(tiny_session, fresh_session, checkpoints_dir, tmp_path):
    from safetensors.torch import load_file

    config = _config(epochs=3)
    ws = fresh_session
    ws.checkpoints_dir.mkdir()
    (ws.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    assert train_prompt(config, ws, save_every=1, should_stop=_stop_after(1)).stopped
    run_dir = ws.run_dir(config.resolved("cpu").run_id).path
    # Simulate a kill after the tensors of epoch 1 were replaced but before the JSON was: an older JSON.
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({"epoch": 0, "rows": state["rows"][:4]}))
    resumed = train_prompt(config, ws, save_every=1)
    clean = train_prompt(config, tiny_session.replace(reports_dir=tmp_path / "clean"))
    assert resumed.position_norms == clean.position_norms and resumed.final_test_acc == clean.final_test_acc
    assert load_file(str(run_dir / "state.safetensors"))["ctx"].shape == (16, 128)


def test_run_files_get_umask_permissions(fresh_session):
    """safetensors writes private 0600 files; every file of a run (and the feature cache) gets the umask's mode."""
    import os
    import stat

    from nemesis_analysis.storage.fsio import file_mode

    ws = fresh_session
    config = _config(epochs=2, prompt=PromptConfig(n_ctx=3))
    result = train_prompt(config, ws)
    names = ["prompt.safetensors", "prompt.json", "state.safetensors", "state.json", "result.json", "split.json",
             "config.json", "runs.parquet", "trajectories.parquet"]  # fmt: skip
    modes = {name: stat.S_IMODE(os.stat(result.run_dir / name).st_mode) for name in names}
    features = list((ws.checkpoints_dir / "features").glob("*.safetensors"))
    assert features
    modes.update({f.name: stat.S_IMODE(os.stat(f).st_mode) for f in features})
    assert modes == {name: file_mode() for name in modes}
    assert not [p for p in result.run_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_session_caches_are_shared_by_its_copies(tiny_session, tmp_path):
    other = tiny_session.replace(reports_dir=tmp_path / "reports")
    assert other.reports_dir == tmp_path / "reports" and tiny_session.reports_dir != other.reports_dir
    assert other.model("nemesis-tiny", "embedded") is tiny_session.model("nemesis-tiny", "embedded")
    assert other.dataset("digits") is tiny_session.dataset("digits")
    assert other.run_dir("abc").path == tiny_session.checkpoints_dir / "abc"
    assert other.feature_cache == tiny_session.checkpoints_dir / "features"
