"""The one adapter between study jobs and the training and corruption library: a job's payload in, a summary out.

Every call into ``train``, ``corrupt``, ``features`` and the model/dataset loaders that a study makes is
here, so a change of those APIs changes this module only. Jobs carry configs and paths; the models and
datasets they need are loaded here and kept warm for the next job of the same process (one worker, many
jobs). The returned summaries are small dicts of numbers and strings.
"""

from __future__ import annotations

from nemesis_analysis.config import RunConfig
from nemesis_analysis.errors import NemesisError
from nemesis_analysis.session import Session
from nemesis_analysis.study import faults
from nemesis_analysis.study.spec import Outputs


class JobStopped(Exception):
    """A stop request (SIGTERM, Ctrl-C) ended the job at its next saved point; it is not done."""


def never_stop(*_) -> bool:
    return False


_sessions: dict[tuple, Session] = {}  # one Session per outputs in a worker: its models and datasets stay warm


def session_for(outputs: Outputs, progress: bool = False) -> Session:
    """The worker's Session for the study's [outputs], created once per process so later jobs reuse its caches."""
    key = (outputs.checkpoints, outputs.reports, outputs.device, outputs.offline, outputs.data_root,
           outputs.cache_dir, progress)  # fmt: skip
    if key not in _sessions:
        _sessions[key] = Session(
            checkpoints_dir=outputs.checkpoints,
            reports_dir=outputs.reports,
            device=outputs.device,
            offline=outputs.offline,
            data_root=outputs.data_root,
            weights_cache_dir=outputs.cache_dir,
            progress=progress,
        )
    return _sessions[key]


def model_and_data(config: RunConfig, session: Session):
    """Model and dataset for ``config`` from the session's caches (a precision the device cannot run fails first)."""
    from nemesis_analysis.training.train import load_model_and_data

    return load_model_and_data(config, session)


def encode_job(job, session: Session, should_stop=never_stop) -> dict:
    """Encode the test split's image features into the shared feature cache."""
    from nemesis_analysis.clip.features import image_features

    config = RunConfig.from_dict(job.payload["config"])
    loaded, dataset = model_and_data(config, session)
    features, _ = image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
    return {"n_images": int(features.shape[0])}


def _train(job, session: Session, should_stop):
    """The job's run, trained, resumed or reused; JobStopped when ``should_stop`` ended it (its epoch saved)."""
    from nemesis_analysis.training.train import train_prompt

    config = RunConfig.from_dict(job.payload["config"])
    result = train_prompt(
        config, session, on_epoch=lambda epoch, info: faults.maybe_exit(job.id), should_stop=should_stop
    )
    if result.run_id != job.run_id:
        raise NemesisError(different_run(job, config, result, session))
    if result.stopped:
        raise JobStopped(f"stopped after a saved epoch of run {result.run_id}; the next `study run` resumes it")
    return result


def train_group_job(job, session: Session, should_stop=never_stop) -> dict:
    """Train sibling runs fused (:mod:`~nemesis_analysis.study.groups`): one image pass per step for all; returns
    each member's entry ({"ok", "summary"} or {"ok": False, "error"}) under "members"."""
    from nemesis_analysis.study.plan import Job
    from nemesis_analysis.training.train import Hooks, train_siblings

    members = [Job.from_dict(member) for member in job.payload["members"]]
    configs = [RunConfig.from_dict(member.payload["config"]) for member in members]

    def checkpoint(epoch: int, info: dict) -> None:
        for member in members:
            faults.maybe_exit(member.id)

    outcomes = train_siblings(configs, session, hooks=Hooks(on_epoch=checkpoint, should_stop=should_stop))
    if any(getattr(outcome, "stopped", False) for outcome in outcomes):
        raise JobStopped("stopped after a saved epoch of every sibling; the next `study run` resumes them")
    entries = {}
    for member, config, outcome in zip(members, configs, outcomes):
        if isinstance(outcome, Exception):
            entries[member.id] = {"ok": False, "error": str(outcome)}
        elif outcome.run_id != member.run_id:
            entries[member.id] = {"ok": False, "error": different_run(member, config, outcome, session)}
        else:
            entries[member.id] = {"ok": True, "summary": {"run_id": outcome.run_id, "reused": outcome.reused,
                                                          "final_test_acc": outcome.final_test_acc}}  # fmt: skip
    return {"members": entries}


def different_run(job, config: RunConfig, result, session: Session) -> str:
    """Why a worker trained another run than the plan named: the config fields that differ."""
    differing = sorted(k for k, v in result.config.to_dict().items() if config.to_dict().get(k) != v)
    return (
        f"job {job.id} trained run {result.run_id}, not the planned {job.run_id}: the worker's config differs in "
        f"{', '.join(differing) or 'nothing visible'} (device {session.torch_device()}); plan and run the study "
        "on the same data and device settings"
    )


def train_job(job, session: Session, should_stop=never_stop) -> dict:
    """Train (or resume, or reuse) the job's run; its rows go to reports/runs and reports/trajectories."""
    result = _train(job, session, should_stop)
    return {"run_id": result.run_id, "final_test_acc": result.final_test_acc, "reused": result.reused}


def corrupt_job(job, session: Session, should_stop=never_stop) -> dict:
    """Sweep the job's grid on its trained prompt on every class subset its protocol evaluates (base2new: base
    and new, as `nemesis corrupt --run` does); only keys missing from reports/corruptions are computed."""
    from nemesis_analysis.corruption.ops import expand_grid
    from nemesis_analysis.corruption.sweep_runs import sweep_run_subsets
    from nemesis_analysis.methods import method_class

    run = _train(job, session, should_stop)  # done by the train job this one depends on: reused
    config = run.config
    n_positions = method_class(config.prompt_method).flat_positions(config)  # as the plan expands it
    grid = expand_grid(n_positions, **job.payload["grid"])  # flat positions (PLOT: N * n_ctx; MaPLe: J * n_ctx)

    def stop(index: int) -> bool:
        if index > 0:  # a chunk has been written
            faults.maybe_exit(job.id)
        return should_stop(index)

    summaries = sweep_run_subsets(session, run, grid, chunk=job.payload.get("chunk"),
                                  max_test=job.payload.get("max_test"), should_stop=stop)  # fmt: skip
    if summaries and summaries[-1].stopped:
        raise JobStopped(f"stopped after a saved chunk of run {run.run_id}; the next `study run` finishes it")
    return {"rows_written": sum(s.rows_written for s in summaries), "acc_original": summaries[-1].acc_original}


def evaluate_job(job, session: Session, should_stop=never_stop) -> dict:
    """Evaluate the job's trained prompt on a target dataset's test split (a row in reports/evaluations)."""
    from nemesis_analysis.evaluate import evaluate_saved

    _, evaluation = evaluate_saved(
        session, run_id=job.run_id, dataset=job.payload["target"], classes=job.payload["classes"]
    )
    return {"acc": evaluation.acc, "n_test": evaluation.n_test}


JOB_FUNCTIONS = {"encode": encode_job, "train": train_job, "train_group": train_group_job, "corrupt": corrupt_job,
                 "evaluate": evaluate_job}  # fmt: skip


def run_job(job, session: Session, should_stop=never_stop) -> dict:
    """Run one job of any kind in this process; ``should_stop()`` True ends it at its next saved point
    (JobStopped)."""
    if job.kind not in JOB_FUNCTIONS:
        raise ValueError(f"unknown job kind {job.kind!r}; kinds: {', '.join(JOB_FUNCTIONS)}")
    return JOB_FUNCTIONS[job.kind](job, session, should_stop)
