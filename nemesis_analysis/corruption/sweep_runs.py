"""Corruption sweeps across runs: sweep trained runs (training missing ones first), a recorded run, or a saved prompt.

This is what ``nemesis corrupt`` does. Every argument is checked, positions against the real n_ctx
included, before any model is loaded, anything is trained or any row is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from nemesis_analysis import protocols
from nemesis_analysis.choices import EvalClasses, Protocol
from nemesis_analysis.clip.prompts import resolve_n_ctx
from nemesis_analysis.config import PLOTConfig, PromptConfig, RunConfig
from nemesis_analysis.corruption.ops import Corruption, GridSpec
from nemesis_analysis.corruption.sweep import SweepSummary, fill_counts, run_corruption_sweep
from nemesis_analysis.devices import resolve_run_config
from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.methods import PromptMethod, build_method, build_method_for_run, method_class
from nemesis_analysis.session import Session
from nemesis_analysis.storage.artifacts import ARTIFACT_TENSORS, AnalysisPrompt, check_fits, read_prompt
from nemesis_analysis.storage.rundir import RunDir
from nemesis_analysis.storage.safeload import DamagedFileError
from nemesis_analysis.storage.schema import RunIdentity
from nemesis_analysis.training.train import RunResult, finished_result, load_model_and_data, train_prompt


def sweep_runs(
    config: RunConfig,
    session: Session,
    grid: GridSpec,
    *,
    seeds: Sequence[int] | None = None,
    prompt: Path | str | None = None,
    run_id: str | None = None,
    chunk: int | None = None,
    force: bool = False,
    on_run: Callable[[RunResult], None] | None = None,
    on_prompt: Callable[[AnalysisPrompt], None] | None = None,
    max_test: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> list[SweepSummary]:
    """Sweep ``grid`` on ``prompt``; or on the recorded run ``run_id`` (an id or a unique prefix: its config
    replaces ``config``); or on the run of ``config`` for each seed (training it first when unfinished).

    ``should_stop`` (asked after each training epoch and before each sweep chunk) returning True ends the
    work at the next saved point: a stopped training run is passed to ``on_run`` (``run.stopped``) and ends
    the list; a stopped sweep is the last summary (``summary.stopped``).
    """
    check_sources(seeds, prompt, run_id, chunk)
    session.check_output_folders()
    if run_id is not None:
        config = load_run_config(session, run_id)
    seeds = list(seeds) if seeds is not None else [config.seed]
    analysed = read_prompt(prompt) if prompt is not None else None
    if analysed is not None:
        n_positions = analysed.n_positions
    else:  # flat positions: PLOT's N prompts of n_ctx each, MaPLe's J layers of n_ctx each
        n_positions = method_class(config.prompt_method).flat_positions(config)
    corruptions = grid.expand(n_positions)
    config = dataclasses.replace(config, seed=seeds[0])
    if analysed is not None:
        return [sweep_prompt(config, session, analysed, corruptions, chunk=chunk, on_prompt=on_prompt,
                             max_test=max_test, should_stop=should_stop)]  # fmt: skip
    summaries = []
    for seed in seeds:
        run = train_prompt(dataclasses.replace(config, seed=seed), session, force=force, should_stop=should_stop)
        if on_run is not None:
            on_run(run)
        if run.stopped:
            break
        summaries.extend(sweep_run_subsets(session, run, corruptions, chunk=chunk, max_test=max_test,
                                           should_stop=should_stop))  # fmt: skip
        if summaries and summaries[-1].stopped:
            break
    return summaries


def check_sources(seeds, prompt, run_id, chunk) -> None:
    """One source of prompts at a time, and a positive chunk."""
    if chunk is not None and chunk < 1:
        raise ConfigError(f"chunk (variants per text pass) must be at least 1, got {chunk}")
    if prompt is not None and seeds is not None:
        raise ConfigError("--seeds trains and sweeps several runs; --prompt analyses one saved prompt: give only one")
    if run_id is not None and (prompt is not None or seeds is not None):
        raise ConfigError("--run sweeps one recorded run; drop --prompt and --seeds")


def sweep_trained_run(
    session: Session,
    run: RunResult,
    grid: Sequence[Corruption],
    chunk: int | None = None,
    classes: EvalClasses | str = EvalClasses.ALL,
    max_test: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> SweepSummary:
    """Sweep the prompt that :func:`~nemesis_analysis.training.train.train_prompt` saved for ``run`` on one class
    subset (all classes, or base2new's base or new: the run's method rebuilt over that subset's class names,
    every saved tensor loaded, so CoCoOp's meta-network keeps shifting)."""
    method, slot, identity = method_of_run(session, run, classes)
    return run_corruption_sweep(session, method, slot, identity, grid, chunk=chunk, classes=classes,
                                max_test=max_test, should_stop=should_stop)  # fmt: skip


def method_of_run(session: Session, run: RunResult, classes: EvalClasses | str = EvalClasses.ALL):
    """(method, position slot, identity) of a finished run on one class subset, its saved tensors loaded."""
    config = run.config
    run_dir = RunDir(Path(run.run_dir))
    ctx = read_prompt(run_dir.path, fix=run_dir.damaged_fix).ctx  # a damaged run file: one line, with the fix
    loaded, dataset = load_model_and_data(config, session)
    check_run_prompt(ctx, config, loaded, dataset.num_classes, run_dir)
    method = build_method_for_run(config, loaded, protocols.subset_classnames(dataset.classnames, classes))
    method.load(run.run_dir)
    return method, method.position_tensor().detach(), config.identity(n_ctx=method.n_ctx)


def fill_run_counts(session: Session, run_id: str, chunk: int | None = None) -> dict[str, int]:
    """Fill the paired counts and p-values of the recorded run ``run_id``'s corruption rows written before
    those columns existed, on every class subset its protocol sweeps; returns rows filled per subset."""
    config = load_run_config(session, run_id)
    run = finished_result(session, config)
    if run is None:
        raise NoDataError(f"run {config.run_id} has not finished training; nothing of it was swept")
    filled = {}
    for classes in protocols.sweep_classes(config.protocol):
        method, slot, identity = method_of_run(session, run, classes)
        filled[EvalClasses(classes).value] = fill_counts(session, method, slot, identity, classes, chunk)
    return filled


def sweep_run_subsets(
    session: Session,
    run: RunResult,
    grid: Sequence[Corruption],
    chunk: int | None = None,
    max_test: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> list[SweepSummary]:
    """:func:`sweep_trained_run` on every class subset the run's protocol evaluates (base2new: base, then new);
    a stopped sweep is the last one."""
    summaries = []
    for classes in protocols.sweep_classes(run.config.protocol):
        summaries.append(sweep_trained_run(session, run, grid, chunk, classes, max_test, should_stop))
        if summaries[-1].stopped:
            break
    return summaries


def check_run_prompt(ctx, config: RunConfig, loaded, num_classes: int, run_dir: RunDir) -> None:
    """A run folder's prompt must have the shape its config gives; else it is damaged (one-line error)."""
    n_ctx = resolve_n_ctx(config.prompt, loaded.tokenizer)
    width = int(loaded.model.token_embedding.embedding_dim)
    expected = (num_classes, n_ctx, width) if config.prompt.csc else (n_ctx, width)
    if config.prompt_method == "plot":
        expected = (config.num_prompts, n_ctx, width)
    elif config.prompt_method == "maple":  # every prompted layer's M prompts
        expected = (method_class("maple").flat_positions(config) // config.prompt.n_ctx, config.prompt.n_ctx, width)
    if tuple(ctx.shape) != expected:
        raise DamagedFileError(
            f"run file {run_dir.file(ARTIFACT_TENSORS)} is damaged (context of shape {tuple(ctx.shape)}, the run's "
            f"config gives {expected}); {run_dir.damaged_fix}"
        )


def sweep_prompt(
    config: RunConfig,
    session: Session,
    prompt: AnalysisPrompt,
    grid: Sequence[Corruption],
    chunk: int | None = None,
    on_prompt: Callable[[AnalysisPrompt], None] | None = None,
    max_test: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> SweepSummary:
    """Sweep a saved prompt on ``config``'s model and dataset (the prompt's recorded layout and method win)."""
    check_prompt_protocol(prompt)
    loaded, dataset = load_model_and_data(config, session)
    layout = prompt.prompt_config or PromptConfig(
        n_ctx=prompt.n_ctx, csc=prompt.csc, class_token_position=config.prompt.class_token_position
    )
    name = prompt.metadata.get("prompt_method", config.prompt_method)
    options = config.method_options() if name == config.prompt_method else None
    if prompt.is_plot:  # N from the prompt itself, whatever --plot-prompts says
        options = PLOTConfig(num_prompts=prompt.num_prompts)
    method = build_method(name, loaded, dataset.classnames, layout, options=options)
    check_fits(prompt.ctx, method, prompt.metadata, source=str(prompt.path))
    method.load_tensors({**prompt.tensors, method.position_slot: prompt.ctx}, source=str(prompt.path))
    identity = identity_for_prompt(prompt, resolve_run_config(config, loaded.device), method)
    if on_prompt is not None:
        on_prompt(prompt)
    return run_corruption_sweep(session, method, prompt.ctx, identity, grid, chunk=chunk, max_test=max_test,
                                should_stop=should_stop)  # fmt: skip


def check_prompt_protocol(prompt: AnalysisPrompt) -> None:
    """A base2new prompt is swept per class subset through its run (``--run``), not as an all-class prompt."""
    recorded = prompt.metadata.get("config") or {}
    if recorded.get("protocol", Protocol.FEWSHOT.value) == Protocol.BASE2NEW.value:
        raise ConfigError(
            f"{prompt.path} was trained with --protocol base2new; sweep it on its base and new classes with "
            f"--run {prompt.run_id} (and its --checkpoints)"
        )


def method_for_identity(loaded, classnames: list[str], identity: RunIdentity, options=None) -> PromptMethod:
    """The prompt method of a run, rebuilt from its identity (prompt method, n_ctx, csc, class-token position) and
    the run's method options (``RunConfig.method_options()``: PLOT's num_prompts, KgCoOp's weight).

    ``ctx_init`` only changes the initial values, not the layout (each slot is one placeholder token), so
    these fields are enough to splice a trained context back in. Tensors beyond the position slot
    (CoCoOp's meta-network) keep their initial values until :meth:`PromptMethod.load` fills them.
    """
    prompt = PromptConfig(method=identity.prompt_method, n_ctx=identity.n_ctx, csc=identity.csc,
                          class_token_position=identity.class_token_position)  # fmt: skip
    return build_method(identity.prompt_method, loaded, classnames, prompt, options=options)


def identity_for_prompt(prompt: AnalysisPrompt, config: RunConfig, method: PromptMethod) -> RunIdentity:
    """The identity of an analysed artifact: the artifact's own config when recorded, else the flags'."""
    recorded = prompt.metadata.get("config")
    source = RunConfig.from_dict(recorded) if recorded else config
    identity = source.identity()
    return dataclasses.replace(
        identity,
        run_id=prompt.run_id,
        dataset=config.dataset,
        backbone=method.loaded.backbone,
        pretrained=identity.pretrained if recorded else method.loaded.pretrained,
        n_ctx=prompt.n_ctx,
        csc=prompt.csc,
        class_token_position=method.config.class_token_position.value,
        precision=identity.precision or method.loaded.precision.value,
        prompt_method=method.name,
    )


def load_run_config(session: Session, run_id: str) -> RunConfig:
    """The recorded config of the run ``run_id`` (or a unique prefix of it) in the checkpoints folder."""
    if not run_id:
        raise ConfigError("--run needs a run id (or a unique prefix of one); see the runs table")
    folder = session.checkpoints_dir
    candidates = folder.glob(f"{run_id}*") if folder.is_dir() else []
    matches = sorted(p.name for p in candidates if session.run_dir(p.name).load_config_dict() is not None)
    if not matches:
        raise NoDataError(
            f"no run {run_id!r} in {folder}; pass a run id from the runs table or the right --checkpoints"
        )
    if len(matches) > 1:
        raise ConfigError(f"run id prefix {run_id!r} is ambiguous ({', '.join(matches[:4])}); give more characters")
    return RunConfig.from_dict(session.run_dir(matches[0]).load_config_dict())
