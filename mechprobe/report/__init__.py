"""The one-page HTML report of ``mechprobe all``: figures, key numbers, parity, provenance."""

from mechprobe.report.html import build_report

__all__ = ["build_report"]
