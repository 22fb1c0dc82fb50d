"""Figures of E1, the negation preset of the probe: the probe's figures."""

from mechprobe.plots.probe import captions, figures

__all__ = ["captions", "figures"]
