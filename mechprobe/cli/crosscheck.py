"""``mechprobe crosscheck``: TransformerLens vs HuggingFace parity for every layer."""

from __future__ import annotations

import argparse

from mechprobe.experiments.crosscheck import DEFAULT_TEXT, CrosscheckConfig, run_crosscheck


def run(args: argparse.Namespace) -> int:
    """Run the checks, print the table, write JSON; exit 1 if any difference is too large."""
    config = CrosscheckConfig(
        model=args.model, text=args.text, tolerance=args.tolerance, device=args.device
    )
    result = run_crosscheck(config)
    print(f"crosscheck {config.model}: TransformerLens hooks vs HuggingFace hooks")
    print(result.table())
    path = result.save(args.out)
    print(f"wrote {path}")
    return 0 if result.passed else 1


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``crosscheck``."""
    p = sub.add_parser(
        "crosscheck", parents=[common], help="compare TransformerLens hooks with HF hooks"
    )
    p.add_argument("--text", default=DEFAULT_TEXT, help="text to run (no BOS)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| allowed (1e-4)")
    p.set_defaults(func=run)
