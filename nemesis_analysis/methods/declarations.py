"""The built-in prompt methods' declarations: options (with their flags), recipes, checkpoint readers.

Torch-free, so that the run config, ``--help`` and study files know every method without loading a model;
each implementation (``methods/<name>.py``) is imported when a method is first built. A new method adds
its implementation module and one :func:`~nemesis_analysis.methods.registry.declare_method` call (here,
or in its own package for a plugin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nemesis_analysis.fieldspec import at_least_one, non_negative, spec, validate_fields
from nemesis_analysis.methods.registry import MethodDeclaration, declare_method


@dataclass
class PLOTConfig:
    """PLOT's options (``--method plot`` only)."""

    SECTION: ClassVar[str] = "plot"
    num_prompts: int = spec(
        4,
        check=at_least_one,
        flag="--plot-prompts",
        panel="PLOT options (--method plot)",
        help="prompts per class N, matched by optimal transport (PLOT only)",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class KgCoOpConfig:
    """KgCoOp's options (``--method kgcoop`` only)."""

    SECTION: ClassVar[str] = "kgcoop"
    weight: float = spec(
        8.0,
        check=non_negative,
        flag="--kg-weight",
        panel="KgCoOp options (--method kgcoop)",
        help="weight lambda of mean ||t - t_hand-crafted||^2 (KgCoOp only)",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class MapleConfig:
    """MaPLe's options (``--method maple`` only)."""

    SECTION: ClassVar[str] = "maple"
    depth: int = spec(
        9,
        check=at_least_one,
        flag="--maple-depth",
        panel="MaPLe options (--method maple)",
        help="prompted layers J in both towers, capped at the shallower tower's depth (MaPLe only)",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


MAPLE_RECIPE = {
    "prompt.method": "maple",
    "backbone": "ViT-B-16",
    "pretrained": "openai",
    "shots": 16,
    "epochs": 5,
    "optim.batch_size": 4,
    "optim.lr": 0.0035,
    "optim.warmup_epochs": 1,
    "optim.warmup_lr": 1e-5,
    "prompt.n_ctx": 2,
    "prompt.csc": False,
    "prompt.class_token_position": "end",
    "prompt.ctx_init": "a photo of a",
    "maple.depth": 9,
}

COCOOP_RECIPE = {
    "prompt.method": "cocoop",
    "backbone": "ViT-B-16",
    "pretrained": "openai",
    "shots": 16,
    "epochs": 10,
    "optim.batch_size": 1,
    "optim.lr": 0.002,
    "prompt.n_ctx": 4,
    "prompt.csc": False,
    "prompt.class_token_position": "end",
    "prompt.ctx_init": "a photo of a",
}

COOP = declare_method(MethodDeclaration("coop", "nemesis_analysis.methods.coop:CoOp", help="coop"))
COCOOP = declare_method(MethodDeclaration(
    "cocoop", "nemesis_analysis.methods.cocoop:CoCoOp", help="cocoop (image-conditioned context)",
    recipe=COCOOP_RECIPE, recipe_help="CoCoOp: ViT-B-16, 16 shots, batch 1, 10 epochs, 'a photo of a'",
    generic_only=True, official_checkpoint="nemesis_analysis.methods.cocoop:read_official_state",
))  # fmt: skip
PLOT = declare_method(MethodDeclaration(
    "plot", "nemesis_analysis.methods.plot:PLOTMethod", help="plot (N prompts matched by optimal transport)",
    options=PLOTConfig, generic_only=True, official_checkpoint="nemesis_analysis.methods.plot:read_official_state",
))  # fmt: skip
KGCOOP = declare_method(MethodDeclaration(
    "kgcoop", "nemesis_analysis.methods.kgcoop:KgCoOp", help="kgcoop (CoOp pulled towards the hand-crafted prompt)",
    options=KgCoOpConfig,
))  # fmt: skip
MAPLE = declare_method(MethodDeclaration(
    "maple", "nemesis_analysis.methods.maple:MaPLe", help="maple (deep prompts in both towers, coupled)",
    options=MapleConfig, recipe=MAPLE_RECIPE, generic_only=True,
    recipe_help="MaPLe: ViT-B-16, M = 2 from 'a photo of a', depth 9, 16 shots, 5 epochs, batch 4, SGD 0.0035",
))  # fmt: skip
