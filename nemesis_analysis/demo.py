"""``nemesis demo``: the whole pipeline (train, sweep corruptions, draw figures) on the embedded default, offline.

Callable from a notebook too: :func:`run_demo` returns everything it computed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nemesis_analysis.config import NemesisConfig, RunConfig
from nemesis_analysis.session import Session
from nemesis_analysis.training.train import RunResult, load_model_and_data, train_prompt

DEMO_DATASET = "digits"
DEMO_SHOTS = 16
DEMO_SEED = 1
DEMO_REGULARIZERS = {"coop": None, "nemesis-pun": 1.0, "nemesis-pan": 0.0}


def demo_study(checkpoints: Path, reports: Path, device: str):
    """What the demo runs, as a study (so ``nemesis study report`` can describe it): its runs, CoOp's sweep."""
    from nemesis_analysis.study.spec import parse_study

    data = {
        "study": {"name": "demo", "description": "nemesis demo: CoOp, PUN and PAN on digits, CoOp's prompt swept"},
        "grid": {
            "datasets": [DEMO_DATASET],
            "shots": [DEMO_SHOTS],
            "seeds": [DEMO_SEED],
            "methods": ["coop", "pun", "pan"],
        },
        "corrupt": {"grid": "default", "methods": ["coop"]},
        "outputs": {"checkpoints": str(checkpoints), "reports": str(reports), "device": device},
    }
    return parse_study(data).with_outputs()


def demo_config(beta: float | None) -> RunConfig:
    return RunConfig(dataset=DEMO_DATASET, shots=DEMO_SHOTS, seed=DEMO_SEED, nemesis=NemesisConfig(beta=beta))


def runs_table(runs: dict[str, RunResult]) -> Table:
    """Accuracy and per-position norms of each regularizer's run."""
    table = Table(title="accuracy and context norms (test split)")
    for column in ("regularizer", "run_id", "test acc %", "mean norm", "per-position L2 norms"):
        table.add_column(column)
    for regularizer, run in runs.items():
        norms = " ".join(f"{n:.2f}" for n in run.position_norms)
        table.add_row(regularizer, run.run_id, f"{run.final_test_acc:.2f}", f"{run.mean_norm:.4f}", norms)
    return table


@dataclass
class DemoResult:
    runs: dict[str, RunResult] = field(default_factory=dict)  # regularizer (coop, nemesis-pun, ...) -> its run
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0


def run_demo(
    checkpoints: Path | str = "checkpoints",
    reports: Path | str = "reports",
    device: str | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> DemoResult:
    console = console or Console()
    started = time.perf_counter()
    session = Session(Path(checkpoints), Path(reports), device=device or "auto", progress=progress)
    result = DemoResult()

    console.rule("[bold]1. the embedded tiny CLIP")
    loaded, _ = load_model_and_data(demo_config(None), session)
    console.print(f"nemesis-tiny ready ({loaded.weights_id}) on {loaded.device}", highlight=False)

    console.rule(f"[bold]2. CoOp and Nemesis on {DEMO_DATASET}, {DEMO_SHOTS} shots, seed {DEMO_SEED}")
    for regularizer, beta in DEMO_REGULARIZERS.items():
        run = train_prompt(demo_config(beta), session)
        result.runs[regularizer] = run
    coop = result.runs["coop"]
    console.print(f"zero-shot accuracy (hand-crafted prompt): {coop.zero_shot_acc:.2f}%", highlight=False)
    console.print(runs_table(result.runs))

    # ---- step 3: corruption sweeps of the three prompts (Low-Norm Effect); training dominates, sweeps take seconds
    console.rule("[bold]3. corruption sweeps of the CoOp, PUN and PAN prompts (Low-Norm Effect)")
    from nemesis_analysis.corruption.ops import GridSpec
    from nemesis_analysis.corruption.sweep import format_summary
    from nemesis_analysis.corruption.sweep_runs import sweep_trained_run

    grid = GridSpec().expand(len(coop.position_norms))  # the default grid: every position, rescale and replace
    result.extra["corruptions"] = {}
    for method, run in result.runs.items():
        sweep = sweep_trained_run(session, run, grid)
        result.extra["corruptions"][method] = sweep
        console.print(f"[bold]{method}[/bold]", highlight=False)
        for line in format_summary(sweep):
            console.print(line, highlight=False, soft_wrap=True)
    result.extra["corruption"] = result.extra["corruptions"]["coop"]

    # ---- step 4: figures
    from nemesis_analysis.report.figures import render_all  # no torch: tables and matplotlib only

    console.rule("[bold]4. figures")
    figure_paths = render_all(session.reports_dir)
    result.extra["figures"] = figure_paths
    for path in figure_paths:
        console.print(str(path), highlight=False, soft_wrap=True)
    if not figure_paths:
        console.print("no figures: the reports tables are empty", highlight=False)

    # ---- step 5: the one-file HTML report
    from nemesis_analysis.study.report import write_study_report

    console.rule("[bold]5. report")
    report = write_study_report(demo_study(session.checkpoints_dir, session.reports_dir, session.torch_device().type))
    result.extra["report"] = report
    console.print(f"report: {report}", highlight=False, soft_wrap=True)

    result.seconds = time.perf_counter() - started
    console.rule("[bold]summary")
    console.print(
        f"zero-shot {coop.zero_shot_acc:.2f}% -> CoOp {coop.final_test_acc:.2f}% "
        f"({coop.final_test_acc - coop.zero_shot_acc:+.2f} points); PUN mean norm "
        f"{result.runs['nemesis-pun'].mean_norm:.4f} vs CoOp {coop.mean_norm:.4f}",
        highlight=False,
    )
    console.print(f"checkpoints: {session.checkpoints_dir}/<run_id>/   tables: {session.reports_dir}/", highlight=False)
    console.print(f"done in {result.seconds:.0f} s", highlight=False)
    return result
