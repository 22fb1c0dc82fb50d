"""Shared by the reproduce_*.py scripts: load the course model, or fall back to the offline one."""

from __future__ import annotations

import sys
from typing import Any

OFFLINE_MODEL = "smollm2-135m"


def load_or_fall_back(script: str, name: str, device: str | None, *, reference: bool) -> Any:
    """Return ``(name_used, model, reference_or_None)``, or None when nothing can be loaded.

    The course's GPT-2 models need the HuggingFace hub (or the local HF cache). When ``name``
    cannot be loaded, the script says so and runs the same configuration on the offline
    ``smollm2-135m`` instead.
    """
    from mechprobe.errors import MechprobeError
    from mechprobe.models import load_model, load_reference

    for candidate in dict.fromkeys([name, OFFLINE_MODEL]):
        try:
            model = load_model(candidate, device=device)
            ref = load_reference(candidate, device=device) if reference else None
            return candidate, model, ref
        except MechprobeError as exc:
            sys.stderr.write(f"{script}: cannot load {candidate!r}: {exc}\n")
            if candidate != OFFLINE_MODEL:
                sys.stderr.write(
                    f"{script}: falling back to the offline model {OFFLINE_MODEL} "
                    "(the course's model needs a network; use --model to choose another)\n"
                )
    return None
