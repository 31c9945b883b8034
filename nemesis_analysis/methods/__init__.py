"""Prompt-learning methods behind one interface.

Importing the package declares every built-in method (``declarations.py``, torch-free); an
implementation module (``coop.py``, ``plot.py``, ...) is imported when its method is first built. The
interface and the builders (``PromptMethod``, ``build_method``, ...) live in ``base.py`` and are reached
from here without importing torch until they are used.
"""

from nemesis_analysis.methods import declarations  # noqa: F401  (declares coop, cocoop, plot, kgcoop, maple)
from nemesis_analysis.methods.registry import DECLARED, MethodDeclaration, declare_method, method_names

_FROM_BASE = ("METHODS", "PromptMethod", "build_method", "build_method_for_run", "method_class", "register_method")


def __getattr__(name: str):
    if name in _FROM_BASE:
        from nemesis_analysis.methods import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DECLARED", "MethodDeclaration", "declare_method", "method_names", *_FROM_BASE]
