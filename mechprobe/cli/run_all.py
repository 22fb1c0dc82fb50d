"""``mechprobe all``: every experiment and the crosscheck on one model, one HTML report."""

from __future__ import annotations

import argparse
import os

from mechprobe.experiments.run_all import STEPS, AllConfig, run_all


def run(args: argparse.Namespace) -> int:
    """Run everything; print where the report is."""
    steps = tuple(args.steps.split(",")) if args.steps else STEPS
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        from mechprobe.errors import MechprobeError

        raise MechprobeError(
            f"unknown step(s) {', '.join(unknown)} (choose from {', '.join(STEPS)})"
        )
    text = args.text or os.environ.get("MECHPROBE_TEXT")
    res = run_all(
        AllConfig(
            model=args.model,
            out=args.out,
            text=text,
            resume=args.resume,
            device=args.device,
            png=False if args.no_png else None,
            steps=steps,
        )
    )
    total = sum(res["timings"].values())
    print(f"report: {res['report']}  (total {total:.1f} s)")
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``all``."""
    p = sub.add_parser(
        "all", parents=[common], help="run every experiment and write OUT/index.html"
    )
    p.add_argument(
        "--text",
        default=None,
        help="negation text: a path, an http(s) URL or gutenberg:ID (default: $MECHPROBE_TEXT, "
        "else gutenberg:32154)",
    )
    p.add_argument("--resume", action="store_true", help="skip experiments already finished")
    p.add_argument("--no-png", action="store_true", help="skip PNG export (HTML only)")
    p.add_argument(
        "--steps", default=None, help=f"comma list of steps (default: {','.join(STEPS)})"
    )
    p.set_defaults(func=run)
