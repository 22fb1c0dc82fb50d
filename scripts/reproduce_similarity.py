"""Reproduce the course's E3 sweep: Q/K/V unit similarities at " her" across all layers.

The course's configuration: GPT-2 XL (48 layers, 4800 Q|K|V units per layer), the shipped 54
sentences with the target " her", every layer, cosine similarity without centring plus the
mean-centred (Pearson) variant as the null comparison. GPT-2 XL comes from the HuggingFace hub;
offline, use ``--model smollm2-135m``.

Usage:
    python scripts/reproduce_similarity.py [--model gpt2-xl] [--out mechprobe-out]
"""

from __future__ import annotations

import argparse
import sys

from _course import load_or_fall_back

from mechprobe.cli.similarity import layer_table
from mechprobe.errors import MechprobeError
from mechprobe.experiments.similarity import SimilarityConfig, run_similarity
from mechprobe.plots.similarity import figures


def main(argv: list[str] | None = None) -> int:
    """Run the course configuration and write ``OUT/similarity/``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt2-xl", help="model (default gpt2-xl, the course's)")
    ap.add_argument("--out", default="mechprobe-out", help="output directory")
    ap.add_argument("--device", default=None, help="torch device")
    args = ap.parse_args(argv)
    loaded = load_or_fall_back("reproduce_similarity", args.model, args.device, reference=False)
    if loaded is None:
        return 2
    args.model, model, _ = loaded
    config = SimilarityConfig(model=args.model, target=" her", centre=True, device=args.device)
    try:
        result = run_similarity(config, model=model)
    except MechprobeError as exc:
        print(f"reproduce_similarity: error: {exc}", file=sys.stderr)
        return 2
    print(layer_table(result.summary))
    print(f"wrote {result.save(args.out, figures(result))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
