"""What each prompt method declares to the rest of the toolkit, without importing torch.

A :class:`MethodDeclaration` names a method, its implementation (a ``PromptMethod`` class, or
``"module:Class"`` imported when first built), its config section (a dataclass of ``spec`` fields whose
``flag`` makes the ``train``/``corrupt`` options; ``SECTION`` is the TOML section and the ``--set``
prefix), its named recipe, whether it refuses class-specific context, and its reader of the official
code's checkpoints. The run config, the CLI, study files and the prompt reader all derive from
:data:`DECLARED`; :func:`declare_method` is the one registration line of a new method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nemesis_analysis.errors import ConfigError


@dataclass(frozen=True)
class MethodDeclaration:
    """One prompt method as the config, the CLI and the readers see it."""

    name: str  # the value of prompt.method (--method)
    implementation: Any  # the PromptMethod class, or "module:Class" (imported when first built)
    help: str = ""  # one phrase for --method's help
    options: type | None = None  # its config section: a dataclass of spec fields with SECTION = its name
    recipe: dict | None = None  # dotted settings of the recipe named after the method (--recipe NAME)
    recipe_help: str = ""
    generic_only: bool = False  # refuses class-specific context (prompt.csc)
    official_checkpoint: Any = None  # (state, ctx, path) -> metadata or None; or "module:function"


DECLARED: dict[str, MethodDeclaration] = {}


def declare_method(declaration: MethodDeclaration) -> MethodDeclaration:
    """Register a method's declaration; its section, flags, recipe and reader apply from now on."""
    known = DECLARED.get(declaration.name)
    if known is not None and known != declaration:
        raise ValueError(f"prompt method {declaration.name!r} is declared twice")
    options = declaration.options
    if options is not None and getattr(options, "SECTION", None) != declaration.name:
        raise ValueError(f"the options of method {declaration.name!r} must have SECTION = {declaration.name!r}")
    DECLARED[declaration.name] = declaration
    return declaration


def method_names() -> tuple[str, ...]:
    """Every declared prompt method, in declaration order (the choices of prompt.method)."""
    return tuple(DECLARED)


def declaration(name: str) -> MethodDeclaration:
    """The declaration of ``name``; a ConfigError listing the choices otherwise."""
    if name not in DECLARED:
        raise ConfigError(f"unknown prompt method {name!r}; choose one of: {', '.join(DECLARED)}")
    return DECLARED[name]


def option_sections() -> dict[str, type]:
    """The config section of every method that declares options, by section name."""
    return {d.name: d.options for d in DECLARED.values() if d.options is not None}


def resolve(target: Any) -> Any:
    """A declared object: itself, or the attribute named by ``"module:attribute"`` (imported now)."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def official_readers() -> list[tuple[str, Callable]]:
    """(method, reader) of every method that reads the official code's checkpoints."""
    return [(d.name, resolve(d.official_checkpoint)) for d in DECLARED.values() if d.official_checkpoint is not None]
