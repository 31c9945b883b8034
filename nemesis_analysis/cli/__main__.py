"""``python -m nemesis_analysis.cli``: run the ``nemesis`` command."""

from nemesis_analysis.cli.app import main

main()
