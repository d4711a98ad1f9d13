"""The cross-size comparison report: MLflow runs -> tables -> figures -> findings -> HTML, logged as a run."""

from dmat.report.build import SECTIONS, build_report, choose_sections

__all__ = ["SECTIONS", "build_report", "choose_sections"]
