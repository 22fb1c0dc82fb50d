"""Benchmark: a full resid_pre x position patching sweep, mechprobe against TransformerLens.

Both sweep every layer x position of ``N`` IOI pairs of one template (one token length, so that
TransformerLens's ``get_act_patch_resid_pre`` can run them as one batch) in the same process on
the same loaded model, and both times include caching the clean run:

  tl        - ``transformer_lens.patching.get_act_patch_resid_pre(..., reduce="none")``: one full
              forward of every pair per cell;
  mechprobe - `mechprobe.experiments.patch_core.PatchRunner`: many cells x pairs per forward,
              started at the patched block from the cached corrupt residual, only the last
              position unembedded.

Prints both timings, their ratio, the largest |difference| of the values and the load average
(``os.getloadavg``) before and after each: on a shared machine the timings mean little unless
the load is low, so report it with them.

Usage:
    python scripts/bench_patch.py --model smollm2-135m --pairs 100
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ioi_pairs(n: int) -> list[dict[str, str]]:
    """``n`` IOI pairs of the 'went' template (every ordered pair of names, in order)."""
    from scripts.make_pairs import IOI_TEMPLATES, NAMES

    t = IOI_TEMPLATES["went"]
    out = []
    for a, b in itertools.islice(itertools.permutations(NAMES, 2), n):
        out.append(
            {
                "clean": t.format(A=a, B=b, place="store", obj="drink"),
                "corrupt": t.replace("{B} gave", "{A} gave").format(
                    A=a, B=b, place="store", obj="drink"
                ),
                "answer": f" {a}",
                "wrong": f" {b}",
            }
        )
    return out


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    """Run both sweeps and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformer_lens import patching

    from mechprobe.corpus.pairs import tokenise_pairs
    from mechprobe.experiments.patch_core import PatchRunner, logit_diff
    from mechprobe.models import load_model

    torch.set_grad_enabled(False)
    model = load_model(args.model, device="cpu")
    tp = tokenise_pairs(model, ioi_pairs(args.pairs))
    n_layers, n_pos = int(model.cfg.n_layers), len(tp.clean[0])
    print(
        f"{args.model}: {len(tp.clean)} pairs x {n_pos} positions x {n_layers} layers, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )

    before = load()
    t0 = time.perf_counter()
    runner = PatchRunner(model, tp, batch_tokens=args.batch_tokens)
    mine = runner.values("resid_pre")
    t_mine = time.perf_counter() - t0
    print(f"mechprobe {t_mine:9.1f} s  load {before} -> {load()}  (fast path: {runner.fast})")

    ans, wrong = torch.as_tensor(tp.answer), torch.as_tensor(tp.wrong)
    before = load()
    t0 = time.perf_counter()
    _, cache = model.run_with_cache(torch.tensor(tp.clean))
    res = patching.get_act_patch_resid_pre(
        model,
        torch.tensor(tp.corrupt),
        cache,
        lambda logits: logit_diff(logits[:, -1], ans, wrong),
        reduce="none",
    )
    t_tl = time.perf_counter() - t0
    print(f"tl        {t_tl:9.1f} s  load {before} -> {load()}")
    diff = float(np.abs(res.values.double().numpy() - mine).max())
    print(f"ratio tl/mechprobe {t_tl / t_mine:.2f}x; max |difference| {diff:.3g}")


if __name__ == "__main__":
    main()
