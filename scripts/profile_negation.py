"""Profile the negation step's collection: where the time goes, FLOP/s, cut vs whole rows.

Loads the model, takes the negation preset's windows from the text (as ``mechprobe negation``
does), then:
  timing  - ``collect_units`` (Q/K/V and MLP units of every layer at the target) with the
            forward ended at the target (``truncate=True``, the default) and over the whole
            windows (``truncate=False``): best and median of ``--repeats`` runs, tokens/s,
            GFLOP/s and the share of the peak, with the load average beside every figure;
  diff    - the largest difference between the two paths' activations (float32 rounding);
  floor   - the same GEMMs alone (every block matrix at ``batch x fed tokens`` rows, warm, best
            of 10): the time a pass cannot go below with this BLAS, and its GFLOP/s;
  profile - ``torch.profiler`` on ``--profile-rows`` windows: time per kind of operator (the
            projections' GEMMs, attention's batched matmuls and softmax, the norms, rotary and
            element-wise kernels, the hooks' gathers and copies) and the time outside ATen
            (Python, module and hook dispatch). The profiler itself adds 5-20 %.

FLOP per token: 2 x the parameters of every block's matrices (the embedding is a lookup, the
unembedding never runs), plus attention's two matmuls over the ``n`` keys that eager attention
computes (``4 n d`` per layer and token: the full square, masked or not). ``--peak`` is the
machine's nominal FP32 peak in GFLOP/s: cores x clock x FLOP per cycle (default 294: the issue's 2
cores x 2.3 GHz x 64, which assumes full-width AVX-512 FMA units); the script also times one large
square matmul, the most this BLAS attains here, as the practical peak.

Usage:
    python scripts/profile_negation.py --text ../shared/data/pg32154.txt --repeats 3
    python scripts/profile_negation.py --text ../shared/data/pg32154.txt --profile-rows 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from typing import Any

import torch

#: Operator kinds of the profile (first match wins; the rest is "other").
KINDS = (
    ("GEMM (projections)", ("aten::mm", "aten::addmm")),
    ("attention bmm", ("aten::bmm",)),
    ("softmax", ("aten::_softmax",)),
    ("element-wise", ("aten::mul", "aten::add", "aten::silu", "aten::gelu", "aten::neg")),
    ("norms (pow/mean/rsqrt/div)", ("aten::pow", "aten::sum", "aten::sqrt", "aten::div")),
    ("cat/copy/index (rotary, hooks)", ("aten::cat", "aten::copy_", "aten::index")),
)


def load_avg() -> str:
    """The 1/5/15-minute load averages as a short string."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def flop_per_token(model: Any, n_keys: int) -> tuple[float, float]:
    """``(matrix FLOP, attention FLOP)`` per token: 2 x block matrix parameters; 4 n d x layers."""
    from mechprobe.models.registry import model_shape

    shape = model_shape(model)
    blocks = model.original_model.model.layers if hasattr(model, "original_model") else []
    matrix = sum(p.numel() for b in blocks for p in b.parameters() if p.ndim == 2)
    d_attn = shape.n_heads * shape.d_head
    return 2.0 * matrix, 4.0 * n_keys * d_attn * shape.n_layers


def gemm_floor(model: Any, rows: int) -> tuple[float, float]:
    """``(seconds, GFLOP/s)`` of one pass's block GEMMs alone, ``rows`` activation rows each."""
    blocks = model.original_model.model.layers
    weights = [p for b in blocks for p in b.parameters() if p.ndim == 2]
    total_t = total_f = 0.0
    done: dict[tuple[int, ...], float] = {}
    with torch.inference_mode():
        for w in weights:
            if tuple(w.shape) not in done:
                x = torch.randn(rows, w.shape[1])
                for _ in range(2):
                    torch.nn.functional.linear(x, w)
                best = float("inf")
                for _ in range(10):
                    t0 = time.perf_counter()
                    torch.nn.functional.linear(x, w)
                    best = min(best, time.perf_counter() - t0)
                done[tuple(w.shape)] = best
            total_t += done[tuple(w.shape)]
            total_f += 2.0 * rows * w.numel()
    return total_t, total_f / total_t / 1e9


def timed(fn: Any, repeats: int) -> tuple[list[float], list[str], Any]:
    """Run ``fn`` ``repeats`` times; wall times, load averages after each, the last result."""
    times, loads, res = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        loads.append(load_avg())
    return times, loads, res


def profile(model: Any, windows: torch.Tensor, pos: int, layers: list[int]) -> None:
    """Print the time per operator kind of one ``collect_units`` call (self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mechprobe.activations import collect_units

    collect_units(model, windows, pos, layers, batch_size=len(windows), progress=False)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        collect_units(model, windows, pos, layers, batch_size=len(windows), progress=False)
        wall = time.perf_counter() - t0
    per_kind: dict[str, float] = defaultdict(float)
    per_shape: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages(group_by_input_shape=True):
        kind = next((k for k, ops in KINDS if ev.key.startswith(ops)), "other ATen")
        per_kind[kind] += ev.self_cpu_time_total / 1e6
        per_shape[f"{ev.key} {ev.input_shapes}"] += ev.self_cpu_time_total / 1e6
    in_aten = sum(per_kind.values())
    print(f"\nprofile: {len(windows)} windows, wall {wall:.2f} s (profiler on), {load_avg()}")
    for kind, t in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<32}{t:8.2f} s {100 * t / wall:6.1f} %")
    print(f"  {'outside ATen (Python, hooks)':<32}{wall - in_aten:8.2f} s"
          f" {100 * (wall - in_aten) / wall:6.1f} %")  # fmt: skip
    print("  largest operators by input shapes:")
    for key, t in sorted(per_shape.items(), key=lambda kv: -kv[1])[:16]:
        print(f"    {t:7.2f} s  {key}")


def square_gemm(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` float32 ``n x n`` matmuls: the practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    """Time, compare and profile the negation step's collection."""
    from mechprobe.activations import collect_units
    from mechprobe.experiments.negation import NegationConfig
    from mechprobe.experiments.probe_samples import take_samples
    from mechprobe.models import load_model
    from mechprobe.models.registry import model_shape

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default="../shared/data/pg32154.txt")
    ap.add_argument("--rows", type=int, default=None, help="first N windows (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--peak", type=float, default=294.0, help="nominal FP32 peak, GFLOP/s")
    ap.add_argument("--profile-rows", type=int, default=0, help="profile N windows (0: no)")
    ap.add_argument("--no-diff", action="store_true", help="skip the whole-row comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu")
    config = NegationConfig(text=args.text)
    windows = torch.as_tensor(take_samples(config, model.tokenizer).windows)[: args.rows]
    pos, layers = config.context_pre, list(range(model_shape(model).n_layers))
    n, seq = windows.shape
    matrix, attn_full = flop_per_token(model, seq)
    _, attn_cut = flop_per_token(model, pos + 1)
    print(
        f"{args.model}: {n} windows x {seq} tokens, target at {pos}, {len(layers)} layers, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(
        f"FLOP a token: matrices {matrix / 1e6:.1f} M, attention {attn_full / 1e6:.1f} M at "
        f"{seq} keys ({attn_cut / 1e6:.1f} M at {pos + 1}); peak {args.peak:.0f} GFLOP/s"
    )

    def run(truncate: bool) -> dict[str, torch.Tensor]:
        return collect_units(
            model, windows, pos, layers, batch_size=args.batch_size, truncate=truncate,
            progress=False,
        )  # fmt: skip

    run(True)  # warm-up: first-touch allocations, one-off dispatch
    results = {}
    for truncate in (True, False) if not args.no_diff else (True,):
        times, loads, results[truncate] = timed(lambda t=truncate: run(t), args.repeats)
        fed = pos + 1 if truncate else seq
        for t, la in zip(times, loads, strict=True):
            print(f"  {'cut' if truncate else 'whole'} run: {t:7.2f} s  {la}")
        best, med = min(times), statistics.median(times)
        win_tps = n * seq / best  # tokens of the windows per second, as the issue counts
        fed_tps = n * fed / best  # tokens actually fed
        gflops = fed_tps * (matrix + (attn_cut if truncate else attn_full)) / 1e9
        if truncate:
            cut_gflops = gflops
        print(
            f"{'cut at target' if truncate else 'whole windows':<15} best {best:6.2f} s, "
            f"median {med:6.2f} s | {win_tps:5.0f} window tok/s = {win_tps * matrix / 1e9:5.1f} "
            f"GFLOP/s nominal | {fed_tps:5.0f} fed tok/s, {gflops:5.1f} GFLOP/s executed = "
            f"{100 * gflops / args.peak:4.1f} % of peak"
        )
    if not args.no_diff:
        for fam in results[True]:
            a, b = results[True][fam], results[False][fam]
            d = (a - b).abs()
            rel = d.max() / b.abs().max()
            print(f"max |cut - whole| {fam}: {d.max():.3g} (relative to max |act|: {rel:.3g})")
    floor_s, floor_gf = gemm_floor(model, args.batch_size * (pos + 1))
    n_batches = -(-n // args.batch_size)
    print(
        f"GEMM floor (the block matrices alone, {args.batch_size} x {pos + 1} rows): "
        f"{floor_s:.2f} s a batch, {n_batches * floor_s:.2f} s for {n} windows, {floor_gf:.1f} "
        f"GFLOP/s = {100 * floor_gf / args.peak:.1f} % of peak; {load_avg()}"
    )
    square = square_gemm()
    print(
        f"square matmul (4096 x 4096, best of 5): {square:.1f} GFLOP/s = "
        f"{100 * square / args.peak:.1f} % of the nominal peak; the cut run is "
        f"{100 * cut_gflops / square:.1f} % of it; {load_avg()}"
    )
    if args.profile_rows:
        profile(model, windows[: args.profile_rows], pos, layers)


if __name__ == "__main__":
    main()
