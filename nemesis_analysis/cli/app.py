"""The ``nemesis`` Typer application: registers every command of the command modules, and the entry point."""

from __future__ import annotations

import sys

import typer

from nemesis_analysis.cli import inventory, protocols, stats, study, tables, training

app = typer.Typer(
    name="nemesis",
    help="Train, corrupt and normalise the soft prompts of vision-language models (Nemesis, ICLR 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
plot_app = typer.Typer(help="Render the paper's figures from the Parquet tables.", no_args_is_help=True)

app.command("train")(training.train)
app.command("corrupt")(training.corrupt)
app.command("demo")(training.demo)
app.command("evaluate")(protocols.evaluate_command)
app.command("fill-counts")(stats.fill_counts_command)
app.command("summary")(tables.summary)
app.command("datasets")(inventory.datasets)
app.command("models")(inventory.models)
plot_app.command("frequency")(tables.plot_frequency_command)
plot_app.command("trajectory")(tables.plot_trajectory_command)
plot_app.command("heatmap")(tables.plot_heatmap_command)
plot_app.command("norms")(tables.plot_norms_command)
plot_app.command("base-new")(protocols.plot_base_new_command)
app.add_typer(plot_app, name="plot")
app.add_typer(study.study_app, name="study")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
