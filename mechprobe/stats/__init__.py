"""Statistics for probing: vectorised logistic probes and multiple-comparison control."""

from mechprobe.stats.logistic import LogisticFit, fit_logistic
from mechprobe.stats.multiple import bonferroni_mask, fdr_mask

__all__ = ["LogisticFit", "bonferroni_mask", "fdr_mask", "fit_logistic"]
