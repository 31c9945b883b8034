"""Prompt-learning methods behind one interface: importing the package registers every implementation."""

from nemesis_analysis.methods import cocoop  # noqa: F401  (registers "cocoop")
from nemesis_analysis.methods import coop  # noqa: F401  (registers "coop")
from nemesis_analysis.methods import kgcoop  # noqa: F401  (registers "kgcoop")
from nemesis_analysis.methods import maple  # noqa: F401  (registers "maple")
from nemesis_analysis.methods import plot  # noqa: F401  (registers "plot")
from nemesis_analysis.methods.base import (
    METHODS,
    PromptMethod,
    build_method,
    build_method_for_run,
    method_class,
    register_method,
)

__all__ = ["METHODS", "PromptMethod", "build_method", "build_method_for_run", "method_class", "register_method"]
