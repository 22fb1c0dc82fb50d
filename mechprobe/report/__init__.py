"""The one-page HTML report of an output directory, built from what is on disk."""

from mechprobe.report.html import build_report

__all__ = ["build_report"]
