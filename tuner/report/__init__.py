"""Reports re-rendered from saved artifacts (summary.json, trial records, the study): they never measure."""

from pathlib import Path

from tuner.errors import StorageError
from tuner.report.data import ReportData, load_report_data
from tuner.report.html import write_html_report
from tuner.report.markdown import write_markdown_report

__all__ = ["ReportData", "load_report_data", "write_html_report", "write_markdown_report", "write_reports"]


def write_reports(output_dir: str, storage: str | None = None) -> list[str]:
    """Write report.html, report.md and pareto.png into output_dir from what it holds; returns the paths.

    storage: the study's URL (--storage), for parameter importance; default OUTPUT_DIR/study.db where it exists.
    """
    data = load_report_data(Path(output_dir), storage)
    try:
        return [str(write_html_report(data)), *map(str, write_markdown_report(data))]
    except OSError as exc:
        raise StorageError(f"cannot write the reports in {output_dir}: {exc.strerror or exc}") from None
