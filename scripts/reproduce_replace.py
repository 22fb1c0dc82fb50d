"""Reproduce the course's activation-replacement exercises (E4) on GPT-2 small.

The course's configuration: token 4; K of head 2 zeroed at layer 3; even MLP units (``::2``) of
layer 5 at token 4 replaced by N(10, 1) noise (seed 0 here); block 8's output scaled by 0.1 and
by 10. The text is the project's own sentence (``mechprobe/data/replace_default.txt``). Every
condition is checked against plain HuggingFace forward hooks. ``--model`` picks another model;
the layers must exist in it (smollm2-135m has 30, so the course's layers fit).

Usage:
    python scripts/reproduce_replace.py [--model gpt2] [--out mechprobe-out]
    python scripts/reproduce_replace.py --model smollm2-135m   # offline
"""

from __future__ import annotations

import argparse
import sys

from _course import load_or_fall_back

COURSE_MODEL = "gpt2"


def main(argv: list[str] | None = None) -> int:
    """Load the model (clear message if it cannot be loaded), run, save; return exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=COURSE_MODEL, help="model (default: gpt2)")
    parser.add_argument("--device", default=None, help="torch device")
    parser.add_argument("--out", default="mechprobe-out", help="output directory")
    args = parser.parse_args(argv)

    from mechprobe.cli.replace import execute
    from mechprobe.errors import MechprobeError
    from mechprobe.experiments.replace import ReplaceConfig

    loaded = load_or_fall_back("reproduce_replace", args.model, args.device, reference=True)
    if loaded is None:
        return 2
    args.model, model, reference = loaded
    # The course's settings are ReplaceConfig's defaults (position 4, head-layer 3, head 2, K,
    # mlp-layer 5, units ::2, mean 10, std 1, scale-layer 8, scales 0.1 and 10).
    config = ReplaceConfig(model=args.model, device=args.device)
    try:
        return execute(config, args.out, model=model, reference=reference)
    except MechprobeError as exc:
        sys.stderr.write(f"reproduce_replace: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
