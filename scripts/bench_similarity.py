"""Peak memory of the streaming Q/K/V similarity reduction versus the number of layers.

A synthetic model of GPT-2 XL's shape (25 heads x 64 = 1600 units each for Q, K and V: 4800
units per layer, 54 sentences) feeds random activations, one layer at a time, to
:func:`mechprobe.stats.cosine.stream_similarity`, the function ``mechprobe similarity``
uses. Each layer count runs in a fresh subprocess, which reports

- ``tracemalloc`` peak: the largest Python/numpy heap in use during the reduction;
- ``ru_maxrss`` delta: the process's peak resident set size minus its size just before the call.

The goal is a flat profile: the 48-layer peak about equal to the 6-layer peak.

Usage:
    python scripts/bench_similarity.py                     # 6, 12, 24, 48 layers
    python scripts/bench_similarity.py --layers 6 48 --centre
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc


def child(n_layers: int, n_sentences: int, heads: int, d_head: int, centre: bool) -> dict:
    """Run the reduction once in this process and return its memory and time figures."""
    import numpy as np

    from mechprobe.stats.cosine import stream_similarity
    from mechprobe.units import QKVLayout

    layout = QKVLayout(heads, heads, d_head)
    rng = np.random.default_rng(0)

    def layers():
        for _ in range(n_layers):  # [2 (target, non-target), sentences, units], made lazily
            yield rng.standard_normal((2, n_sentences, layout.n_units), dtype=np.float32)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    out = stream_similarity(layers(), layout.slices(), centre=centre)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out["hist"].shape == (2, 6, n_layers, 100)
    return {
        "n_layers": n_layers,
        "units": layout.n_units,
        "tracemalloc_peak_mb": peak / 2**20,
        "rss_delta_mb": (rss1 - rss0) / 1024,  # ru_maxrss is in KiB on Linux
        "rss_peak_mb": rss1 / 1024,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every layer count in a fresh subprocess and print the table and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 12, 24, 48])
    ap.add_argument("--sentences", type=int, default=54)
    ap.add_argument("--heads", type=int, default=25, help="GPT-2 XL: 25")
    ap.add_argument("--d-head", type=int, default=64, help="GPT-2 XL: 64")
    ap.add_argument("--centre", action="store_true", help="also the mean-centred variant")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        res = child(args.child, args.sentences, args.heads, args.d_head, args.centre)
        print(json.dumps(res))
        return 0

    rows = []
    for n in args.layers:
        cmd = [sys.executable, __file__, "--child", str(n), "--sentences", str(args.sentences)]
        cmd += ["--heads", str(args.heads), "--d-head", str(args.d_head)]
        cmd += ["--centre"] if args.centre else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  ran {n} layers in {r['seconds']:.1f} s", file=sys.stderr)

    units = rows[0]["units"]
    print(
        f"stream_similarity on random activations: {args.sentences} sentences x {units} Q|K|V "
        f"units per layer (GPT-2 XL shape){', with --centre' if args.centre else ''}"
    )
    head = f"{'layers':>6}{'tracemalloc peak MB':>21}{'RSS delta MB':>14}{'RSS peak MB':>13}"
    print(f"{head}{'s':>8}")
    for r in rows:
        print(
            f"{r['n_layers']:>6}{r['tracemalloc_peak_mb']:>21.1f}{r['rss_delta_mb']:>14.1f}"
            f"{r['rss_peak_mb']:>13.1f}{r['seconds']:>8.1f}"
        )
    first, last = rows[0], rows[-1]
    print(
        f"ratio {last['n_layers']}-layer / {first['n_layers']}-layer: tracemalloc peak "
        f"{last['tracemalloc_peak_mb']:.1f} / {first['tracemalloc_peak_mb']:.1f} = "
        f"{last['tracemalloc_peak_mb'] / first['tracemalloc_peak_mb']:.3f}; RSS peak "
        f"{last['rss_peak_mb']:.1f} / {first['rss_peak_mb']:.1f} = "
        f"{last['rss_peak_mb'] / first['rss_peak_mb']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
