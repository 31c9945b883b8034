"""The study file: TOML read into typed, validated dataclasses; a bad key or value is refused by its dotted name.

A study speaks the run config's language: its run sections are exactly a run file's (``[prompt]``,
``[nemesis]``, ``[optim]`` and each declared method's, e.g. ``[plot]``, ``[kgcoop]``), checked by the run
config's own declarations, so an error reads as it does for ``--set``. Other sections: ``[study]`` (name),
``[grid]`` (datasets, shots, seeds, backbones, methods, protocol, precision, epochs, recipe, and any run
setting by its dotted name as an axis: ``prompt.method = ["coop", "kgcoop"]``), ``[variants.NAME]``
(named ``nemesis.*`` settings), ``[corrupt]`` (a named grid or explicit ops/positions/factors/stds/reps),
``[evaluate]`` (protocol targets), ``[outputs]`` (folders, device, network policy) and ``[resources]``
(CPUs and GPUs per job, retries, parallelism). Relative output paths are taken from the current directory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from nemesis_analysis.config import check_setting, default_pretrained, flatten, sections
from nemesis_analysis.errors import ConfigError, FieldError


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


def _backbone(key: str, value: Any) -> Backbone:
    if isinstance(value, str):
        return Backbone(_string(key, value), default_pretrained(value))
    checked = _section(value, key, {"name": _string, "pretrained": _string}, required=("name",))
    return Backbone(checked["name"], checked.get("pretrained", default_pretrained(checked["name"])))


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
    recipe: str | None = None  # coop, paper or a method's recipe (config.apply_recipe)
    axes: tuple[
        tuple[str, tuple], ...
    ] = ()  # (dotted run setting, its values), e.g. ("prompt.method", ("coop", "kgcoop"))


def _setting(key: str, dotted: str, value: Any) -> Any:
    """One run-setting value checked by the run config's declaration (``key``: where it sits in the file)."""
    try:
        return check_setting(dotted, value)
    except FieldError as error:  # the run config's words; no flag (a study file has none)
        raise StudyFileError(str(error) if key == dotted else f"{key}: {error}") from None


GRID_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "datasets": lambda k, v: _list(k, v, lambda kk, vv: _setting(kk, "dataset", _string(kk, vv))),
    "shots": lambda k, v: _list(k, v, lambda kk, vv: _setting(kk, "shots", vv)),
    "seeds": lambda k, v: _list(k, v, lambda kk, vv: _setting(kk, "seed", vv)),
    "backbones": lambda k, v: _list(k, v, _backbone),
    "methods": lambda k, v: _list(k, v, _string),
    "protocol": lambda k, v: _setting(k, "protocol", v).value,
    "precision": lambda k, v: _setting(k, "precision", v).value,
    "epochs": lambda k, v: _setting(k, "epochs", v),
    "recipe": lambda k, v: _setting(k, "recipe", v),
}


# run settings that [grid] sets through its own keys (plural lists, or one value for every run)
GRID_AXIS_KEYS = {"dataset": "datasets", "shots": "shots", "seed": "seeds", "backbone": "backbones",
                  "pretrained": "backbones", "protocol": "protocol", "precision": "precision", "epochs": "epochs",
                  "recipe": "recipe"}  # fmt: skip


def _grid(data: Any) -> Grid:
    if not isinstance(data, dict):
        _fail("grid", "must be a table", data)
    flat = flatten(data)  # prompt.method = [...] in [grid] is a nested table in TOML: back to dotted names
    fixed = {k: v for k, v in flat.items() if k in GRID_KEYS}
    checked = _section(fixed, "grid", GRID_KEYS, required=("datasets", "shots", "seeds"))
    axes = tuple((dotted, _axis(dotted, values)) for dotted, values in flat.items() if dotted not in GRID_KEYS)
    return Grid(**checked, axes=axes)


def _axis(dotted: str, values: Any) -> tuple:
    """A ``[grid]`` axis over the run setting ``dotted``: a non-empty list of values, each checked as for --set."""
    from nemesis_analysis.config import settings

    if dotted in GRID_AXIS_KEYS:
        raise StudyFileError(
            f"grid.{dotted}: unknown key; the grid's axis of {dotted} is grid.{GRID_AXIS_KEYS[dotted]}"
        )
    if dotted not in settings():
        known = ", ".join([*GRID_KEYS, "or a run setting by dotted name (e.g. prompt.method, nemesis.weight)"])
        raise StudyFileError(f"grid.{dotted}: unknown key; [grid] takes {known}")
    checked = _list(f"grid.{dotted}", values, lambda k, v: _setting(k, dotted, v))
    return tuple(getattr(v, "value", v) for v in checked)


def _run_section(name: str, data: Any) -> dict:
    """A run section (``[prompt]``, ``[kgcoop]``, ...) as dotted settings, checked as a run file's."""
    if not isinstance(data, dict):
        _fail(name, "must be a table", data)
    for key, value in data.items():
        _setting(f"{name}.{key}", f"{name}.{key}", value)
    return {f"{name}.{key}": value for key, value in data.items()}


def _variant(name: str, data: Any) -> dict:
    """A ``[variants.NAME]`` table: any ``nemesis.*`` settings, checked as for --set."""
    if not isinstance(data, dict):
        _fail(f"variants.{name}", "must be a table of nemesis settings", data)
    for key, value in data.items():
        _setting(f"variants.{name}", f"nemesis.{key}", value)
    return dict(data)


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
    base: dict = field(default_factory=dict)  # run settings of the run sections, by dotted name
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

    def with_outputs(self, checkpoints: Path | None = None, reports: Path | None = None) -> Study:
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


STUDY_SECTIONS = ("study", "grid", "variants", "corrupt", "evaluate", "outputs", "resources")


def study_sections() -> tuple[str, ...]:
    """Every section a study file may have: its own, then the run sections (prompt, nemesis, optim, plot, ...)."""
    return STUDY_SECTIONS[:2] + tuple(sections()) + STUDY_SECTIONS[2:]


def parse_study(data: dict, default_name: str = "study", path: Path | None = None) -> Study:
    """Validate a parsed study file; raises StudyFileError (or the run config's FieldError) naming the first bad key."""
    for name in data:
        if name not in study_sections():
            raise StudyFileError(f"{name}: unknown section; a study file has {', '.join(study_sections())}")
    info = _section(data.get("study", {}), "study", {"name": _name, "description": lambda k, v: str(v)})
    variants_table = data.get("variants", {})
    if not isinstance(variants_table, dict):
        _fail("variants", "must be a table of [variants.NAME] tables", variants_table)
    study = Study(
        name=info.get("name", default_name),
        description=info.get("description", ""),
        grid=_grid(data.get("grid")) if "grid" in data else _missing_grid(),
        base={k: v for name in sections() if name in data for k, v in _run_section(name, data[name]).items()},
        variants={name: _variant(name, v) for name, v in variants_table.items()},
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
                raise StudyFileError(
                    f"corrupt.methods: {method!r} is not in grid.methods ({', '.join(study.grid.methods)})"
                )
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
