"""Typed configuration: one dataclass per concern, closed choices as str enums, checks in __post_init__.

A training run is a pure function of its resolved :class:`RunConfig`; ``run_id`` is a short hash of the
fields that change the result (never of output folders or progress settings).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from nemesis_analysis.choices import ClassTokenPosition, NormType, OmegaSchedule, Precision, Protocol, choice, plain
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.schema import RunIdentity


# CoOp's few-shot protocol: epochs by number of shots (ImageNet uses 50 for every shot count).
COOP_EPOCHS_BY_SHOTS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
COOP_IMAGENET_EPOCHS = 50


def coop_epochs(shots: int, dataset: str = "") -> int:
    """Number of CoOp training epochs for ``shots`` (the nearest listed shot count at or below it)."""
    if dataset == "imagenet":
        return COOP_IMAGENET_EPOCHS
    eligible = [k for k in COOP_EPOCHS_BY_SHOTS if k <= shots]
    return COOP_EPOCHS_BY_SHOTS[max(eligible)] if eligible else COOP_EPOCHS_BY_SHOTS[1]


@dataclass
class PromptConfig:
    """How the learnable context is laid out (CoOp)."""

    n_ctx: int = 16  # number of context vectors M
    csc: bool = False  # class-specific context: one set of M vectors per class
    class_token_position: ClassTokenPosition = ClassTokenPosition.END  # where the class name goes
    ctx_init: str | None = None  # initialise from these words (n_ctx becomes their token count)
    init_std: float = 0.02  # std of the N(0, std^2) init when ctx_init is None

    def __post_init__(self) -> None:
        self.class_token_position = choice(ClassTokenPosition, self.class_token_position, "class-token position")
        if self.ctx_init is not None and not self.ctx_init.strip():
            self.ctx_init = None
        if self.ctx_init is None and self.n_ctx < 1:
            raise ConfigError(f"--n-ctx must be at least 1, got {self.n_ctx}")
        if self.init_std < 0:
            raise ConfigError(f"init std must be >= 0, got {self.init_std}")


@dataclass
class NemesisConfig:
    """Nemesis regularisation: total loss = CE + omega(t) * (beta * L_pun + (1 - beta) * L_pan).

    ``beta is None`` means plain CoOp (no norm loss). With class-specific context, norms are taken
    per class and position and averaged over classes.
    """

    beta: float | None = None  # 1 = PUN, 0 = PAN, in between = a mix; None = CoOp
    weight: float = 1.0  # A: weight of the norm terms (PUN's factor and PAN's alpha value)
    norm_type: NormType = NormType.L2  # q in ||p_i||_q
    pan_positions: int = 1  # NP: positions chosen at random each step for PAN's pre-inference
    pan_factor: float = 0.1  # CW: rescale factor applied to each chosen position in PAN
    omega: OmegaSchedule = OmegaSchedule.SIGMOID

    def __post_init__(self) -> None:
        self.norm_type = choice(NormType, self.norm_type, "norm type")
        self.omega = choice(OmegaSchedule, self.omega, "omega schedule")
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"--beta must lie in [0, 1], got {self.beta}")
        if self.weight < 0:
            raise ConfigError(f"--alpha (norm-loss weight) must be >= 0, got {self.weight}")
        if self.pan_positions < 1:
            raise ConfigError(f"--pan-positions must be at least 1, got {self.pan_positions}")

    @property
    def enabled(self) -> bool:
        return self.beta is not None

    @property
    def uses_pan(self) -> bool:
        return self.beta is not None and self.beta < 1.0

    @property
    def method(self) -> str:
        """The ``method`` column: coop, nemesis-pun, nemesis-pan or nemesis-beta<B>."""
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

    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class RunConfig:
    """Everything that determines a trained prompt. ``run_id`` hashes all of it."""

    dataset: str = "digits"
    shots: int = 16
    seed: int = 1
    backbone: str = "nemesis-tiny"
    pretrained: str = "embedded"  # an open_clip tag, a weights file, "embedded" (tiny CLIP) or "none"
    epochs: int | None = None  # None: CoOp's epochs for the shot count
    precision: Precision | None = None  # None: fp32 on CPU, amp on CUDA
    prompt: PromptConfig = field(default_factory=PromptConfig)
    nemesis: NemesisConfig = field(default_factory=NemesisConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    recipe: str | None = None  # a named recipe whose settings were applied (recorded, not hashed twice)
    protocol: Protocol = Protocol.FEWSHOT  # hashed only when not the default, so older run ids stay

    def __post_init__(self) -> None:
        self.protocol = choice(Protocol, self.protocol, "protocol")
        if self.shots < 1:
            raise ConfigError(f"--shots must be at least 1, got {self.shots}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.precision is not None:
            self.precision = choice(Precision, self.precision, "precision")

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else coop_epochs(self.shots, self.dataset)

    @property
    def method(self) -> str:
        return self.nemesis.method

    def resolved(self, device_type: str) -> "RunConfig":
        """A copy with defaults that depend on the device filled in (precision, epochs)."""
        data = self.to_dict()
        if data["precision"] is None:
            data["precision"] = Precision.AMP.value if device_type == "cuda" else Precision.FP32.value
        if device_type != "cuda" and data["precision"] != Precision.FP32.value:
            raise ConfigError(f"--precision {data['precision']} needs a CUDA device; use --precision fp32 on CPU")
        data["epochs"] = self.num_epochs
        return RunConfig.from_dict(data)

    def to_dict(self) -> dict:
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        data["prompt"] = PromptConfig(**data.get("prompt", {}))
        data["nemesis"] = NemesisConfig(**data.get("nemesis", {}))
        data["optim"] = OptimConfig(**data.get("optim", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def run_id(self) -> str:
        """A 12-hex-digit hash of the full config (the recipe name is bookkeeping and left out)."""
        data = self.to_dict()
        data.pop("recipe", None)
        if data.get("protocol") == Protocol.FEWSHOT.value:
            data.pop("protocol")
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
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
            method=self.method,
            n_ctx=self.prompt.n_ctx if n_ctx is None else n_ctx,
            csc=self.prompt.csc,
            class_token_position=plain(self.prompt.class_token_position),
            precision=plain(self.precision) if self.precision is not None else "",
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
        )
        return flat


# ------------------------------------------------------------------------------------------------ recipes
# Named, explicit bundles of settings. The reference code hides some of these behind dataset names;
# here they apply only when asked for, and what they changed is printed and recorded in the run.

RECIPES = ("coop", "paper")
PAPER_PAN_DATASETS = ("food101", "oxford_pets")  # reference: PAN weight 50 and omega = 1 on these


def apply_recipe(config: RunConfig, name: str | None) -> tuple[RunConfig, dict]:
    """Return (config with the recipe applied, the settings it changed)."""
    if name is None:
        return config, {}
    data = config.to_dict()
    changed: dict = {}
    if name == "coop":
        # CoOp's few-shot protocol: RN50 (OpenAI weights), M = 16, class token at the end, generic
        # context, random init, epochs by shot count (ImageNet 50).
        changed = {
            "backbone": "RN50",
            "pretrained": "openai",
            "prompt.n_ctx": 16,
            "prompt.csc": False,
            "prompt.class_token_position": "end",
            "prompt.ctx_init": None,
            "epochs": coop_epochs(config.shots, config.dataset),
        }
    elif name == "paper":
        # The Nemesis reference code's per-dataset rule, made explicit.
        if config.dataset in PAPER_PAN_DATASETS and config.nemesis.uses_pan:
            changed = {"nemesis.weight": 50.0, "nemesis.omega": "constant"}
    else:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    for dotted, value in changed.items():
        target = data
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    data["recipe"] = name
    return RunConfig.from_dict(data), changed
