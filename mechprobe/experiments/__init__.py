"""Experiments: plain functions from a config dataclass to a result (arrays + summary)."""
