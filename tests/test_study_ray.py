"""Studies on a real local Ray (2 CPUs, one instance for the session): same tables as local, retries, failures."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from study_helpers import write_tiny_study
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.storage import store
from nemesis_analysis.storage.schema import CORRUPTION_KEY
from nemesis_analysis.study import records
from nemesis_analysis.study.faults import FAULT_ENV
from nemesis_analysis.study.plan import expected_corruption_keys, make_plan
from nemesis_analysis.study.runner import run_study
from nemesis_analysis.study.spec import load_study

ray = pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, tiny_session, checkpoints_dir):
    """The tiny study run once with the local executor: the reference tables."""
    study = load_study(write_tiny_study(tmp_path_factory.mktemp("local"), checkpoints_dir)).with_outputs()
    plan = make_plan(study)
    report = run_study(plan, plan.todo, "local", progress=False)
    assert len(report.done) == 9 and not report.failed
    return study


def _sorted(reports, table: str) -> pd.DataFrame:
    frame = store.read_table(reports, table, dedupe=False)
    return frame.sort_values(list(store.KEYS[table])).reset_index(drop=True)


def assert_same_tables(a, b) -> None:
    """Same rows (keys) and values; floats to 1e-5 (thread counts differ), seconds and paths excepted."""
    for table in ("runs", "trajectories", "corruptions"):
        left, right = _sorted(a, table), _sorted(b, table)
        keys = list(store.KEYS[table])
        assert not right.duplicated(keys).any(), f"duplicate keys in {table}"
        pd.testing.assert_frame_equal(left[keys], right[keys])
        for column in left.columns.drop(["seconds", "checkpoint"], errors="ignore"):
            if left[column].dtype.kind == "f":
                np.testing.assert_allclose(left[column], right[column], rtol=1e-5, atol=1e-5, equal_nan=True)
            else:
                assert left[column].tolist() == right[column].tolist(), (table, column)


def test_ray_executor_writes_the_same_tables_as_local(ray_cluster, local_study, tmp_path, checkpoints_dir):
    study = load_study(write_tiny_study(tmp_path, checkpoints_dir)).with_outputs()
    plan = make_plan(study)
    report = run_study(plan, plan.todo, "ray", progress=False)
    assert len(report.done) == 9 and not report.failed and not report.retries
    assert_same_tables(local_study.outputs.reports, study.outputs.reports)
    jobs = records.read_jobs(study.outputs.reports)
    assert sorted(jobs["state"]) == ["done"] * 9 and set(jobs["attempts"]) == {1}


def test_a_worker_killed_mid_job_is_retried_without_duplicate_or_missing_rows(
    ray_cluster, local_study, tmp_path, checkpoints_dir, monkeypatch
):
    study = load_study(write_tiny_study(tmp_path, checkpoints_dir)).with_outputs()
    plan = make_plan(study)
    victim = next(job for job in plan.jobs if job.kind == "corrupt")
    marker = tmp_path / "kill-once"
    marker.write_text(victim.id)  # the worker exits after the job's first chunk (of three) is written
    monkeypatch.setenv(FAULT_ENV, str(marker))
    report = run_study(plan, plan.todo, "ray", progress=False)
    assert not marker.exists() and report.retries == {victim.id: 1}
    assert len(report.done) == 9 and not report.failed
    history = records.read_job_history(study.outputs.reports)
    assert history[history["job_id"] == victim.id]["state"].tolist() == ["running", "lost", "running", "done"]
    corruptions = store.read_table(study.outputs.reports, "corruptions", dedupe=False)
    assert not corruptions.duplicated(list(store.KEYS["corruptions"])).any()
    for job in (j for j in plan.jobs if j.kind == "corrupt"):
        rows = corruptions[corruptions["run_id"] == job.run_id]
        assert set(
            rows[[*CORRUPTION_KEY, "eval_classes"]].itertuples(index=False, name=None)
        ) == expected_corruption_keys(job)
    assert_same_tables(local_study.outputs.reports, study.outputs.reports)


def test_a_data_error_is_reported_and_the_rest_completes(ray_cluster, tmp_path, checkpoints_dir):
    missing = tmp_path / "damaged-dataset"  # plans (its files are fingerprinted), then fails to decode when encoded
    for split in ("train", "test"):
        for name in ("zero", "one"):
            (missing / split / name).mkdir(parents=True)
            for i in range(3):
                (missing / split / name / f"{i}.png").write_text("not an image")
    path = write_tiny_study(tmp_path, checkpoints_dir, datasets=f'["digits", "folder:{missing}"]')
    result = runner.invoke(app, ["study", "run", str(path), "--executor", "ray", "--quiet", "--no-figures"])
    assert result.exit_code == 1, result.output
    assert "failed encode:folder:" in result.output and str(missing) in result.output
    study = load_study(path)
    jobs = records.read_jobs(study.outputs.reports).set_index("job_id")
    failed = jobs[jobs["state"] == "failed"]
    assert len(failed) == 1 and failed.index[0].startswith("encode:folder:") and str(missing) in failed["error"].iloc[0]
    assert failed["attempts"].iloc[0] == 1  # our own error: not retried
    assert (jobs["state"] == "blocked").sum() == 8 and (jobs["state"] == "done").sum() == 9  # its 4 train + 4 corrupt
    assert len(store.read_table(study.outputs.reports, "runs")) == 4
    status = runner.invoke(app, ["study", "status", str(path), "--json"])
    assert status.exit_code == 0 and str(missing) in status.output and '"failed": 1' in status.output
