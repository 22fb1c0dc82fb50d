"""Benchmark: collecting Q/K/V and MLP units at one position for all layers.

Compares, on the same [batch, pos] token batch, in separate fresh processes (so peak memory is
each mode's own):
  bare     - a plain HuggingFace forward pass with no hooks (the floor; logits included);
  mechprobe- mechprobe.collect_units: TL per-head hooks, one position kept per row, the forward
             ended at that position (``seq - 11``, the negation experiment's target);
  whole    - the same over the whole rows (``truncate=False``);
  course   - the course's approach: HF forward hooks storing whole sequences for every layer;
  cache    - TransformerLens run_with_cache with every hook (caching everything).
Prints one table with median time, ratio to bare, tokens of the batch per second, peak RSS (and its
excess over bare) and the 1-minute load average before and after each mode (the timings are only
comparable when it is low: on a shared machine each busy core costs far more than its share).
Every mode is timed warm (one untimed call first).

Usage:
    python scripts/bench_collect.py --model smollm2-135m --batch 64 --seq 101 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("bare", "mechprobe", "whole", "course", "cache")


def _child(mode: str, model_name: str, batch: int, seq: int, repeats: int) -> dict:
    import torch

    from mechprobe.activations import collect_units
    from mechprobe.models import load_model, load_reference
    from mechprobe.models.registry import model_shape
    from mechprobe.reference.arch import hf_arch

    torch.manual_seed(0)
    if mode in ("bare", "course"):
        model, _ = load_reference(model_name, device="cpu")
    else:
        model = load_model(model_name, device="cpu")
    shape = model_shape(model)
    tokens = torch.randint(0, shape.d_vocab, (batch, seq))
    pos = seq - 11  # the negation experiment's target index (pre=90 for seq=101)
    layers = list(range(shape.n_layers))

    def bare() -> int:
        with torch.inference_mode():
            model(tokens)
        return 0

    def mechprobe(truncate: bool = True) -> int:
        units = collect_units(
            model, tokens, pos, layers, batch_size=batch, truncate=truncate, progress=False
        )
        return sum(u.numel() * u.element_size() for u in units.values())

    def whole() -> int:
        return mechprobe(truncate=False)

    def course() -> int:
        arch, store, handles = hf_arch(model), [], []
        for L in layers:
            for module in [*arch.qkv_modules(model, L).values(), arch.module(model, "mlp_in", L)]:
                handles.append(
                    module.register_forward_hook(lambda m, a, o: store.append(o.detach().clone()))
                )
        try:
            with torch.inference_mode():
                model(tokens)
        finally:
            for h in handles:
                h.remove()
        return sum(t.numel() * t.element_size() for t in store)

    def cache() -> int:
        with torch.inference_mode():
            _, c = model.run_with_cache(tokens)
        return sum(t.numel() * t.element_size() for t in c.values())

    fn = {"bare": bare, "mechprobe": mechprobe, "whole": whole, "course": course, "cache": cache}
    fn = fn[mode]
    fn()  # untimed warm-up: first-touch allocations and one-off dispatch, on every side
    load_before = os.getloadavg()[0]
    times, kept = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        kept = fn()
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "median_s": statistics.median(times),
        "peak_mb": peak_mb,
        "kept_mb": kept / 2**20,
        "load": (load_before, os.getloadavg()[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=101)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated; bare comes first")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.model, args.batch, args.seq, args.repeats)))
        return
    modes = ["bare", *(m for m in args.modes.split(",") if m in MODES and m != "bare")]
    rows = []
    for mode in modes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--repeats",
            str(args.repeats),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"  {mode}: done", file=sys.stderr)
    bare = rows[0]
    n_tok = args.batch * args.seq
    print(f"model {args.model}, batch {args.batch} x {args.seq} tokens, median of {args.repeats}")
    print(
        f"{'mode':<10}{'time s':>9}{'x bare':>8}{'tok/s':>8}{'peak RSS MB':>13}{'+ over bare':>13}"
        f"{'kept MB':>10}{'load before/after':>19}"
    )
    for r in rows:
        print(
            f"{r['mode']:<10}{r['median_s']:>9.2f}{r['median_s'] / bare['median_s']:>8.2f}"
            f"{n_tok / r['median_s']:>8.0f}{r['peak_mb']:>13.0f}"
            f"{r['peak_mb'] - bare['peak_mb']:>13.0f}{r['kept_mb']:>10.1f}"
            f"{r['load'][0]:>12.2f} / {r['load'][1]:.2f}"
        )


if __name__ == "__main__":
    main()
