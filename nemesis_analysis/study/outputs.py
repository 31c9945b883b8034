"""What a finished study run leaves besides the tables: the summary tables and the figures, in reports/studies/NAME/."""

from __future__ import annotations

from pathlib import Path

from nemesis_analysis.errors import NoDataError
from nemesis_analysis.study.spec import Study


def study_output_dir(study: Study) -> Path:
    return study.outputs.reports / "studies" / study.name


def write_study_outputs(study: Study, figures: bool = True) -> list[Path]:
    """summary_*.csv/.md (mean ± std over seeds) and, with ``figures``, every figure whose data exists."""
    from nemesis_analysis.report import summaries

    out = study_output_dir(study)
    try:
        tables = summaries.summary_tables(study.outputs.reports)
    except NoDataError:
        return []
    paths = summaries.write_summary(tables, out)
    if figures:
        from nemesis_analysis.report.figures import render_all

        paths += render_all(study.outputs.reports, out_dir=out / "figures")
    return paths
