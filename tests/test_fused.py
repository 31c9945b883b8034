"""Fused training of sibling runs: each run's artifact, rows and run id equal its solo run's, resume included."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from study_helpers import write_tiny_study
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.config import NemesisConfig, OptimConfig, RunConfig
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.storage import store
from nemesis_analysis.storage.artifacts import read_prompt
from nemesis_analysis.study import records, work
from nemesis_analysis.study.plan import make_plan
from nemesis_analysis.study.runner import run_study
from nemesis_analysis.study.spec import load_study
from nemesis_analysis.training import train
from nemesis_analysis.training.siblings import check_siblings, group_by_stream
from nemesis_analysis.training.train import Hooks, train_prompt, train_siblings

ONE_TEST_IMAGE = 100.0 / 540  # digits' test split, in accuracy points


def _siblings(**kwargs) -> list[RunConfig]:
    """CoOp, PUN and PAN on digits, 4 shots, seed 1, 3 epochs (40 images: two steps per epoch)."""
    base = dict(shots=4, seed=1, epochs=3, **kwargs)
    return [RunConfig(**base), RunConfig(**base, nemesis=NemesisConfig(beta=1.0)),
            RunConfig(**base, nemesis=NemesisConfig(beta=0.0))]  # fmt: skip


def _fresh(tiny_session, checkpoints_dir, tmp_path, name: str):
    """A session with its own checkpoints and reports (sharing the warm feature cache)."""
    session = tiny_session.replace(checkpoints_dir=tmp_path / name / "ck", reports_dir=tmp_path / name / "reports")
    session.checkpoints_dir.mkdir(parents=True)
    (checkpoints_dir / "features").mkdir(exist_ok=True)
    (session.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    return session


@pytest.fixture(scope="module")
def solo_runs(tiny_session, checkpoints_dir, tmp_path_factory):
    """The three siblings trained alone, one ``train_prompt`` each: (session, results)."""
    session = _fresh(tiny_session, checkpoints_dir, tmp_path_factory.mktemp("solo"), "solo")
    return session, [train_prompt(config, session) for config in _siblings()]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["run_id", "epoch", "position"]).reset_index(drop=True)


def _assert_same_runs(solo_session, solo, fused_session, fused) -> None:
    assert [r.run_id for r in fused] == [r.run_id for r in solo]
    for a, b in zip(solo, fused):
        prompt_a = read_prompt(a.run_dir).ctx
        prompt_b = read_prompt(b.run_dir).ctx
        assert torch.allclose(prompt_a, prompt_b, atol=1e-5, rtol=0)
        assert abs(a.final_test_acc - b.final_test_acc) <= ONE_TEST_IMAGE + 1e-9
    traj_a = _sorted(store.read_table(solo_session.reports_dir, "trajectories"))
    traj_b = _sorted(store.read_table(fused_session.reports_dir, "trajectories"))
    assert len(traj_a) == 3 * 3 * 16
    pd.testing.assert_frame_equal(traj_a, traj_b, rtol=1e-5, atol=1e-5)
    runs_a = store.read_table(solo_session.reports_dir, "runs").set_index("run_id").sort_index()
    runs_b = store.read_table(fused_session.reports_dir, "runs").set_index("run_id").sort_index()
    columns = [c for c in runs_a.columns if c not in ("seconds", "checkpoint")]
    pd.testing.assert_frame_equal(runs_a[columns], runs_b[columns], rtol=1e-5, atol=1e-5)


def test_fused_siblings_equal_solo_runs_with_one_image_pass_per_step(solo_runs, tiny_session, checkpoints_dir,
                                                                     tmp_path, monkeypatch):  # fmt: skip
    configs = _siblings()
    solo_session, solo = solo_runs

    batches, passes = [], []
    make_batch, encode = train.TrainImages.batch, LoadedModel.encode_images
    monkeypatch.setattr(train.TrainImages, "batch", lambda self, *a: batches.append(1) or make_batch(self, *a))
    monkeypatch.setattr(LoadedModel, "encode_images", lambda self, images: passes.append(1) or encode(self, images))
    fused_session = _fresh(tiny_session, checkpoints_dir, tmp_path, "fused")
    fused = train_siblings(configs, fused_session)
    assert len(batches) == 3 * 2 and len(passes) == len(batches)  # one image-tower pass per step, for all three
    assert all(not r.reused and not r.stopped for r in fused)
    _assert_same_runs(solo_session, solo, fused_session, fused)
    # a PAN run's alpha comes from its own draws: the same as alone, not the ones CoOp or PUN would have used
    traj = store.read_table(fused_session.reports_dir, "trajectories")
    assert traj[traj.regularizer == "nemesis-pan"].alpha.notna().all()

    again = train_siblings(configs, fused_session)  # finished: reused, nothing retrained
    assert all(r.reused for r in again) and len(store.read_table(fused_session.reports_dir, "runs", dedupe=False)) == 3


def test_interrupted_group_resumes_each_member_from_its_own_epoch(solo_runs, tiny_session, checkpoints_dir, tmp_path):
    configs = _siblings()
    solo_session, solo = solo_runs

    session = _fresh(tiny_session, checkpoints_dir, tmp_path, "group")
    train_prompt(configs[1], session)  # PUN finished before the group starts: reused
    stopped = train_prompt(configs[2], session, save_every=1, should_stop=lambda epoch: epoch >= 1)  # PAN: 2 epochs
    assert stopped.stopped
    hooks = Hooks(should_stop=lambda epoch: epoch >= 0, save_every=1)
    first = train_siblings(configs, session, hooks=hooks)  # CoOp trains epoch 0, then the group stops
    assert first[0].stopped and first[1].reused and first[2].stopped
    assert session.run_dir(configs[0].resolved("cpu").run_id).load_state().epoch == 0
    assert session.run_dir(configs[2].resolved("cpu").run_id).load_state().epoch == 1  # PAN waited for CoOp
    assert not store.existing_keys(session.reports_dir, "trajectories", first[0].run_id)  # nothing half-written

    resumed = train_siblings(configs, session, hooks=Hooks(save_every=1))
    assert not resumed[0].reused and resumed[1].reused and not resumed[2].reused
    _assert_same_runs(solo_session, solo, session, resumed)


def test_only_runs_with_the_same_data_stream_are_siblings():
    coop, pun, pan = _siblings()
    check_siblings([coop, pun, pan, RunConfig(shots=4, seed=1, epochs=3, optim=OptimConfig(lr=0.01))])
    for other, field in [(RunConfig(shots=2, seed=1, epochs=3), "shots"), (RunConfig(shots=4, seed=2, epochs=3), "seed"),
                         (RunConfig(shots=4, seed=1, epochs=4), "epochs"),
                         (RunConfig(shots=4, seed=1, epochs=3, optim=OptimConfig(batch_size=8)), "optim.batch_size")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"their {field} differs"):
            check_siblings([coop, other])
    configs = [coop, RunConfig(shots=4, seed=2, epochs=3), pun, pan]
    assert group_by_stream(configs) == [[0, 2, 3], [1]]


SIBLINGS_STUDY = {
    "seeds = [1, 2]": "seeds = [1]",
    "shots = [2]": "shots = [4]",
    "epochs = 2": "epochs = 3",
    'methods = ["coop", "pun"]': 'methods = ["coop", "pun", "pan"]',
    "n_ctx = 4": "n_ctx = 16",
}


def test_study_runner_trains_siblings_as_one_group_equal_to_solo(solo_runs, tmp_path, checkpoints_dir, monkeypatch):
    solo_session, solo = solo_runs
    text = write_tiny_study(tmp_path, checkpoints_dir).read_text()
    for old, new in SIBLINGS_STUDY.items():
        text = text.replace(old, new)
    path = tmp_path / "siblings.toml"
    path.write_text(text)
    study = load_study(path).with_outputs()
    groups = []
    monkeypatch.setitem(work.JOB_FUNCTIONS, "train_group",
                        lambda job, session, *stop: groups.append(job.id) or work.train_group_job(job, session, *stop))  # fmt: skip
    plan = make_plan(study)
    report = run_study(plan, plan.todo, "local", progress=False)
    assert not report.failed and len(groups) == 1  # the three train jobs ran as one execution
    jobs = records.read_jobs(study.outputs.reports).set_index("job_id")
    trains = [f"train:{r.run_id}" for r in solo]
    assert (jobs.loc[trains, "state"] == "done").all()  # each member's own state
    session = tiny_session_for(study, solo_session)
    _assert_same_runs(solo_session, solo, session, [_result_of(session, r.run_id) for r in solo])
    assert not make_plan(study).todo


def test_train_command_trains_variants_fused_equal_to_solo(solo_runs, tmp_path, checkpoints_dir):
    solo_session, solo = solo_runs
    folder = tmp_path / "cli"
    session = _fresh(solo_session, checkpoints_dir, folder, "fused")
    result = CliRunner().invoke(app, ["train", "--quiet", "--checkpoints", str(session.checkpoints_dir), "--reports",
                                      str(session.reports_dir), "--device", "cpu", "--shots", "4", "--epochs", "3",
                                      "--variants", "coop,pun,pan"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all(r.run_id in result.output for r in solo)
    _assert_same_runs(solo_session, solo, session, [_result_of(session, r.run_id) for r in solo])
    refused = CliRunner().invoke(app, ["train", "--variants", "coop,pun", "--pun"])
    assert refused.exit_code == 2 and "drop --pun" in refused.output


def tiny_session_for(study, like):
    return like.replace(checkpoints_dir=study.outputs.checkpoints, reports_dir=study.outputs.reports)


def _result_of(session, run_id):
    """The finished run's result, as ``train.finished_result`` reads it back."""
    from types import SimpleNamespace

    data = session.run_dir(run_id).load_result()
    return SimpleNamespace(run_id=run_id, run_dir=session.run_dir(run_id).path, final_test_acc=data["final_test_acc"])


def test_bundle_groups_ready_siblings_once_and_leaves_other_jobs_alone():
    from nemesis_analysis.study.groups import GROUP_KIND, bundle
    from nemesis_analysis.study.plan import Job

    def job(config: RunConfig, kind: str = "train") -> Job:
        return Job(f"{kind}:{config.run_id}", kind, "digits", config.run_id, "", payload={"config": config.to_dict()})

    coop, pun, pan = [job(c) for c in _siblings()]
    other = job(RunConfig(shots=4, seed=2, epochs=3))
    corrupt = job(_siblings()[0], "corrupt")
    units = bundle([coop, pun, other, corrupt], [coop, pun, pan, other])  # ready jobs are queued candidates too
    assert [[m.id for m in members] for _, members in units] == [[coop.id, pun.id, pan.id], [other.id], [corrupt.id]]
    assert units[0][0].kind == GROUP_KIND and units[1][0] is other and units[2][0] is corrupt


def test_a_group_outcome_becomes_each_members_own():
    from nemesis_analysis.study.executors import Outcome
    from nemesis_analysis.study.groups import bundle, member_outcomes
    from nemesis_analysis.study.plan import Job

    members = [
        Job(f"train:{c.run_id}", "train", "digits", c.run_id, "", payload={"config": c.to_dict()}) for c in _siblings()
    ]
    group, _ = bundle(members, [])[0]
    entries = {
        members[0].id: {"ok": True, "summary": {"reused": False}},
        members[1].id: {"ok": False, "error": "diverged"},
    }
    done = member_outcomes(Outcome(group.id, True, summary={"members": entries}, host="h", seconds=3.0), members)
    assert [(o.job_id, o.ok, o.error, o.seconds) for o in done] == [
        (members[0].id, True, "", 1.0), (members[1].id, False, "diverged", 1.0),
        (members[2].id, False, f"group {group.id} returned nothing for job {members[2].id}", 1.0)]  # fmt: skip
    lost = member_outcomes(Outcome(group.id, False, error="worker lost", retryable=True, seconds=3.0), members)
    assert all(not o.ok and o.retryable and o.error == "worker lost" for o in lost)
