"""One declaration per setting: ``spec(default, check=..., help=..., flag=...)`` next to a dataclass field,
and the one validator that enforces what it declares.

A field's declaration holds its default, its rule (numbers), its choices (closed sets: an Enum type or a
callable that lists the names, e.g. the registered prompt methods), its help, how it enters ``run_id`` and
the command-line flag that sets it. Everything else (CLI options, ``--set``, TOML run files, study files,
error messages) reads these declarations; nothing repeats them. Torch-free.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum

from nemesis_analysis.errors import FieldError


@dataclass(frozen=True)
class Rule:
    """One validation rule of a numeric field: ``test(value)`` must hold; ``text`` says what it demands."""

    test: Callable[[float], bool]
    text: str


positive = Rule(lambda v: v > 0, "must be positive")
non_negative = Rule(lambda v: v >= 0, "must be >= 0")
at_least_one = Rule(lambda v: v >= 1, "must be at least 1")
unit_interval = Rule(lambda v: 0 <= v <= 1, "must lie in [0, 1]")
unit_interval_open = Rule(lambda v: 0 <= v < 1, "must lie in [0, 1)")
any_number = Rule(lambda v: True, "must be a finite number")


# How a field enters ``run_id``: always; only when it differs from its default (fields added after run ids
# were first recorded, so that existing runs keep their ids); never (bookkeeping such as the recipe name).
IN_ID_ALWAYS, IN_ID_UNLESS_DEFAULT, IN_ID_NEVER = "always", "unless_default", "never"


def spec(default=MISSING, *, check: Rule | None = None, help: str = "", default_factory=MISSING,
         in_id: str = IN_ID_ALWAYS, flag: str | tuple[str, ...] | None = None,
         choices: Callable[[], typing.Iterable[str]] | None = None, settable: bool = True, panel: str = "", noun: str = ""):  # fmt: skip
    """A dataclass field with everything about it declared next to it.

    ``check``: the rule of a numeric field. ``choices``: a callable listing the allowed strings of an open
    set (Enum-typed fields take their members). ``flag``: the command-line flag(s) of ``train``/``corrupt``
    (``"--n-ctx"``, ``("--norm-weight", "--alpha")``, ``"--csc/--no-csc"``); None: only ``--set`` and files
    reach it. ``settable=False``: recorded by the toolkit (not a key users set). ``panel``: the help panel.
    ``noun``: what a value of a closed-set field is called in errors ("unknown norm type 'l3'").
    """
    metadata = {"check": check, "help": help, "in_id": in_id, "flag": flag, "choices": choices,
                "settable": settable, "panel": panel, "noun": noun}  # fmt: skip
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_types(cls) -> dict:
    """The resolved type annotation of every field of a dataclass."""
    return typing.get_type_hints(cls)


def base_type(annotation):
    """``int | None`` -> int; a plain type is returned unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def is_optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def choice_names(annotation, metadata) -> tuple[str, ...] | None:
    """The allowed strings of a closed-set field (its Enum's values or its ``choices()``), else None."""
    kind = base_type(annotation)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return tuple(member.value for member in kind)
    if metadata.get("choices") is not None:
        return tuple(metadata["choices"]())
    return None


def _check_type(dotted: str, kind, value):
    if kind is bool and not isinstance(value, bool):
        raise FieldError(dotted, f"{dotted} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FieldError(dotted, f"{dotted} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(dotted, f"{dotted} must be a number, got {value!r}")
        return float(value)
    if (kind is str or (isinstance(kind, type) and issubclass(kind, Enum))) and not isinstance(value, str):
        raise FieldError(dotted, f"{dotted} must be a string, got {value!r}")
    return value


def check_value(section: str, name: str, annotation, metadata, value):
    """Validate (and normalise: int -> float for float fields, strings -> their Enum) one field value;
    raise a FieldError naming the field by its dotted name."""
    dotted = f"{section}.{name}" if section else name
    if value is None:
        if is_optional(annotation):
            return None
        raise FieldError(dotted, f"{dotted} must be set, got None")
    kind = base_type(annotation)
    value = _check_type(dotted, kind, value)
    names = choice_names(annotation, metadata)
    if names is not None and str(getattr(value, "value", value)) not in names:
        noun = metadata.get("noun") or "value"
        given = getattr(value, "value", value)
        raise FieldError(dotted, f"{dotted}: unknown {noun} {given!r}; choose one of: {', '.join(names)}")
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(value)
    rule = metadata.get("check")
    if rule is not None:
        if not math.isfinite(value):
            raise FieldError(dotted, f"{dotted} must be a finite number, got {value!r}")
        if not rule.test(value):
            raise FieldError(dotted, f"{dotted} {rule.text}, got {value!r}")
    return value


def is_section(kind) -> bool:
    """A nested config section (a dataclass with a ``SECTION`` name)."""
    return isinstance(kind, type) and isinstance(getattr(kind, "SECTION", None), str)


def validate_fields(config) -> None:
    """The one validator: check every leaf field of a config dataclass against its declaration."""
    hints = field_types(type(config))
    for item in fields(config):
        if is_section(base_type(hints[item.name])) or item.metadata.get("nested"):
            continue
        value = check_value(config.SECTION, item.name, hints[item.name], item.metadata, getattr(config, item.name))
        object.__setattr__(config, item.name, value)


@dataclass(frozen=True)
class Setting:
    """A leaf setting of the run config: its dotted name, type annotation and declaration (field metadata)."""

    dotted: str
    annotation: typing.Any
    metadata: typing.Mapping
    default: typing.Any

    @property
    def help(self) -> str:
        return self.metadata.get("help", "")

    @property
    def flags(self) -> tuple[str, ...]:
        flag = self.metadata.get("flag")
        return () if flag is None else (flag,) if isinstance(flag, str) else tuple(flag)

    @property
    def settable(self) -> bool:
        return self.metadata.get("settable", True)

    @property
    def choices(self) -> tuple[str, ...] | None:
        return choice_names(self.annotation, self.metadata)


def section_settings(cls, prefix: str = "") -> list[Setting]:
    """The leaf fields of one section dataclass as :class:`Setting` (defaults from the declaration)."""
    hints = field_types(cls)
    found = []
    for item in fields(cls):
        if is_section(base_type(hints[item.name])) or item.metadata.get("nested"):
            continue
        default = item.default if item.default is not MISSING else None
        found.append(Setting(f"{prefix}{item.name}", hints[item.name], item.metadata, default))
    return found
