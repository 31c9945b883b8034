"""A study's grid expanded into jobs with ids and dependencies, what the tables say is done, and shards.

Jobs: ``encode`` (test-image features, one per dataset and model) before the ``train`` jobs that use
them; ``corrupt`` and ``evaluate`` after the ``train`` job of their run. A job's id is stable (it is built
from the run_id and the corruption grid), so reruns, retries and shards agree on what each job is.
Done means: the run is in ``reports/runs`` (train); every key of the grid is in ``reports/corruptions``
for the run (corrupt); ``reports/jobs`` says done (encode, evaluate), or every job after an encode is done.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field

import pandas as pd

from nemesis_analysis import protocols
from nemesis_analysis.choices import plain
from nemesis_analysis.config import RunConfig, apply_recipe, with_overrides
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.methods.registry import option_sections
from nemesis_analysis.protocols import check_protocol
from nemesis_analysis.storage.schema import CORRUPTION_KEY
from nemesis_analysis.study import records
from nemesis_analysis.study.spec import Study, StudyFileError
from nemesis_analysis.training.siblings import stream_key

KINDS: tuple[str, ...] = ("encode", "train", "corrupt", "evaluate")  # dependency order


@dataclass(frozen=True, eq=False)
class Job:
    """One unit of work. ``payload`` holds configs and paths only (JSON-able), never models or tensors."""

    id: str
    kind: str  # encode, train, corrupt or evaluate
    dataset: str
    run_id: str  # "" for encode jobs
    label: str  # for people: "digits nemesis-tiny 16-shot seed 1 coop"
    deps: tuple[str, ...] = ()
    payload: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        return cls(**{**data, "deps": tuple(data["deps"])})


@functools.lru_cache(maxsize=64)
def custom_fingerprint(dataset: str) -> str:
    """The content fingerprint training adds to a custom dataset's run id ("" for built-in datasets), so the
    planned run id is the one the train job trains under."""
    from nemesis_analysis.data.registry import CUSTOM_PREFIXES, load_dataset

    return load_dataset(dataset).fingerprint if dataset.startswith(CUSTOM_PREFIXES) else ""


@dataclass(frozen=True)
class GridPoint:
    """One cell of a study's grid: the fixed axes, the method variant and the values of the setting axes."""

    dataset: str
    backbone: object  # spec.Backbone
    shots: int
    seed: int
    method: str
    axes: tuple[tuple[str, object], ...] = ()

    def __str__(self) -> str:
        settings = "".join(f", {dotted}={value}" for dotted, value in self.axes)
        return f"{self.dataset}, {self.backbone.name}, {self.shots} shots, seed {self.seed}, {self.method}{settings}"

    @property
    def label(self) -> str:
        settings = "".join(f" {dotted}={value}" for dotted, value in self.axes)
        return f"{self.dataset} {self.backbone.name} {self.shots}-shot seed {self.seed} {self.method}{settings}"


def grid_points(study: Study) -> list[GridPoint]:
    """Every cell of the grid, in file order (datasets, backbones, shots, seeds, methods, then the setting axes)."""
    grid = study.grid
    axes = [[(dotted, value) for value in values] for dotted, values in grid.axes]
    cells = itertools.product(grid.datasets, grid.backbones, grid.shots, grid.seeds, grid.methods, *axes)
    return [GridPoint(*cell[:5], tuple(cell[5:])) for cell in cells]


def run_settings(study: Study, point: GridPoint) -> dict:
    """The dotted run settings of one grid cell: the study's run sections, the cell's axes, its variant."""
    grid = study.grid
    layered = {"dataset": point.dataset, "shots": point.shots, "seed": point.seed, "backbone": point.backbone.name,
               "pretrained": point.backbone.pretrained, "epochs": grid.epochs, "precision": grid.precision,
               "protocol": grid.protocol, **study.base}  # fmt: skip
    layered.update(point.axes)
    layered.update({f"nemesis.{key}": value for key, value in study.variant(point.method).items()})
    method = layered.get("prompt.method", "coop")  # a method's section applies to that method's runs only
    return {k: v for k, v in layered.items() if k.split(".")[0] not in option_sections() or k.startswith(f"{method}.")}


def run_config(study: Study, point: GridPoint) -> RunConfig:
    """The resolved RunConfig of one grid cell (precision and epochs filled in for the jobs' device); a
    combination that cannot run is refused by its key, with the grid point."""
    try:
        data = with_overrides(RunConfig().to_dict(), run_settings(study, point))
        config, _ = apply_recipe(RunConfig.from_dict(data, strict=True), study.grid.recipe)
        check_protocol(config.protocol, config.dataset, config.prompt.csc)
        device = study.outputs.device
        device_type = "cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else study.resources.device_type
        return config.resolved(device_type).with_dataset_fingerprint(custom_fingerprint(point.dataset))
    except StudyFileError:
        raise
    except ConfigError as error:  # by key: the message starts with the dotted field it names
        field = getattr(error, "field", None)
        text = f"{field}: {error}" if field and not str(error).startswith(field) else str(error)
        raise StudyFileError(f"grid ({point}): {text}") from None


def corrupt_grid(study: Study) -> dict:
    """``ops.expand_grid``'s keyword arguments from ``[corrupt]`` (its defaults where not given)."""
    from nemesis_analysis.corruption import ops

    spec = study.corrupt
    return {
        "ops": list(spec.ops),
        "positions": None if spec.positions is None else list(spec.positions),
        "factors": list(ops.DEFAULT_FACTORS if spec.factors is None else spec.factors),
        "stds": list(ops.DEFAULT_STDS if spec.stds is None else spec.stds),
        "reps": ops.DEFAULT_REPS if spec.reps is None else spec.reps,
    }


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def expand_jobs(study: Study) -> list[Job]:
    """Every job of the study, in dependency order (kinds in :data:`KINDS` order, grid order within)."""
    custom_fingerprint.cache_clear()  # read each custom dataset once per plan, never a stale fingerprint
    by_kind: dict[str, dict[str, Job]] = {kind: {} for kind in KINDS}
    corrupt = corrupt_grid(study) if study.corrupt is not None else None
    used: set[str] = set()
    for point in grid_points(study):
        dataset, method = point.dataset, point.method
        config = run_config(study, point)
        used.add(config.prompt_method)
        precision = config.precision.value
        encode_id = f"encode:{dataset}:{config.backbone}:{config.pretrained}:{precision}"
        by_kind["encode"].setdefault(
            encode_id,
            Job(encode_id, "encode", dataset, "", f"{dataset} {config.backbone} {config.pretrained} {precision}",
                payload={"config": config.to_dict()}),
        )  # fmt: skip
        run_id = config.run_id
        label = point.label
        train_id = f"train:{run_id}"
        by_kind["train"].setdefault(
            train_id, Job(train_id, "train", dataset, run_id, label, (encode_id,), {"config": config.to_dict()})
        )
        if corrupt is not None and (study.corrupt.methods is None or method in study.corrupt.methods):
            max_test = study.corrupt.max_test  # part of the job's id only when set: older ids stay
            job_id = f"corrupt:{run_id}:{_digest(corrupt if max_test is None else {**corrupt, 'max_test': max_test})}"
            payload = {"config": config.to_dict(), "grid": corrupt, "chunk": study.corrupt.chunk, "max_test": max_test}
            by_kind["corrupt"].setdefault(job_id, Job(job_id, "corrupt", dataset, run_id, label, (train_id,), payload))
        for target in study.evaluate.targets if study.evaluate is not None else ():
            job_id = f"evaluate:{run_id}:{target}:{study.evaluate.classes}"
            payload = {"config": config.to_dict(), "target": target, "classes": study.evaluate.classes}
            by_kind["evaluate"].setdefault(
                job_id, Job(job_id, "evaluate", dataset, run_id, f"{label} -> {target}", (train_id,), payload)
            )
    check_sections_used(study, used)
    return [job for kind in KINDS for job in by_kind[kind].values()]


def check_sections_used(study: Study, methods: set[str]) -> None:
    """Refuse a method's section (``[kgcoop]``) when no grid point trains that method: it would change nothing."""
    for dotted in study.base:
        section = dotted.split(".")[0]
        if section in option_sections() and section not in methods:
            raise StudyFileError(
                f"{dotted} applies to prompt.method = {section} only, and no grid point trains "
                f"{section}; add it to grid prompt.method or drop [{section}]"
            )


# ----------------------------------------------------------------------------------------------- done-detection


def expected_corruption_keys(job: Job) -> set[tuple]:
    """The (op, prompt_index, position, factor, rep, layer, eval_classes) keys a corrupt job writes for its run
    (flat position p of PLOT's N prompts is prompt p // n_ctx, position p % n_ctx; MaPLe's layer p // n_ctx)."""
    from nemesis_analysis.corruption import ops
    from nemesis_analysis.corruption.sweep import row_key
    from nemesis_analysis.methods import method_class

    config = RunConfig.from_dict(job.payload["config"])
    pairs = method_class(config.prompt_method).flat_position_keys(config)  # MaPLe: (0, position, layer)
    keys = {row_key(c, pairs) for c in ops.expand_grid(len(pairs), **job.payload["grid"])}
    # base2new sweeps write base and new rows (as `nemesis corrupt --run` does): both subsets must be there
    return {(*key, plain(classes)) for key in keys for classes in protocols.sweep_classes(config.protocol)}


def _swept(job: Job, found: dict[str, set]) -> bool:
    """Every key of a corrupt job's grid is in the table, on each class subset its protocol sweeps."""
    return expected_corruption_keys(job) <= found.get(job.run_id, set())


def done_jobs(study: Study, jobs: list[Job]) -> set[str]:
    """Ids of the jobs whose results are already in the tables."""
    from nemesis_analysis.storage import store

    reports = study.outputs.reports
    runs = set(store.read_table(reports, "runs")["run_id"])
    corruptions = store.read_table(reports, "corruptions")
    found: dict[str, set] = {}  # run_id -> (corruption key..., eval_classes)
    for run_id, frame in corruptions.groupby("run_id"):
        found[run_id] = set(frame[[*CORRUPTION_KEY, "eval_classes"]].itertuples(index=False, name=None))
    recorded = records.latest_states(reports)
    done: set[str] = set()
    for job in jobs:
        if job.kind == "train" and job.run_id in runs:
            done.add(job.id)
        elif job.kind == "corrupt" and _swept(job, found):
            done.add(job.id)
        elif job.kind in ("encode", "evaluate") and recorded.get(job.id) == "done":
            done.add(job.id)
    dependents: dict[str, list[str]] = {}
    for job in jobs:
        for dep in job.deps:
            dependents.setdefault(dep, []).append(job.id)
    for job in jobs:  # an encode whose every dependent is done has nothing left to feed
        after = dependents.get(job.id, [])
        if job.kind == "encode" and after and all(j in done for j in after):
            done.add(job.id)
    return done


@dataclass
class Plan:
    study: Study
    jobs: list[Job]
    done: set[str]
    records: pd.DataFrame  # the latest reports/jobs row of each job of this study

    @property
    def todo(self) -> list[Job]:
        return [job for job in self.jobs if job.id not in self.done]

    def __post_init__(self) -> None:
        self.recorded: dict[str, str] = dict(zip(self.records["job_id"], self.records["state"]))

    def state(self, job: Job) -> str:
        """done, failed, blocked, running or todo (failed/blocked/running as last recorded in reports/jobs)."""
        if job.id in self.done:
            return "done"
        recorded = self.recorded.get(job.id, "")
        return recorded if recorded in ("failed", "blocked", "running") else "todo"


def make_plan(study: Study) -> Plan:
    jobs = expand_jobs(study)
    ids = {job.id for job in jobs}
    table = records.read_jobs(study.outputs.reports)
    return Plan(study, jobs, done_jobs(study, jobs), table[table["job_id"].isin(ids)].reset_index(drop=True))


# ------------------------------------------------------------------------------------------------------ shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    index, sep, count = text.partition("/")
    try:
        shard, total = int(index), int(count)
    except ValueError:
        shard, total = -1, 0
    if not sep or total < 1 or not 0 <= shard < total:
        raise ConfigError(
            f"--shard {text!r} must be I/N with 0 <= I < N, e.g. --shard 0/4 (shards count from 0: in a SLURM array "
            "--array=1-N pass --shard $((SLURM_ARRAY_TASK_ID - 1))/N)"
        )
    return shard, total


def shard_of(job: Job, total: int) -> int:
    """The shard a job belongs to: by its run's sibling group (:func:`~nemesis_analysis.training.siblings.stream_key`),
    so a run's train, corrupt and evaluate jobs stay together and sibling runs train fused in one shard."""
    group = job.run_id or job.id
    if job.kind in ("train", "corrupt", "evaluate") and "config" in job.payload:
        group = "siblings:" + _digest(list(stream_key(RunConfig.from_dict(job.payload["config"]))))
    return int(hashlib.sha256(group.encode()).hexdigest()[:12], 16) % total


def select_jobs(plan: Plan, shard: tuple[int, int] | None = None) -> list[Job]:
    """The jobs this invocation should run: not done, and in the shard when one is given (dependency order)."""
    todo = plan.todo
    if shard is None:
        return todo
    index, total = shard
    return [job for job in todo if shard_of(job, total) == index]
