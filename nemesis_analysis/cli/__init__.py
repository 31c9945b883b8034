"""The ``nemesis`` command: thin commands over the library (parse, build config and Session, call, print).

Library code raises :class:`~nemesis_analysis.errors.NemesisError`; only here does it become one line
on stderr (with the flag that sets a named config field) and exit code 2.
"""

from nemesis_analysis.cli.app import app, main, plot_app
from nemesis_analysis.cli.options import build_session
from nemesis_analysis.cli.runoptions import build_run_config

__all__ = ["app", "main", "plot_app", "build_run_config", "build_session"]
