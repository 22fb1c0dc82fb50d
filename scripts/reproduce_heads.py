"""Reproduce the course's attention-head dissection (E2): GPT-2 small, layer 6.

The course ran layer 6 of GPT-2 small on one short passage; this runs the same analysis on the
project's default passage (``mechprobe/data/heads_default.txt``). ``--model`` picks another
model; its default layer is then its middle layer unless ``--layer`` is given.

Usage:
    python scripts/reproduce_heads.py [--model gpt2] [--layer 6] [--out mechprobe-out]
    python scripts/reproduce_heads.py --model smollm2-135m   # offline
"""

from __future__ import annotations

import argparse
import sys

from _course import load_or_fall_back

COURSE_MODEL = "gpt2"
COURSE_LAYER = 6


def main(argv: list[str] | None = None) -> int:
    """Load the model (clear message if it cannot be loaded), run, save; return exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=COURSE_MODEL, help="model (default: gpt2)")
    parser.add_argument("--layer", type=int, default=None, help="layer (gpt2 default: 6)")
    parser.add_argument("--text", default=None, help="text (default: the shipped passage)")
    parser.add_argument("--bandwidth", default=None, help="KDE bandwidth (default: scott)")
    parser.add_argument("--device", default=None, help="torch device")
    parser.add_argument("--out", default="mechprobe-out", help="output directory")
    args = parser.parse_args(argv)

    from mechprobe.cli.heads import execute
    from mechprobe.errors import MechprobeError
    from mechprobe.experiments.heads import HeadsConfig

    loaded = load_or_fall_back("reproduce_heads", args.model, args.device, reference=True)
    if loaded is None:
        return 2
    args.model, model, reference = loaded
    layer = args.layer
    if layer is None and args.model == COURSE_MODEL:
        layer = COURSE_LAYER
    config = HeadsConfig(
        model=args.model,
        layer=layer,
        text=args.text,
        bandwidth=args.bandwidth,
        device=args.device,
    )
    try:
        return execute(config, args.out, model=model, reference=reference)
    except MechprobeError as exc:
        sys.stderr.write(f"reproduce_heads: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
