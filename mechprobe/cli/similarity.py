"""``mechprobe similarity``: Q/K/V unit similarities across sentences, layer by layer (E3)."""

from __future__ import annotations

import argparse

from mechprobe.experiments.similarity import (
    BLOCKS,
    DEFAULT_TARGET,
    SimilarityConfig,
    read_sentences,
    run_similarity,
)


def layer_table(summary: dict, blocks: tuple[str, ...] = ("QQ", "KK", "VV", "KV")) -> str:
    """A text table: per layer the std of each block's cosines, target / non-target.

    Example:
        >>> print(layer_table(result.summary))  # doctest: +SKIP
    """
    head = f"{'layer':>5}" + "".join(f"{b + ' std t/nt':>18}" for b in blocks)
    lines = [head]
    for row in summary["per_layer"]:
        cells = "".join(
            f"{row['target'][b]['std']:>9.3f}/{row['nontarget'][b]['std']:<8.3f}" for b in blocks
        )
        lines.append(f"{row['layer']:>5}{cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print a per-layer table, write ``OUT/similarity/``."""
    from mechprobe.plots.similarity import figures

    sentences = tuple(read_sentences(args.sentences)) if args.sentences else None
    config = SimilarityConfig(
        model=args.model,
        sentences=sentences,
        target=args.target,
        layers=None if args.layers.strip().lower() == "all" else args.layers,
        centre=args.centre,
        batch_size=args.batch_size,
        device=args.device,
    )
    result = run_similarity(config)
    s = result.summary
    print(
        f"similarity {s['model']}: target {s['target']!r} ({s['target_position_rule']}), "
        f"{s['n_sentences']} sentences, {len(s['layers'])} layers, "
        f"zero-norm units excluded: {s['zero_norm_units']}"
    )
    print(layer_table(s))
    print(f"depth: {s['finding']}")
    path = result.save(args.out, figures(result))
    print(f"wrote {path} in {s['wall_time_s']:.1f} s")
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``similarity``."""
    p = sub.add_parser(
        "similarity",
        parents=[common],
        help="cosine similarities of Q/K/V units across sentences at a target word, per layer",
    )
    p.add_argument("--sentences", default=None, help="file with one sentence per line")
    p.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"target word (default {DEFAULT_TARGET!r})"
    )
    p.add_argument("--layers", default="all", help="'all' or a list like 0,3,5 (default all)")
    p.add_argument(
        "--centre",
        action="store_true",
        help="also compute the mean-centred (Pearson) variant, blocks " + ", ".join(BLOCKS),
    )
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (32)")
    p.set_defaults(func=run)
