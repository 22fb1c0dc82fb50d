"""``mechprobe negation``: E1, negation tuning of Q/K/V and MLP units in every layer.

The text comes from ``--text`` (a path, an http(s) URL or ``gutenberg:ID``); without it, from
the file named by the environment variable ``MECHPROBE_TEXT`` if set, else ``gutenberg:32154``
(*The Variable Man*, downloaded once into the cache; if that download fails, a loud warning
and the built-in sample text).
"""

from __future__ import annotations

import argparse
import math

from mechprobe.errors import MechprobeError
from mechprobe.experiments.negation import NegationConfig, run_negation


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``all`` -> None; ``0,3,5`` -> (0, 3, 5).

    Example:
        >>> parse_layers("0, 3,5")
        (0, 3, 5)
    """
    if text.strip().lower() == "all":
        return None
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MechprobeError(
            f"--layers must be 'all' or a comma list of integers, got {text!r}"
        ) from None
    if not layers:
        raise MechprobeError("--layers is empty")
    return layers


def parse_components(text: str) -> tuple[str, ...]:
    """``qkv,mlp`` -> ("qkv", "mlp"); anything else is an error.

    Example:
        >>> parse_components("mlp")
        ('mlp',)
    """
    comps = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    bad = [c for c in comps if c not in ("qkv", "mlp")]
    if bad or not comps:
        raise MechprobeError(f"--components must be a comma list of qkv, mlp; got {text!r}")
    return tuple(dict.fromkeys(comps))


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "   -  "
    return f"{x:6.1f}" if pct else f"{x:6.3f}"


def table(summary: dict) -> str:
    """Per-layer text table: % significant / mean accuracy / accuracy of sig. beta>0 units.

    Example:
        >>> print(table(result.summary))  # doctest: +SKIP
    """
    groups = [g for g in ("qkv", "q", "k", "v", "mlp") if g in summary["per_layer"][0]]
    head = "layer " + "".join(f"| {g.upper():^22}" for g in groups)
    sub = "      " + "| %sig   acc    acc+  " * len(groups)
    lines = [head, sub]
    for row in summary["per_layer"]:
        cells = []
        for g in groups:
            f = row[g]
            cells.append(
                f"|{_fmt(f['percent_significant'], True)} {_fmt(f['mean_accuracy'])} "
                f"{_fmt(f['mean_accuracy_sig_pos'])} "
            )
        lines.append(f"{row['layer']:>5} " + "".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the experiment, print the per-layer table, write ``OUT/negation/``."""
    from mechprobe.plots.negation import figures

    config = NegationConfig(
        model=args.model,
        text=args.text,
        layers=parse_layers(args.layers),
        components=parse_components(args.components),
        context_pre=args.context_pre,
        context_post=args.context_post,
        max_samples=args.max_samples,
        balance=args.balance,
        seed=args.seed,
        batch_size=args.batch_size,
        alpha=args.alpha,
        correction=args.correction,
        cv=args.cv,
        save_activations=args.save_activations,
        detail_layer=args.detail_layer,
        device=args.device,
    )
    result = run_negation(config)
    s = result.summary
    t = s["timing_s"]
    print(
        f"negation {s['model']}: text {s['text_source']} (sha256 {s['text_sha256'][:12]}"
        f"{', FALLBACK sample text' if s['text_fallback'] else ''}), {s['n_tokens']} tokens; "
        f"n = {s['n_affirmation']} affirmation / {s['n_negation']} negation "
        f"(found {s['n_found']['affirmation']} / {s['n_found']['negation']})"
    )
    print(
        f"significance: {s['correction']}, alpha {s['alpha']:g}; columns: % significant, "
        "mean accuracy (all units), mean accuracy (significant, beta > 0)"
    )
    print(table(s))
    for comp, flags in s["fit_flags"].items():
        print(
            f"{comp}: {flags['n_separated']} separated, {flags['n_constant']} constant, "
            f"{flags['n_not_converged']} not converged unit fits (p = NaN)"
        )
    if s["best_unit"]:
        b = s["best_unit"]
        print(
            f"best unit: {b['component']} layer {b['layer']} unit {b['unit']} ({b['group']}), "
            f"accuracy {b['accuracy']:.3f}, beta {b['beta']:.3g}, p {b['pvalue']:.3g}"
        )
    print(
        f"time: forward {t['forward']:.1f} s, fit {t['fit']:.1f} s"
        + (f", cv {t['cv']:.1f} s" if t["cv"] else "")
        + f", total {t['total']:.1f} s; peak RSS {s['peak_rss_mb']:.0f} MB"
    )
    path = result.save(args.out, figures(result))
    print(f"wrote {path}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``negation``."""
    p = sub.add_parser(
        "negation",
        parents=[common],
        help="E1: negation tuning of Q/K/V and MLP units in every layer",
        description="Probe every Q/K/V and MLP unit at negation vs affirmation tokens with a "
        "univariate logistic regression, layer by layer. Text: --text, else the file in "
        "$MECHPROBE_TEXT, else gutenberg:32154 (The Variable Man; falls back to a built-in "
        "sample text, with a warning, when the download fails).",
    )
    p.add_argument(
        "--text",
        default=None,
        help="a path, an http(s) URL or gutenberg:ID (default: $MECHPROBE_TEXT if set, "
        "else gutenberg:32154); downloads are cached",
    )
    p.add_argument("--layers", default="all", help="'all' or a comma list, e.g. 0,3,5")
    p.add_argument("--components", default="qkv,mlp", help="qkv, mlp or qkv,mlp (default)")
    p.add_argument("--context-pre", type=int, default=90, help="tokens before a target (90)")
    p.add_argument("--context-post", type=int, default=10, help="tokens after a target (10)")
    p.add_argument(
        "--max-samples",
        type=_positive_int,
        default=None,
        help="keep the first N targets of each class (text order)",
    )
    p.add_argument("--balance", action="store_true", help="subsample the larger class (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed for --balance and --cv (0)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="windows per forward (32)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    p.add_argument(
        "--correction",
        choices=("bonferroni", "fdr"),
        default="bonferroni",
        help="bonferroni (p < alpha / units per layer, default) or fdr (Benjamini-Hochberg)",
    )
    p.add_argument(
        "--cv", type=int, default=0, help="K-fold stratified cross-validated accuracy (0: off)"
    )
    p.add_argument(
        "--save-activations",
        action="store_true",
        help="also store C_acts [n, n_layers, n_units] float32",
    )
    p.add_argument(
        "--detail-layer",
        type=int,
        default=None,
        help="layer of the beta and volcano figures (default: the middle selected layer)",
    )
    p.set_defaults(func=run)
