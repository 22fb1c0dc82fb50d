"""``mechprobe replace``: zero a head, noise MLP units, scale a block -- TL vs HF hooks."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mechprobe.errors import MechprobeError
from mechprobe.experiments.replace import ReplaceConfig, run_replace
from mechprobe.experiments.result import ExperimentResult


def parse_scales(text: str) -> tuple[float, ...]:
    """Parse ``--scales`` (comma-separated numbers).

    Example:
        >>> parse_scales("0.1,10")
        (0.1, 10.0)
    """
    try:
        scales = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MechprobeError(f"--scales {text!r} must be comma-separated numbers") from None
    if not scales:
        raise MechprobeError("--scales is empty: give at least one factor, e.g. 0.1,10")
    return scales


def _print_report(result: ExperimentResult) -> None:
    s = result.summary
    print(
        f"replace {s['model']}: hidden vector at position {s['position']} ({s['position_token']!r})"
    )
    print(f"{'condition':<12}{'TL-vs-HF max|diff|':>20}{'KL(base||c)':>13}  top-5 next tokens")
    for name, c in s["conditions"].items():
        top = ", ".join(f"{t['token']!r}" for t in c["top5_next_tokens"])
        print(f"{name:<12}{c['tl_vs_hf_max_abs_diff']:>20.3e}{c['kl_from_baseline']:>13.3e}  {top}")
    p = s["parity"]
    verdict = "PASS" if p["passed"] else "FAIL"
    print(f"{verdict}: TL vs HF max |diff| {p['max_abs_diff']:.3e} (tolerance {p['tolerance']:g})")
    print(f"norm per hidden state (position {s['position']}):")
    for name in s["conditions"]:
        norms = " ".join(f"{x:.3g}" for x in result.arrays[f"{name}_norm"])
        print(f"  {name:<11} {norms}")
    print("course finding (scaling):")
    for f in s["scaling_finding"].values():
        print(f"  [{'holds' if f['holds'] else 'does not hold'}] {f['text']}")
    print(s["block_output_explanation"])


def execute(config: ReplaceConfig, out: str, *, model: Any = None, reference: Any = None) -> int:
    """Run, print the report and write ``OUT/replace/``; 1 if TL and HF disagree, else 0.

    Example:
        >>> execute(ReplaceConfig(model="smollm2-135m"), "mechprobe-out")
        0
    """
    from mechprobe.plots.replace import figures

    start = time.perf_counter()
    result = run_replace(config, model=model, reference=reference)
    result.summary["wall_time_s"] = round(time.perf_counter() - start, 2)
    _print_report(result)
    path = result.save(out, figures(result))
    print(f"wrote {path} (experiment {result.summary['wall_time_s']:.1f} s)")
    return 0 if result.summary["parity"]["passed"] else 1


def run(args: argparse.Namespace) -> int:
    """Build the config from the options and `execute` it."""
    from mechprobe.interventions import parse_units

    parse_units(args.mlp_units, "--mlp-units")
    config = ReplaceConfig(
        model=args.model,
        text=args.text,
        position=args.position,
        head_layer=args.head_layer,
        head=args.head,
        component=args.component,
        mlp_layer=args.mlp_layer,
        mlp_units=args.mlp_units,
        noise_mean=args.noise_mean,
        noise_std=args.noise_std,
        seed=args.seed,
        scale_layer=args.scale_layer,
        scales=parse_scales(args.scales),
        tolerance=args.tolerance,
        device=args.device,
    )
    return execute(config, args.out)


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``replace``."""
    p = sub.add_parser(
        "replace",
        parents=[common],
        help="zero a head, noise MLP units, scale a block; check TL against HF hooks",
    )
    p.add_argument("--text", default=None, help="text to run, no BOS (default: shipped sentence)")
    p.add_argument("--position", type=int, default=4, help="token position followed (4)")
    p.add_argument("--head-layer", type=int, default=3, help="layer of the zeroed head (3)")
    p.add_argument("--head", type=int, default=2, help="head to zero (2; K/V: a kv head)")
    p.add_argument("--component", choices=("q", "k", "v"), default="k", help="q, k or v (k)")
    p.add_argument("--mlp-layer", type=int, default=5, help="layer of the MLP noise (5)")
    p.add_argument(
        "--mlp-units", default="::2", help="units to replace: a slice like ::2 or a list 1,5 (::2)"
    )
    p.add_argument("--noise-mean", type=float, default=10.0, help="noise mean (10)")
    p.add_argument("--noise-std", type=float, default=1.0, help="noise standard deviation (1)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    p.add_argument("--scale-layer", type=int, default=8, help="block whose output is scaled (8)")
    p.add_argument("--scales", default="0.1,10", help="comma-separated factors (0.1,10)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max TL-vs-HF |diff| (1e-4)")
    p.set_defaults(func=run)
