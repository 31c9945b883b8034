"""Typed run configuration: dataclasses whose fields declare their type, rule and help, checked in one place.

A training run is a pure function of its resolved :class:`RunConfig`; ``run_id`` is a short hash of the
fields that change the result (never of output folders or progress settings). Every numeric field
declares one :class:`Rule` next to it (``spec(..., check=positive)``); one generic validator enforces
them for flags, config files (``load_config_file``, ``--set`` overrides) and the library API alike,
and names the field by its dotted name (``nemesis.beta``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

from nemesis_analysis.choices import (
    ClassTokenPosition,
    CscReduction,
    NormType,
    OmegaSchedule,
    Precision,
    Protocol,
    plain,
)
from nemesis_analysis.errors import ConfigError, FieldError
from nemesis_analysis.fieldspec import (
    IN_ID_ALWAYS,
    IN_ID_NEVER,
    IN_ID_UNLESS_DEFAULT,
    Rule,  # noqa: F401  (re-exported: the rules live with spec)
    Setting,
    any_number,
    at_least_one,
    base_type,
    check_value,
    non_negative,
    positive,
    section_settings,
    spec,
    unit_interval,
    unit_interval_open,
    validate_fields,
)
from nemesis_analysis.methods.declarations import KgCoOpConfig, PLOTConfig  # noqa: F401  (re-exported)
from nemesis_analysis.methods.registry import declaration, method_names, option_sections
from nemesis_analysis.storage.schema import TINY_WEIGHTS_VERSION, RunIdentity

# CoOp's few-shot protocol: epochs by number of shots (ImageNet uses 50 for every shot count).
COOP_EPOCHS_BY_SHOTS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
COOP_IMAGENET_EPOCHS = 50


def coop_epochs(shots: int, dataset: str = "") -> int:
    """Number of CoOp training epochs for ``shots`` (the nearest listed shot count at or below it)."""
    if dataset == "imagenet":
        return COOP_IMAGENET_EPOCHS
    eligible = [k for k in COOP_EPOCHS_BY_SHOTS if k <= shots]
    return COOP_EPOCHS_BY_SHOTS[max(eligible)] if eligible else COOP_EPOCHS_BY_SHOTS[1]


# The official Nemesis corruption scripts train for fewer epochs at 2 and 8 shots than CoOp's configs.
CORRUPTION_EPOCHS_BY_SHOTS = {1: 50, 2: 50, 4: 100, 8: 100, 16: 200}


def corruption_epochs(shots: int) -> int:
    """Epochs of the reference corruption scripts for ``shots`` (the nearest listed shot count at or below it)."""
    eligible = [k for k in CORRUPTION_EPOCHS_BY_SHOTS if k <= shots]
    return CORRUPTION_EPOCHS_BY_SHOTS[max(eligible) if eligible else 1]


@dataclass
class PromptConfig:
    """The prompt method and how its learnable context is laid out."""

    SECTION: ClassVar[str] = "prompt"
    method: str = spec("coop", in_id=IN_ID_UNLESS_DEFAULT, choices=method_names, noun="prompt method", flag="--method",
                       help="prompt method: coop, cocoop (image-conditioned context), plot (N prompts matched by "
                            "optimal transport), kgcoop (CoOp pulled towards the hand-crafted prompt) or another "
                            "registered method")  # fmt: skip
    n_ctx: int = spec(16, check=at_least_one, flag="--n-ctx", help="number of context vectors M")
    csc: bool = spec(False, flag="--csc/--no-csc", help="class-specific context: one set of M vectors per class")
    class_token_position: ClassTokenPosition = spec(
        ClassTokenPosition.END,
        flag="--class-token-position",
        noun="class-token position",
        help="where the class name goes",
    )
    ctx_init: str | None = spec(
        None, flag="--ctx-init", help="initialise from these words (n_ctx becomes their token count)"
    )
    init_std: float = spec(0.02, check=non_negative, help="std of the N(0, std^2) init when ctx_init is None")

    def __post_init__(self) -> None:
        if isinstance(self.ctx_init, str) and not self.ctx_init.strip():
            self.ctx_init = None
        validate_fields(self)


@dataclass
class NemesisConfig:
    """Nemesis regularisation: total loss = CE + omega(t) * (beta * L_pun + (1 - beta) * L_pan).

    ``beta is None`` means plain CoOp (no norm loss). With class-specific context, norms are taken
    per class and position and averaged over classes (``csc_reduction = mean``, ours), which makes the
    same weight num_classes times weaker than the reference's sum (``csc_reduction = sum``).
    """

    SECTION: ClassVar[str] = "nemesis"
    beta: float | None = spec(
        None,
        check=unit_interval,
        flag="--beta",
        help="mix: beta * PUN + (1 - beta) * PAN, in [0, 1] (1 = PUN, 0 = PAN); unset = CoOp",
    )
    weight: float = spec(
        1.0,
        check=non_negative,
        flag=("--norm-weight", "--alpha"),
        help="norm-loss weight (reference: A); --alpha is an alias",
    )
    norm_type: NormType = spec(NormType.L2, flag="--norm-type", noun="norm type", help="q in ||p_i||_q")
    pan_positions: int = spec(
        1, check=at_least_one, flag="--pan-positions", help="PAN: positions rescaled per step (reference: NP)"
    )
    pan_factor: float = spec(
        0.1,
        check=non_negative,
        flag="--pan-factor",
        help="PAN: rescale factor of a chosen position, 0 zeroes it (reference: CW)",
    )
    omega: OmegaSchedule = spec(
        OmegaSchedule.SIGMOID,
        flag="--omega",
        noun="omega schedule",
        help="sigmoid (1 - sigmoid(0.2 (t - T/2))) or constant",
    )
    pan_weight: float | None = spec(
        None, check=non_negative, in_id=IN_ID_UNLESS_DEFAULT, help="PAN's weight (alpha_j); unset: the norm-loss weight"
    )
    csc_reduction: CscReduction = spec(
        CscReduction.MEAN,
        in_id=IN_ID_UNLESS_DEFAULT,
        noun="class-specific norm reduction",
        help="class-specific context: norms averaged (mean) or summed over classes",
    )

    def __post_init__(self) -> None:
        validate_fields(self)

    @property
    def pan_alpha_weight(self) -> float:
        """The weight A of PAN's alpha_j: ``pan_weight``, else the norm-loss weight."""
        return self.weight if self.pan_weight is None else self.pan_weight

    @property
    def enabled(self) -> bool:
        return self.beta is not None

    @property
    def uses_pan(self) -> bool:
        return self.beta is not None and self.beta < 1.0

    @property
    def regularizer(self) -> str:
        """The ``regularizer`` column: coop, nemesis-pun, nemesis-pan or nemesis-beta<B>."""
        if self.beta is None:
            return "coop"
        elif self.beta == 1.0:
            return "nemesis-pun"
        elif self.beta == 0.0:
            return "nemesis-pan"
        else:
            return f"nemesis-beta{self.beta:g}"


@dataclass
class OptimConfig:
    """CoOp's recipe: SGD, cosine over the epochs, one constant warm-up epoch."""

    SECTION: ClassVar[str] = "optim"
    lr: float = spec(0.002, check=positive, flag="--lr", help="SGD learning rate")
    momentum: float = spec(0.9, check=unit_interval_open, help="SGD momentum")
    weight_decay: float = spec(5e-4, check=non_negative, help="SGD weight decay")
    batch_size: int = spec(32, check=at_least_one, flag="--batch-size", help="training batch size")
    warmup_epochs: int = spec(1, check=non_negative, help="constant warm-up epochs")
    warmup_lr: float = spec(1e-5, check=positive, help="learning rate during warm-up")
    drop_last: bool = spec(
        False,
        in_id=IN_ID_UNLESS_DEFAULT,
        help="drop the last incomplete batch when the set holds at least one batch (reference)",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


RECIPES_HELP = ("coop (CoOp protocol: RN50, M=16, end, last partial batch dropped), paper (the reference code's rules: "
                "batches, epochs, CSC norm sums, Food101/OxfordPets weights)")  # fmt: skip


def default_pretrained(backbone: str) -> str:
    """The weights a backbone gets when ``pretrained`` is not given: the tiny CLIP's own, else OpenAI's."""
    return "embedded" if backbone == "nemesis-tiny" else "openai"


def recipe_names() -> tuple[str, ...]:
    """The named recipes: ``coop``, ``paper`` and those declared by prompt methods (``cocoop``)."""
    return ("coop", "paper", *(name for name in method_names() if declaration(name).recipe))


@dataclass
class RunConfig:
    """Everything that determines a trained prompt. ``run_id`` hashes all of it.

    The option section of every declared prompt method (``plot``, ``kgcoop``, ...) is held in ``options``
    and read as an attribute (``config.plot``); ``RunConfig(plot=PLOTConfig(...))`` sets one.
    """

    SECTION: ClassVar[str] = ""
    dataset: str = spec(
        "digits", flag=("--dataset", "-d"), help="digits (embedded), a CoOp dataset, or folder:PATH / manifest:PATH"
    )
    shots: int = spec(16, check=at_least_one, flag=("--shots", "-k"), help="training images per class")
    seed: int = spec(1, check=any_number, flag="--seed", help="few-shot sampling and initialisation seed")
    backbone: str = spec(
        "nemesis-tiny", flag="--backbone", help="open_clip architecture (RN50, ViT-B-16, nemesis-tiny)"
    )
    pretrained: str = spec("embedded", flag="--pretrained",
                           help="open_clip tag (openai), a weights file, 'embedded' (tiny CLIP) or 'none'; "
                                "default: embedded for nemesis-tiny, openai otherwise")  # fmt: skip
    epochs: int | None = spec(None, check=at_least_one, flag="--epochs", help="unset: CoOp's epochs for the shot count")
    precision: Precision | None = spec(None, flag="--precision", noun="precision",
                                       help="fp32 (everything fp32; CPU default), amp (bf16 autocast of the frozen "
                                            "towers, fp32 context and SGD; CUDA default) or fp16 (the reference's "
                                            "all-half mode; CUDA only)")  # fmt: skip
    prompt: PromptConfig = spec(default_factory=PromptConfig)
    nemesis: NemesisConfig = spec(default_factory=NemesisConfig)
    optim: OptimConfig = spec(default_factory=OptimConfig)
    recipe: str | None = spec(
        None,
        in_id=IN_ID_NEVER,
        flag="--recipe",
        choices=lambda: recipe_names(),
        noun="recipe",
        help=f"{RECIPES_HELP} or a method's recipe (cocoop); prints and records what it changed",
    )
    recipe_changes: str = spec(
        "", in_id=IN_ID_NEVER, settable=False, help="the settings the recipe changed (recorded, not hashed)"
    )
    protocol: Protocol = spec(
        Protocol.FEWSHOT,
        in_id=IN_ID_UNLESS_DEFAULT,
        flag="--protocol",
        noun="protocol",
        help="fewshot, base2new (train on base classes, test on base and new), crossdataset or dg",
    )
    allow_missing_classes: bool = spec(False, in_id=IN_ID_UNLESS_DEFAULT, flag="--allow-missing-classes",
                                       help="train even when some classes have fewer training images than shots "
                                            "(or none); recorded in the run")  # fmt: skip
    dataset_fingerprint: str = spec(
        "",
        in_id=IN_ID_UNLESS_DEFAULT,
        settable=False,
        help="content fingerprint of a custom dataset (filled in when it is loaded)",
    )
    options: dict = spec(
        default_factory=dict,
        in_id=IN_ID_NEVER,
        settable=False,
        help="the option sections of the declared prompt methods, by section name",
    )

    def __post_init__(self) -> None:
        for name, section in BASE_SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise FieldError(name, f"{name} must be a {section.__name__}, got {getattr(self, name)!r}")
        self.options = method_option_sections(self.options)
        validate_fields(self)
        check_method_options(self)

    def __getattr__(self, name: str):
        # the option section of a declared method: config.plot, config.kgcoop (dataclass fields never get here)
        if name != "options" and not name.startswith("__") and name in option_sections():
            options = self.__dict__.get("options", {})
            return options[name] if name in options else option_sections()[name]()
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else coop_epochs(self.shots, self.dataset)

    @property
    def regularizer(self) -> str:
        """The ``regularizer`` column: coop, nemesis-pun, nemesis-pan or nemesis-beta<B>."""
        return self.nemesis.regularizer

    @property
    def prompt_method(self) -> str:
        """The ``prompt_method`` column: coop, cocoop, plot, kgcoop or another declared method."""
        return str(self.prompt.method)

    @property
    def num_prompts(self) -> int:
        """Prompts per class: ``plot.num_prompts`` for PLOT, 1 for the other methods (flat positions = this * n_ctx)."""
        return self.plot.num_prompts if self.prompt_method == "plot" else 1

    def method_options(self):
        """The options section of this run's prompt method (PLOTConfig, KgCoOpConfig, ...), or None."""
        return self.options.get(self.prompt_method) if declaration(self.prompt_method).options else None

    def resolved(self, device_type: str) -> RunConfig:
        """A copy with defaults that depend on the device filled in (precision, epochs)."""
        data = self.to_dict()
        if data["precision"] is None:
            data["precision"] = Precision.AMP.value if device_type == "cuda" else Precision.FP32.value
        if device_type != "cuda" and data["precision"] == Precision.FP16.value:
            raise FieldError("precision", "precision fp16 needs a CUDA device; use amp (bf16 autocast) or fp32 on CPU")
        data["epochs"] = self.num_epochs
        return RunConfig.from_dict(data)

    def to_dict(self) -> dict:
        """Top-level fields, then one table per section (``prompt``, ``nemesis``, ``optim``, each method's)."""
        data = plain(asdict(self))
        data.update(data.pop("options"))
        return data

    @classmethod
    def from_dict(cls, data: dict, strict: bool = False) -> RunConfig:
        """Build from ``to_dict()``'s layout; ``strict`` refuses unknown keys (config files), else ignores them."""
        data = dict(data)
        if strict:
            refuse_unknown(flatten(data))
        built = {}
        for name, section in sections().items():
            value = data.pop(name, {})
            if not isinstance(value, dict):
                raise FieldError(name, f"{name} must be a table of {section.__name__} fields, got {value!r}")
            known = {f.name for f in fields(section)}
            built[name] = section(**{k: v for k, v in value.items() if k in known})
        known = {f.name for f in fields(cls)} - {"options"}
        options = {name: built.pop(name) for name in list(built) if name not in BASE_SECTIONS}
        return cls(**{k: v for k, v in data.items() if k in known}, **built, options=options)

    def with_dataset_fingerprint(self, fingerprint: str) -> RunConfig:
        """A copy naming the loaded dataset's content (custom datasets; "" for built-ins), so two
        different folders with the same spec never share a run id."""
        if fingerprint == self.dataset_fingerprint:
            return self
        return dataclasses.replace(self, dataset_fingerprint=fingerprint)

    @property
    def run_id(self) -> str:
        """A 12-hex-digit hash of the config's identity fields (see :func:`id_fields`)."""
        text = json.dumps(id_fields(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def identity(self, n_ctx: int | None = None) -> RunIdentity:
        """The identity every Parquet row of this run carries; ``n_ctx`` as trained when ``ctx_init`` fixed it."""
        return RunIdentity(
            run_id=self.run_id,
            dataset=self.dataset,
            backbone=self.backbone,
            pretrained=self.pretrained,
            shots=self.shots,
            seed=self.seed,
            regularizer=self.regularizer,
            n_ctx=self.prompt.n_ctx if n_ctx is None else n_ctx,
            csc=self.prompt.csc,
            class_token_position=plain(self.prompt.class_token_position),
            precision=plain(self.precision) if self.precision is not None else "",
            prompt_method=self.prompt_method,
        )

    def identity_columns(self) -> dict:
        """The identity as a row dict (see :meth:`identity`)."""
        return self.identity().as_row()

    def config_columns(self) -> dict:
        """Identity columns plus every knob, flattened, for the runs table."""
        flat = dict(self.identity_columns())
        flat.update(
            epochs=self.num_epochs,
            ctx_init=self.prompt.ctx_init or "",
            beta=float("nan") if self.nemesis.beta is None else self.nemesis.beta,
            norm_weight=self.nemesis.weight,
            norm_type=plain(self.nemesis.norm_type),
            pan_positions=self.nemesis.pan_positions,
            pan_factor=self.nemesis.pan_factor,
            omega_schedule=plain(self.nemesis.omega),
            lr=self.optim.lr,
            batch_size=self.optim.batch_size,
            recipe=self.recipe or "",
            protocol=plain(self.protocol),
            recipe_changes=self.recipe_changes,
        )
        return flat


BASE_SECTIONS: dict[str, type] = {"prompt": PromptConfig, "nemesis": NemesisConfig, "optim": OptimConfig}


def sections() -> dict[str, type]:
    """Every section of a run config by name: prompt, nemesis, optim, then each declared method's options."""
    return {**BASE_SECTIONS, **option_sections()}


def with_method_sections(cls):
    """Let ``RunConfig(plot=PLOTConfig(...))`` (and ``dataclasses.replace``) set a method's section by name."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in option_sections()}
        if given:
            kwargs["options"] = {**kwargs.get("options", {}), **given}
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


RunConfig = with_method_sections(RunConfig)


def method_option_sections(given: dict) -> dict:
    """``given`` method sections (by name) checked, plus every other declared section at its defaults."""
    declared = option_sections()
    for name, value in given.items():
        if name not in declared:
            raise FieldError(name, f"{name}: no prompt method declares this section; known: {', '.join(declared)}")
        if not isinstance(value, declared[name]):
            raise FieldError(name, f"{name} must be a {declared[name].__name__}, got {value!r}")
    return {name: given[name] if name in given else section() for name, section in declared.items()}


def check_method_options(config: RunConfig) -> None:
    """Refuse options of a prompt method other than the run's (e.g. plot.num_prompts with prompt.method coop),
    and class-specific context for methods that learn one generic context (CoCoOp, PLOT)."""
    method = declaration(config.prompt_method)
    if method.generic_only and config.prompt.csc:
        raise FieldError("prompt.csc", f"prompt.csc: prompt method {method.name} learns generic context only (no "
                                       f"class-specific context); set prompt.csc = false")  # fmt: skip
    for name, section in config.options.items():
        if name == method.name:
            continue
        default = type(section)()
        for item in fields(section):
            if getattr(section, item.name) != getattr(default, item.name):
                dotted = f"{name}.{item.name}"
                raise FieldError(dotted, f"{dotted} applies to prompt.method = {name} only; drop it or set that method")


def id_fields(config: RunConfig) -> dict:
    """``config.to_dict()`` less what run_id ignores: bookkeeping fields, fields added after run ids were first
    recorded while they hold their default (so existing runs keep their ids), and the option sections of
    prompt methods other than the run's, whole (an empty section left behind would change every id)."""
    data = config.to_dict()
    for name in option_sections():
        if name != config.prompt_method:
            data.pop(name, None)
    targets = [(RunConfig, data)] + [(section, data[name]) for name, section in sections().items() if name in data]
    for cls, target in targets:
        for item in fields(cls):
            if item.name not in target:  # the options holder, or a method section dropped above
                continue
            rule = item.metadata.get("in_id", IN_ID_ALWAYS)
            if rule == IN_ID_NEVER or (rule == IN_ID_UNLESS_DEFAULT and target[item.name] == plain(item.default)):
                target.pop(item.name)
    if data["pretrained"] == "embedded":  # runs on other versions of the tiny CLIP's weights are other runs
        data["pretrained"] = f"embedded-v{TINY_WEIGHTS_VERSION}"
    return data


# ------------------------------------------------------------------- dotted names, overrides, config files


def settings(include_recorded: bool = False) -> dict[str, Setting]:
    """Every leaf setting of :class:`RunConfig` by dotted name (``nemesis.beta``), in file order: top-level
    fields, then each section's. Recorded fields (``recipe_changes``, ...) only with ``include_recorded``."""
    found = section_settings(RunConfig)
    for name, section in sections().items():
        found += section_settings(section, f"{name}.")
    return {s.dotted: s for s in found if (include_recorded or s.settable) and s.dotted != "options"}


def field_annotations() -> dict[str, typing.Any]:
    """Every settable leaf field of :class:`RunConfig` by dotted name, with its type annotation."""
    return {dotted: setting.annotation for dotted, setting in settings().items()}


def field_help(dotted: str) -> str:
    """The help text declared next to a field."""
    return settings(include_recorded=True)[dotted].help


def unknown_key(dotted: str, where: str = "") -> FieldError:
    """The error for a key that is no run setting, listing the settable keys."""
    return FieldError(dotted, f"unknown config key {dotted!r}{where}; known keys: {', '.join(settings())}")


def refuse_unknown(flat: dict, where: str = "") -> None:
    """Refuse dotted keys that are no run setting (recorded fields are accepted: a printed config reads back)."""
    known = settings(include_recorded=True)
    for dotted in flat:
        if dotted not in known:
            raise unknown_key(dotted, where)


def flatten(data: dict, prefix: str = "") -> dict:
    """``{"nemesis": {"beta": 0.5}}`` -> ``{"nemesis.beta": 0.5}``."""
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and not prefix and key in sections():
            flat.update(flatten(value, f"{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def with_overrides(data: dict, overrides: dict) -> dict:
    """A copy of ``to_dict()``-style ``data`` with dotted ``overrides`` applied; unknown names are refused."""
    known = settings(include_recorded=True)
    data = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        if dotted not in known:
            raise unknown_key(dotted)
        target = data
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return data


def check_setting(dotted: str, value):
    """Validate one value of the setting ``dotted`` by its declaration (the words of ``--set`` and files)."""
    setting = settings(include_recorded=True).get(dotted)
    if setting is None:
        raise unknown_key(dotted)
    section, _, name = dotted.rpartition(".")
    return check_value(section, name, setting.annotation, setting.metadata, value)


def parse_value(dotted: str, text: str):
    """Parse ``text`` by the type of field ``dotted`` (``none`` unsets an optional field)."""
    annotation = field_annotations()[dotted]
    optional = type(None) in typing.get_args(annotation)
    kind = base_type(annotation)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise FieldError(dotted, f"{dotted}: cannot read {text!r} as {kind.__name__}") from None
    return text


def parse_assignment(text: str) -> tuple[str, object]:
    """``"nemesis.beta=0.5"`` -> ``("nemesis.beta", 0.5)``, parsed by the field's type."""
    dotted, sep, raw = text.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError(f"--set {text!r}: write KEY=VALUE with a dotted config name, e.g. nemesis.beta=0.5")
    if dotted not in field_annotations():
        raise unknown_key(dotted)
    return dotted, parse_value(dotted, raw.strip())


def read_toml(path: Path | str, what: str = "config file", hint: str = "check the path given to --config") -> dict:
    """A TOML file as a dict; a one-line ConfigError for a missing, unreadable or malformed file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path).expanduser()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found; {hint}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{what} {path} cannot be read ({error}); pass a readable TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid TOML: {error}") from None


def load_config_file(path: Path | str) -> dict:
    """Read a TOML run config (top-level fields plus one table per section) as flat dotted overrides."""
    flat = flatten(read_toml(path))
    refuse_unknown(flat, f" in {Path(path).expanduser()}")
    return flat


def toml_line(name: str, value, comment: bool = False) -> str:
    """One ``name = value`` TOML line (an unset value, or a recorded one with ``comment``, as a comment)."""
    if value is None:
        return f"# {name} = (unset)"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = json.dumps(str(value))
    return f"{'# ' if comment else ''}{name} = {text}"


def to_toml(config: RunConfig) -> str:
    """The config as TOML in the layout :func:`load_config_file` reads (unset optional fields and recorded
    ones, which the toolkit fills in itself, as comments)."""
    data, recorded = config.to_dict(), set(settings(include_recorded=True)) - set(settings())
    lines = [toml_line(k, v, k in recorded) for k, v in data.items() if k not in sections()]
    for section in sections():
        lines += ["", f"[{section}]"] + [toml_line(k, v) for k, v in data[section].items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ recipes
# Named, explicit bundles of settings. The reference code hides some of these behind dataset names;
# here they apply only when asked for, and what they changed is printed and recorded in the run.

RECIPE_PURPOSES = ("train", "corrupt")  # what the run is made for: its own sake, or a corruption sweep
PAPER_PAN_DATASETS = ("food101", "oxford_pets")  # reference: omega = 1 for every beta, PAN's weight 50
PAPER_PAN_WEIGHT = 50.0


def coop_settings(config: RunConfig) -> tuple[dict, dict]:
    """CoOp's few-shot protocol: RN50 (OpenAI weights), M = 16, class token at the end, generic context,
    random init, epochs by shot count (ImageNet 50), the loader's last-batch rule. Returns (settings, notes)."""
    changed = {
        "backbone": "RN50",
        "pretrained": "openai",
        "prompt.n_ctx": 16,
        "prompt.csc": False,
        "prompt.class_token_position": "end",
        "prompt.ctx_init": None,
        "epochs": coop_epochs(config.shots, config.dataset),
        "optim.drop_last": True,
    }
    return changed, {"epochs": "CoOp table"}


def paper_settings(config: RunConfig, purpose: str) -> tuple[dict, dict]:
    """The Nemesis reference code's rules, made explicit: the loader's last-batch rule, class-specific norms
    summed over classes, its epochs (the corruption scripts' table for a corruption sweep), and on Food101
    and OxfordPets omega = 1 for every beta with PAN's weight (only) 50. Returns (settings, notes)."""
    corrupt = purpose == "corrupt"
    changed: dict = {
        "epochs": corruption_epochs(config.shots) if corrupt else coop_epochs(config.shots, config.dataset),
        "optim.drop_last": True,
    }
    notes = {"epochs": "corruption-script table" if corrupt else "CoOp table"}
    if config.prompt.csc and config.nemesis.enabled:
        changed["nemesis.csc_reduction"] = "sum"
    if config.dataset in PAPER_PAN_DATASETS and config.nemesis.enabled:
        changed["nemesis.omega"] = "constant"
        if config.nemesis.uses_pan:
            changed["nemesis.pan_weight"] = PAPER_PAN_WEIGHT
    return changed, notes


def describe_changes(changed: dict, notes: dict) -> str:
    """``{"epochs": 100}`` with note "corruption-script table" -> ``"epochs=100 (corruption-script table)"``."""
    return ", ".join(f"{k}={v}" + (f" ({notes[k]})" if k in notes else "") for k, v in changed.items())


def apply_recipe(config: RunConfig, name: str | None, purpose: str = "train") -> tuple[RunConfig, dict]:
    """Return (config with the recipe applied, the settings it changed by dotted name).

    ``purpose`` is what the run is made for: ``train`` or ``corrupt`` (a corruption sweep, where the paper
    recipe follows the corruption scripts' epochs). The config records the recipe and, in
    ``recipe_changes``, every setting it changed.
    """
    if name is None:
        return config, {}
    if purpose not in RECIPE_PURPOSES:
        raise ConfigError(f"unknown recipe purpose {purpose!r}; choose one of: {', '.join(RECIPE_PURPOSES)}")
    if name == "coop":
        changed, notes = coop_settings(config)
    elif name == "paper":
        changed, notes = paper_settings(config, purpose)
    elif name in recipe_names():
        changed, notes = dict(declaration(name).recipe), {}
    else:
        raise FieldError("recipe", f"unknown recipe {name!r}; choose one of: {', '.join(recipe_names())}")
    data = with_overrides(config.to_dict(), changed)
    data["recipe"], data["recipe_changes"] = name, describe_changes(changed, notes)
    return RunConfig.from_dict(data), changed
