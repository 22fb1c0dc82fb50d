"""``mechprobe heads``: dissect the attention heads of one layer (E2)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from mechprobe.experiments.heads import HeadsConfig, parity_failures, run_heads


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def report(summary: dict[str, Any]) -> str:
    """The text printed after a run: findings and parity checks.

    Example:
        >>> print(report(run_heads(HeadsConfig(model="tiny-gpt2")).summary))  # doctest: +SKIP
    """
    s = summary
    frac, med, n = s["negative_fraction"], s["median"], s["n_pairs"]
    lines = [
        f"heads {s['model']}: layer {s['layer']} of {s['n_layers']}, {s['n_tokens']} tokens, "
        f"{s['n_heads']} heads / {s['n_kv_heads']} kv heads "
        f"(scores from {', '.join(h.rsplit('.', 1)[1] for h in s['hooks']['scores'])})",
        f"{'raw scores':<18}{'pairs':>8}{'negative':>10}{'median':>12}",
    ]
    for key, label in (("same", "same head"), ("diff", "different heads")):
        lines.append(
            f"{label:<18}{n[key]:>8}{_fmt(frac[key], '.1%'):>10}{_fmt(med[key], '.4g'):>12}"
        )
    verdict = "holds" if s["finding_holds"] else "does NOT hold"
    lines.append(f"finding (most raw scores negative, medians < 0): {verdict}")
    p = s["parity"]
    for key in (k for k in p if k not in ("tolerance", "passed")):
        ok = "ok" if p[key] <= p["tolerance"] else "FAIL"
        lines.append(f"parity {key:<32}{p[key]:>11.3e}  {ok}")
    return "\n".join(lines)


def execute(config: HeadsConfig, out: str | Path, **loaded: Any) -> int:
    """Run, print, save figures and arrays; exit status 1 if a parity check fails.

    Args:
        config: The settings.
        out: Output directory (results go to ``out/heads/``).
        **loaded: ``model=`` / ``reference=`` already loaded, passed on to `run_heads`.

    Example:
        >>> execute(HeadsConfig(model="tiny-gpt2"), "out")  # doctest: +SKIP
        0
    """
    from mechprobe.plots.heads import figures

    start = time.perf_counter()
    result = run_heads(config, **loaded)
    print(report(result.summary))
    path = result.save(out, figures(result))
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    failed = parity_failures(result)
    if failed:
        sys.stderr.write(
            f"mechprobe heads: FAIL: parity check(s) above {config.tolerance:g}: "
            f"{', '.join(failed)}\n"
        )
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``heads`` subcommand from parsed arguments."""
    config = HeadsConfig(
        model=args.model,
        layer=args.layer,
        text=args.text,
        bandwidth=args.bandwidth,
        device=args.device,
    )
    return execute(config, args.out)


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``heads``."""
    p = sub.add_parser(
        "heads",
        parents=[common],
        help="dissect one layer's attention heads: Q/K stats, raw scores, softmax weights",
    )
    p.add_argument(
        "--layer", type=int, default=None, help="layer to dissect (default: n_layers // 2)"
    )
    p.add_argument(
        "--text", default=None, help="text to run, no BOS (default: the shipped passage)"
    )
    p.add_argument(
        "--bandwidth",
        default=None,
        help="gaussian_kde bandwidth: a positive factor, 'scott' (default) or 'silverman'",
    )
    p.set_defaults(func=run)
