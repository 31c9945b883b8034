"""The one adapter between study jobs and the training and corruption library: a job's payload in, a summary out.

Every call into ``train``, ``corrupt``, ``features`` and the model/dataset loaders that a study makes is
here, so a change of those APIs changes this module only. Jobs carry configs and paths; the models and
datasets they need are loaded here and kept warm for the next job of the same process (one worker, many
jobs). The returned summaries are small dicts of numbers and strings.
"""

from __future__ import annotations

from nemesis_analysis.config import RunConfig
from nemesis_analysis.devices import resolve_run_config
from nemesis_analysis.errors import NemesisError
from nemesis_analysis.session import Session
from nemesis_analysis.study import faults
from nemesis_analysis.study.spec import Outputs

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


def encode_job(job, session: Session) -> dict:
    """Encode the test split's image features into the shared feature cache."""
    from nemesis_analysis.clip.features import image_features

    config = RunConfig.from_dict(job.payload["config"])
    loaded, dataset = model_and_data(config, session)
    features, _ = image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
    return {"n_images": int(features.shape[0])}


def train_job(job, session: Session) -> dict:
    """Train (or resume, or reuse) the job's run; its rows go to reports/runs and reports/trajectories."""
    from nemesis_analysis.training.train import train_prompt

    config = RunConfig.from_dict(job.payload["config"])
    result = train_prompt(config, session, on_epoch=lambda epoch, info: faults.maybe_exit(job.id))
    if result.run_id != job.run_id:
        raise NemesisError(
            f"job {job.id} trained run {result.run_id}: this worker resolves the config differently "
            f"(device {session.torch_device()}); set grid.precision and outputs.device in the study file"
        )
    return {"run_id": result.run_id, "final_test_acc": result.final_test_acc, "reused": result.reused}


def corrupt_job(job, session: Session) -> dict:
    """Sweep the job's grid on its trained prompt; only keys missing from reports/corruptions are computed."""
    from nemesis_analysis.storage.artifacts import read_prompt
    from nemesis_analysis.corruption.ops import expand_grid
    from nemesis_analysis.corruption.sweep_runs import method_for_identity
    from nemesis_analysis.corruption.sweep import run_corruption_sweep

    config = RunConfig.from_dict(job.payload["config"])
    loaded, dataset = model_and_data(config, session)
    folder = session.run_dir(job.run_id).path
    ctx = read_prompt(folder).ctx
    identity = resolve_run_config(config, loaded.device).identity(n_ctx=ctx.shape[-2])
    method = method_for_identity(loaded, dataset.classnames, identity, config.method_options())
    method.load(folder)  # every saved tensor, not only the context (CoCoOp's meta-network)
    grid = expand_grid(method.n_positions, **job.payload["grid"])  # flat positions (PLOT: N * n_ctx)
    summary = run_corruption_sweep(
        session, method, ctx, identity, grid, chunk=job.payload.get("chunk"),
        on_chunk=lambda index, rows: faults.maybe_exit(job.id),
    )  # fmt: skip
    return {"rows_written": summary.rows_written, "acc_original": summary.acc_original}


def evaluate_job(job, session: Session) -> dict:
    """Evaluate the job's trained prompt on a target dataset's test split (a row in reports/evaluations)."""
    from nemesis_analysis.evaluate import evaluate_saved

    _, evaluation = evaluate_saved(
        session, run_id=job.run_id, dataset=job.payload["target"], classes=job.payload["classes"]
    )
    return {"acc": evaluation.acc, "n_test": evaluation.n_test}


JOB_FUNCTIONS = {"encode": encode_job, "train": train_job, "corrupt": corrupt_job, "evaluate": evaluate_job}


def run_job(job, session: Session) -> dict:
    """Run one job of any kind in this process."""
    if job.kind not in JOB_FUNCTIONS:
        raise ValueError(f"unknown job kind {job.kind!r}; kinds: {', '.join(JOB_FUNCTIONS)}")
    return JOB_FUNCTIONS[job.kind](job, session)
