"""Plain HuggingFace forward hooks: the independent reference for every TransformerLens result.

Nothing in this package touches TransformerLens.
"""

from mechprobe.reference.arch import hf_arch
from mechprobe.reference.capture import capture_reference

__all__ = ["capture_reference", "hf_arch"]
