"""The study file: TOML read into typed, validated dataclasses; a bad key or value is refused by its dotted name.

Sections: ``[study]`` (name), ``[grid]`` (datasets, shots, seeds, backbones, methods, protocol, precision,
epochs, recipe), ``[prompt]`` and ``[optim]`` (as ``RunConfig``), ``[variants.NAME]`` (named Nemesis
settings), ``[corrupt]`` (a named grid or explicit ops/positions/factors/stds/reps), ``[evaluate]``
(protocol targets), ``[outputs]`` (folders, device, network policy) and ``[resources]`` (CPUs and GPUs
per job, retries, parallelism). Relative output paths are taken from the current directory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from nemesis_analysis.choices import PromptMethodName, Protocol
from nemesis_analysis.errors import ConfigError


class StudyFileError(ConfigError):
    """The study file cannot be read, has an unknown key, or a bad value (the message names the dotted key)."""


# ------------------------------------------------------------------------------------------- value checks


def _fail(key: str, what: str, value: Any) -> None:
    raise StudyFileError(f"{key}: {what}, got {value!r}")


def _integer(key: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, "must be an integer", value)
    if minimum is not None and value < minimum:
        _fail(key, f"must be at least {minimum}", value)
    return value


def _number(key: str, value: Any, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, "must be a finite number", value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        _fail(key, f"must be {'>' if strict else '>='} {minimum:g}", value)
    return float(value)


def _string(key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(key, "must be a non-empty string", value)
    if choices is not None and value not in choices:
        _fail(key, f"must be one of {', '.join(choices)}", value)
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(key, "must be true or false", value)
    return value


def _list(key: str, value: Any, item: Callable[[str, Any], Any], allow_empty: bool = False) -> tuple:
    if not isinstance(value, list):
        _fail(key, "must be a list", value)
    if not value and not allow_empty:
        _fail(key, "must not be empty", value)
    items = tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))
    if len(set(items)) != len(items):
        _fail(key, "must not repeat a value", value)
    return items


def _section(data: Any, key: str, known: dict[str, Callable[[str, Any], Any]], required: tuple[str, ...] = ()) -> dict:
    """Check a table's keys against ``known`` (key -> checker); returns the checked values."""
    if not isinstance(data, dict):
        _fail(key, "must be a table", data)
    for name in data:
        if name not in known:
            raise StudyFileError(f"{key}.{name}: unknown key; [{key}] takes {', '.join(known)}")
    for name in required:
        if name not in data:
            raise StudyFileError(f"{key}.{name}: missing; [{key}] needs {', '.join(required)}")
    return {name: known[name](f"{key}.{name}", value) for name, value in data.items()}


# ---------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Backbone:
    name: str  # open_clip architecture, or nemesis-tiny
    pretrained: str  # open_clip tag, weights file, "embedded" or "none"


def default_pretrained(backbone: str) -> str:
    """The CLI's rule: the tiny CLIP's own weights, OpenAI's for every other architecture."""
    return "embedded" if backbone == "nemesis-tiny" else "openai"


def _backbone(key: str, value: Any) -> Backbone:
    if isinstance(value, str):
        return Backbone(_string(key, value), default_pretrained(value))
    checked = _section(value, key, {"name": _string, "pretrained": _string}, required=("name",))
    return Backbone(checked["name"], checked.get("pretrained", default_pretrained(checked["name"])))


PROTOCOLS = tuple(p.value for p in Protocol)  # fewshot, base2new, crossdataset, dg
BUILTIN_VARIANTS: dict[str, dict] = {"coop": {}, "pun": {"beta": 1.0}, "pan": {"beta": 0.0}}
_BETA_NAME = re.compile(r"^beta(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    backbones: tuple[Backbone, ...] = (Backbone("nemesis-tiny", "embedded"),)
    methods: tuple[str, ...] = ("coop",)  # variant names: coop, pun, pan, betaB or a [variants.NAME]
    protocol: str = "fewshot"
    precision: str | None = None  # None: amp when jobs hold a GPU, fp32 otherwise
    epochs: int | None = None  # None: CoOp's epochs for the shot count
    recipe: str | None = None  # coop or paper (config.apply_recipe)


def _grid(data: Any) -> Grid:
    checked = _section(
        data,
        "grid",
        {
            "datasets": lambda k, v: _list(k, v, _string),
            "shots": lambda k, v: _list(k, v, lambda kk, vv: _integer(kk, vv, 1)),
            "seeds": lambda k, v: _list(k, v, lambda kk, vv: _integer(kk, vv, 0)),
            "backbones": lambda k, v: _list(k, v, _backbone),
            "methods": lambda k, v: _list(k, v, _string),
            "protocol": lambda k, v: _string(k, v, PROTOCOLS),
            "precision": lambda k, v: _string(k, v, ("fp32", "amp", "fp16")),
            "epochs": lambda k, v: _integer(k, v, 1),
            "recipe": lambda k, v: _string(k, v, ("coop", "paper")),
        },
        required=("datasets", "shots", "seeds"),
    )
    return Grid(**checked)


PROMPT_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "method": lambda k, v: _string(k, v, tuple(m.value for m in PromptMethodName)),
    "n_ctx": lambda k, v: _integer(k, v, 1),
    "csc": _boolean,
    "class_token_position": lambda k, v: _string(k, v, ("end", "middle", "front")),
    "ctx_init": _string,
    "init_std": lambda k, v: _number(k, v, 0.0),
}
OPTIM_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "lr": lambda k, v: _number(k, v, 0.0, strict=True),
    "batch_size": lambda k, v: _integer(k, v, 1),
    "momentum": lambda k, v: _number(k, v, 0.0),
    "weight_decay": lambda k, v: _number(k, v, 0.0),
    "warmup_epochs": lambda k, v: _integer(k, v, 0),
    "warmup_lr": lambda k, v: _number(k, v, 0.0),
}
VARIANT_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "beta": lambda k, v: _unit(k, v),
    "weight": lambda k, v: _number(k, v, 0.0),
    "norm_type": lambda k, v: _string(k, v, ("l2", "l1", "inf")),
    "pan_positions": lambda k, v: _integer(k, v, 1),
    "pan_factor": _number,
    "omega": lambda k, v: _string(k, v, ("sigmoid", "constant")),
}


def _unit(key: str, value: Any) -> float:
    number = _number(key, value, 0.0)
    if number > 1.0:
        _fail(key, "must lie in [0, 1]", value)
    return number


CORRUPT_GRIDS = {"default": ("rescale", "replace"), "rescale": ("rescale",), "replace": ("replace",)}


@dataclass(frozen=True)
class CorruptSpec:
    """What to sweep on each trained prompt (``ops.expand_grid``'s arguments; None: its defaults)."""

    ops: tuple[str, ...] = CORRUPT_GRIDS["default"]
    positions: tuple[int, ...] | None = None  # None: every position
    factors: tuple[float, ...] | None = None
    stds: tuple[float, ...] | None = None
    reps: int | None = None
    chunk: int | None = None  # variants per text pass (None: from memory)
    methods: tuple[str, ...] | None = None  # sweep only these variants' runs (None: all)
    max_test: int | None = None  # a seeded, class-stratified subsample of the test images (None: all)


def _corrupt(data: Any) -> CorruptSpec:
    checked = _section(
        data,
        "corrupt",
        {
            "grid": lambda k, v: _string(k, v, tuple(CORRUPT_GRIDS)),
            "ops": lambda k, v: _list(k, v, lambda kk, vv: _string(kk, vv, ("rescale", "replace"))),
            "positions": lambda k, v: _list(k, v, lambda kk, vv: _integer(kk, vv, 0)),
            "factors": lambda k, v: _list(k, v, _number),
            "stds": lambda k, v: _list(k, v, lambda kk, vv: _number(kk, vv, 0.0)),
            "reps": lambda k, v: _integer(k, v, 1),
            "chunk": lambda k, v: _integer(k, v, 1),
            "methods": lambda k, v: _list(k, v, _string),
            "max_test": lambda k, v: _integer(k, v, 1),
        },
    )
    grid = checked.pop("grid", "default")
    if "ops" in checked and "grid" in data:
        raise StudyFileError("corrupt.ops: give either corrupt.grid or corrupt.ops, not both")
    checked.setdefault("ops", CORRUPT_GRIDS[grid])
    return CorruptSpec(**checked)


@dataclass(frozen=True)
class EvaluateSpec:
    targets: tuple[str, ...]  # datasets to evaluate each trained prompt on
    classes: str = "all"  # all, base or new


def _evaluate(data: Any) -> EvaluateSpec:
    checked = _section(
        data,
        "evaluate",
        {"targets": lambda k, v: _list(k, v, _string), "classes": lambda k, v: _string(k, v, ("all", "base", "new"))},
        required=("targets",),
    )
    return EvaluateSpec(**checked)


@dataclass(frozen=True)
class Outputs:
    checkpoints: Path = Path("checkpoints")  # on a shared filesystem for a cluster
    reports: Path = Path("reports")
    data_root: Path | None = None
    cache_dir: Path | None = None  # open_clip weights
    device: str = "auto"
    offline: bool = False


def _path(key: str, value: Any) -> Path:
    return Path(_string(key, value)).expanduser()


def _outputs(data: Any) -> Outputs:
    checked = _section(
        data,
        "outputs",
        {
            "checkpoints": _path,
            "reports": _path,
            "data_root": _path,
            "cache_dir": _path,
            "device": lambda k, v: _device(k, v),
            "offline": _boolean,
        },
    )
    return Outputs(**checked)


def _device(key: str, value: Any) -> str:
    text = _string(key, value)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        _fail(key, "must be auto, cpu, cuda or cuda:N", value)
    return text


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0  # per job; torch uses this many threads
    num_gpus: float = 0.0  # per job (0.5: two jobs share a GPU)
    max_retries: int = 2  # system failures (worker died, out of memory) only
    max_parallel: int | None = None  # None: as many jobs as the cluster's slots

    @property
    def device_type(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


def _resources(data: Any) -> Resources:
    checked = _section(
        data,
        "resources",
        {
            "num_cpus": lambda k, v: _number(k, v, 0.0, strict=True),
            "num_gpus": lambda k, v: _number(k, v, 0.0),
            "max_retries": lambda k, v: _integer(k, v, 0),
            "max_parallel": lambda k, v: _integer(k, v, 1),
        },
    )
    return Resources(**checked)


# -------------------------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Study:
    name: str
    grid: Grid
    prompt: dict = field(default_factory=dict)  # PromptConfig fields
    optim: dict = field(default_factory=dict)  # OptimConfig fields
    variants: dict[str, dict] = field(default_factory=dict)  # method name -> NemesisConfig fields
    corrupt: CorruptSpec | None = None
    evaluate: EvaluateSpec | None = None
    outputs: Outputs = field(default_factory=Outputs)
    resources: Resources = field(default_factory=Resources)
    description: str = ""
    path: Path | None = None

    def variant(self, method: str) -> dict:
        """NemesisConfig fields of a method name (a [variants.NAME] table, a built-in, or betaB)."""
        if method in self.variants:
            return dict(self.variants[method])
        if method in BUILTIN_VARIANTS:
            return dict(BUILTIN_VARIANTS[method])
        match = _BETA_NAME.match(method)
        if match and float(match.group(1)) <= 1.0:
            return {"beta": float(match.group(1))}
        raise StudyFileError(
            f"grid.methods: unknown method {method!r}; use coop, pun, pan, betaB (0 <= B <= 1) or define [variants.{method}]"
        )

    def with_outputs(self, checkpoints: Path | None = None, reports: Path | None = None) -> "Study":
        """A copy whose output folders are overridden (CLI --checkpoints / --reports) and absolute."""
        out = self.outputs
        resolved = Outputs(
            checkpoints=Path(checkpoints or out.checkpoints).absolute(),
            reports=Path(reports or out.reports).absolute(),
            data_root=out.data_root.absolute() if out.data_root else None,
            cache_dir=out.cache_dir.absolute() if out.cache_dir else None,
            device=out.device,
            offline=out.offline,
        )
        return Study(**{**self.__dict__, "outputs": resolved})


SECTIONS = ("study", "grid", "prompt", "optim", "variants", "corrupt", "evaluate", "outputs", "resources")


def parse_study(data: dict, default_name: str = "study", path: Path | None = None) -> Study:
    """Validate a parsed study file; raises StudyFileError naming the first bad key."""
    for name in data:
        if name not in SECTIONS:
            raise StudyFileError(f"{name}: unknown section; a study file has {', '.join(SECTIONS)}")
    info = _section(data.get("study", {}), "study", {"name": _name, "description": lambda k, v: str(v)})
    variants_table = data.get("variants", {})
    if not isinstance(variants_table, dict):
        _fail("variants", "must be a table of [variants.NAME] tables", variants_table)
    study = Study(
        name=info.get("name", default_name),
        description=info.get("description", ""),
        grid=_grid(data.get("grid")) if "grid" in data else _missing_grid(),
        prompt=_section(data.get("prompt", {}), "prompt", PROMPT_KEYS),
        optim=_section(data.get("optim", {}), "optim", OPTIM_KEYS),
        variants={name: _section(v, f"variants.{name}", VARIANT_KEYS) for name, v in variants_table.items()},
        corrupt=_corrupt(data["corrupt"]) if "corrupt" in data else None,
        evaluate=_evaluate(data["evaluate"]) if "evaluate" in data else None,
        outputs=_outputs(data.get("outputs", {})),
        resources=_resources(data.get("resources", {})),
        path=path,
    )
    _check_references(study)
    return study


def _name(key: str, value: Any) -> str:
    text = _string(key, value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        _fail(key, "must be letters, digits, '.', '_' or '-'", value)
    return text


def _missing_grid() -> Grid:
    raise StudyFileError("grid: missing; a study needs [grid] with datasets, shots and seeds")


def _check_references(study: Study) -> None:
    """Cross-section checks: every method resolves, corrupt.methods are in the grid, datasets are known."""
    from nemesis_analysis.data.registry import CUSTOM_PREFIXES, get_dataset_entry

    for method in study.grid.methods:
        study.variant(method)
    if study.corrupt is not None and study.corrupt.methods is not None:
        for method in study.corrupt.methods:
            if method not in study.grid.methods:
                raise StudyFileError(f"corrupt.methods: {method!r} is not in grid.methods ({', '.join(study.grid.methods)})")
    for i, dataset in enumerate(study.grid.datasets):
        if not dataset.startswith(CUSTOM_PREFIXES):
            try:
                get_dataset_entry(dataset)
            except ConfigError as error:
                raise StudyFileError(f"grid.datasets[{i}]: {error}") from None


def load_study(path: Path | str) -> Study:
    """Read and validate a study file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise StudyFileError(f"cannot read study file {path}: {error.strerror or error}; check the path") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise StudyFileError(f"{path} is not valid TOML: {error}") from None
    return parse_study(data, default_name=path.stem, path=path)
