"""The closed choices of the toolkit (string enums), defined once for configs, math and tables alike."""

from __future__ import annotations

from enum import Enum

from nemesis_analysis.errors import ConfigError


class ClassTokenPosition(str, Enum):
    END = "end"
    MIDDLE = "middle"
    FRONT = "front"


class Precision(str, Enum):
    FP32 = "fp32"  # everything in fp32 (always on CPU)
    AMP = "amp"  # frozen towers under bf16 autocast (CUDA default)
    FP16 = "fp16"  # the reference's all-half mode: towers, context and SGD in fp16 (CUDA only)


class NormType(str, Enum):
    L2 = "l2"
    L1 = "l1"
    INF = "inf"


class OmegaSchedule(str, Enum):
    SIGMOID = "sigmoid"  # omega(t) = 1 - sigmoid(0.2 (t - T/2))
    CONSTANT = "constant"  # omega(t) = 1


class CscReduction(str, Enum):
    MEAN = "mean"  # class-specific context: norms averaged over classes (ours)
    SUM = "sum"  # summed over classes, as the reference code does (num_classes times stronger)


class CorruptionOp(str, Enum):
    NONE = "none"  # the uncorrupted baseline row
    RESCALE = "rescale"  # p_i <- factor * p_i
    REPLACE = "replace"  # p_i <- N(0, std^2 I)


class Protocol(str, Enum):
    FEWSHOT = "fewshot"  # train and test on all classes of one dataset
    BASE2NEW = "base2new"  # train on the base half of the classes, test on base and on new
    CROSSDATASET = "crossdataset"  # train on ImageNet, test on the ten other datasets
    DG = "dg"  # train on ImageNet, test on ImageNet-V2, -Sketch, -A and -R


class EvalClasses(str, Enum):
    ALL = "all"  # every class of the dataset
    BASE = "base"  # base2new: the first ceil(n/2) sorted label ids
    NEW = "new"  # base2new: the remaining label ids


def choice(enum_type: type[Enum], value, what: str):
    """Coerce ``value`` to ``enum_type`` or raise a ConfigError naming ``what`` and the valid choices."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(member.value for member in enum_type)
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {valid}") from None


def plain(value):
    """Enums to their values, recursively, so configs and rows serialise to JSON and Parquet."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
