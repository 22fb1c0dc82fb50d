"""Reproduce the course's E1 negation-tuning run: gpt2-large, all layers, Q/K/V and MLP units.

The course's configuration: The Variable Man (gutenberg:32154, whole file), context 90 tokens
before and 10 after each target, every match (no balancing), Bonferroni at alpha 0.05 per layer.

Usage:
    python scripts/reproduce_negation.py                          # gpt2-large (needs the hub)
    python scripts/reproduce_negation.py --model smollm2-135m     # offline
    python scripts/reproduce_negation.py --model smollm2-135m --text ../shared/data/pg32154.txt

Without --text the text comes from $MECHPROBE_TEXT if set, else gutenberg:32154.
"""

from __future__ import annotations

import argparse
import sys

from _course import load_or_fall_back

from mechprobe.errors import MechprobeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-large", help="model (default: gpt2-large)")
    parser.add_argument("--text", default=None, help="path, URL or gutenberg:ID")
    parser.add_argument("--out", default="mechprobe-out", help="output directory")
    parser.add_argument("--device", default=None, help="torch device")
    args = parser.parse_args(argv)

    from mechprobe.cli.negation import table
    from mechprobe.experiments.negation import NegationConfig, run_negation
    from mechprobe.plots.negation import figures

    loaded = load_or_fall_back("reproduce_negation", args.model, args.device, reference=False)
    if loaded is None:
        return 2
    args.model, model, _ = loaded
    config = NegationConfig(model=args.model, text=args.text, device=args.device)
    try:
        result = run_negation(config, model=model)
        path = result.save(args.out, figures(result))
    except MechprobeError as exc:
        print(f"reproduce_negation: error: {exc}", file=sys.stderr)
        return 2
    s = result.summary
    print(
        f"{args.model}: {s['n_affirmation']} affirmation / {s['n_negation']} negation targets "
        f"(text {s['text_source']}, sha256 {s['text_sha256'][:12]})"
    )
    print(table(s))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
