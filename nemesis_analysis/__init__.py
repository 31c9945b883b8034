"""nemesis-analysis: train, corrupt and normalise the soft prompts of vision-language models.

The names in ``__all__`` are the public API, what a notebook or a script uses::

    from nemesis_analysis import RunConfig, Session, train_prompt, sweep_trained_run, GridSpec

    session = Session("checkpoints", "reports")
    run = train_prompt(RunConfig(dataset="digits", shots=16), session)
    sweep_trained_run(session, run, GridSpec().expand(len(run.position_norms)))

    from nemesis_analysis import read_table, low_norm_frequency, frequency_figure

    low_norm_frequency(read_table("reports", "corruptions"))
    frequency_figure("reports")

They resolve lazily (PEP 562), each on first use, so ``import nemesis_analysis`` stays cheap and the
table, analysis and figure names import no torch. The modules behind them may move; these names stay.
docs/api.md lists every name with what it is for.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # a run's settings and its environment
    "RunConfig": "nemesis_analysis.config",
    "PromptConfig": "nemesis_analysis.config",
    "NemesisConfig": "nemesis_analysis.config",
    "OptimConfig": "nemesis_analysis.config",
    "Session": "nemesis_analysis.session",
    # the frozen model and the datasets
    "load_model": "nemesis_analysis.clip.loading",
    "load_dataset": "nemesis_analysis.data.registry",
    "dataset_names": "nemesis_analysis.data.registry",
    "load_model_and_data": "nemesis_analysis.training.train",
    # training
    "train_prompt": "nemesis_analysis.training.train",
    "RunResult": "nemesis_analysis.training.train",
    # corruption sweeps
    "GridSpec": "nemesis_analysis.corruption.ops",
    "sweep_runs": "nemesis_analysis.corruption.sweep_runs",
    "sweep_trained_run": "nemesis_analysis.corruption.sweep_runs",
    "run_corruption_sweep": "nemesis_analysis.corruption.sweep",
    "SweepSummary": "nemesis_analysis.corruption.sweep",
    # evaluation on other test splits
    "evaluate_saved": "nemesis_analysis.evaluate",
    # the tables
    "read_table": "nemesis_analysis.storage.store",
    "TABLES": "nemesis_analysis.storage.schema",
    # analysis (pure pandas)
    "FREQUENCY_DEFINITION": "nemesis_analysis.report.analysis",
    "low_norm_frequency": "nemesis_analysis.report.analysis",
    "low_norm_frequency_per_seed": "nemesis_analysis.report.analysis",
    "low_norm_counts": "nemesis_analysis.report.analysis",
    "delta_grid": "nemesis_analysis.report.analysis",
    "dedupe_corruptions": "nemesis_analysis.report.analysis",
    "format_mean_std": "nemesis_analysis.report.analysis",
    # figures and summaries
    "frequency_figure": "nemesis_analysis.report.figures",
    "trajectory_figure": "nemesis_analysis.report.figures",
    "heatmap_figure": "nemesis_analysis.report.figures",
    "norms_figure": "nemesis_analysis.report.figures",
    "render_all": "nemesis_analysis.report.figures",
    "save_figure": "nemesis_analysis.report.plots",
    "summary_tables": "nemesis_analysis.report.summaries",
    "display_table": "nemesis_analysis.report.summaries",
    "write_summary": "nemesis_analysis.report.summaries",
    "paper_table": "nemesis_analysis.report.summaries",
    # the whole pipeline on the embedded default
    "run_demo": "nemesis_analysis.demo",
    # errors (every refusal is a NemesisError)
    "NemesisError": "nemesis_analysis.errors",
    "ConfigError": "nemesis_analysis.errors",
    "NoDataError": "nemesis_analysis.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
