"""``ild report``: one HTML page (figures embedded) plus the PNGs and CSVs behind it."""

from .write import ReportError, ReportResult, write_report

__all__ = ["ReportError", "ReportResult", "write_report"]
