"""The one adapter between study jobs and the training and corruption library: a job's payload in, a summary out.

Every call into ``train``, ``corrupt``, ``features`` and the model/dataset loaders that a study makes is
here, so a change of those APIs changes this module only. Jobs carry configs and paths; the models and
datasets they need are loaded here and kept warm for the next job of the same process (one worker, many
jobs). The returned summaries are small dicts of numbers and strings.
"""

from __future__ import annotations

from collections import OrderedDict

from nemesis_analysis.config import RunConfig
from nemesis_analysis.errors import NemesisError
from nemesis_analysis.session import Session
from nemesis_analysis.study import faults
from nemesis_analysis.study.spec import Outputs

MAX_WARM_MODELS = 2  # loaded models kept per worker process (least recently used goes first)
_models: OrderedDict = OrderedDict()
_datasets: dict = {}


class NotAvailableError(NemesisError):
    """A job kind that needs a part of the toolkit this version does not have yet."""


def session_for(outputs: Outputs, progress: bool = False) -> Session:
    """The Session a worker runs jobs in, from the study's [outputs]."""
    return Session(
        checkpoints_dir=outputs.checkpoints,
        reports_dir=outputs.reports,
        device=outputs.device,
        offline=outputs.offline,
        data_root=outputs.data_root,
        weights_cache_dir=outputs.cache_dir,
        progress=progress,
    )


def _workspace(session: Session):
    from nemesis_analysis.train import Workspace

    return Workspace(session.checkpoints_dir, session.reports_dir, session.weights_cache_dir)


def _context(config: RunConfig, session: Session):
    """Model and dataset for ``config``, loaded once per worker and reused by its later jobs."""
    from nemesis_analysis.data.registry import load_dataset
    from nemesis_analysis.models import load_model, resolve_device
    from nemesis_analysis.train import RunContext

    device = resolve_device(session.device)
    config.resolved(device.type)  # a precision the device cannot run fails before loading
    model_key = (config.backbone, config.pretrained, str(config.precision), str(device), str(session.checkpoints_dir))
    if model_key not in _models:
        while len(_models) >= MAX_WARM_MODELS:
            _models.popitem(last=False)
        _models[model_key] = load_model(
            config.backbone, config.pretrained, device=device, precision=config.precision,
            checkpoints_dir=session.checkpoints_dir, offline=session.offline, progress=session.progress,
            cache_dir=session.weights_cache_dir,
        )  # fmt: skip
    _models.move_to_end(model_key)
    data_key = (config.dataset, str(session.data_root))
    if data_key not in _datasets:
        _datasets[data_key] = load_dataset(config.dataset, session.data_root)
    return RunContext(_models[model_key], _datasets[data_key])


def encode_job(job, session: Session) -> dict:
    """Encode the test split's image features into the shared feature cache."""
    from nemesis_analysis.features import image_features

    config = RunConfig.from_dict(job.payload["config"])
    context = _context(config, session)
    dataset = context.dataset
    features, _ = image_features(context.loaded, dataset, dataset.test, session.feature_cache, session.progress)
    return {"n_images": int(features.shape[0])}


def train_job(job, session: Session) -> dict:
    """Train (or resume, or reuse) the job's run; its rows go to reports/runs and reports/trajectories."""
    from nemesis_analysis.train import train_prompt

    config = RunConfig.from_dict(job.payload["config"])
    context = _context(config, session)
    result = train_prompt(
        config, _workspace(session), context=context, progress=session.progress,
        on_epoch=lambda epoch, info: faults.maybe_exit(job.id),
    )  # fmt: skip
    if result.run_id != job.run_id:
        raise NemesisError(
            f"job {job.id} trained run {result.run_id}: this worker resolves the config differently "
            f"(device {context.loaded.device}); set grid.precision and outputs.device in the study file"
        )
    return {"run_id": result.run_id, "final_test_acc": result.final_test_acc, "reused": result.reused}


def corrupt_job(job, session: Session) -> dict:
    """Sweep the job's grid on its trained prompt; only keys missing from reports/corruptions are computed."""
    from nemesis_analysis.corrupt import run_corruption_sweep
    from nemesis_analysis.corrupt_ops import expand_grid
    from nemesis_analysis.prompts import load_prompt

    config = RunConfig.from_dict(job.payload["config"])
    context = _context(config, session)
    workspace = _workspace(session)
    ctx, _ = load_prompt(workspace.run_dir(job.run_id))
    identity = config.identity_columns()
    identity["n_ctx"] = ctx.shape[-2]
    grid = expand_grid(ctx.shape[-2], **job.payload["grid"])
    summary = run_corruption_sweep(
        context, ctx, identity, grid, workspace, chunk=job.payload.get("chunk"), progress=session.progress,
        on_chunk=lambda index, rows: faults.maybe_exit(job.id),
    )  # fmt: skip
    return {"rows_written": summary.rows_written, "acc_original": summary.acc_original}


def evaluate_job(job, session: Session) -> dict:
    """Evaluate a trained prompt on a protocol target: not available until `nemesis evaluate` exists."""
    raise NotAvailableError(
        "evaluate jobs need `nemesis evaluate`, which this version does not have yet; remove [evaluate] from the study file"
    )


JOB_FUNCTIONS = {"encode": encode_job, "train": train_job, "corrupt": corrupt_job, "evaluate": evaluate_job}


def run_job(job, session: Session) -> dict:
    """Run one job of any kind in this process."""
    if job.kind not in JOB_FUNCTIONS:
        raise ValueError(f"unknown job kind {job.kind!r}; kinds: {', '.join(JOB_FUNCTIONS)}")
    return JOB_FUNCTIONS[job.kind](job, session)
