"""Benchmark: the main job (``mechprobe all``) at an earlier commit and now, one after the other.

Checks the earlier commit out into a temporary git worktree, runs ``mechprobe all`` there and then
in this tree (the same model, text, steps and machine, each warm: the model is converted once
before either is timed), and prints one table: wall time, the 1-minute load average before and
after each run, every step's ``wall_s`` and the negation step's ``timing_s``, then the ratio.
The timings only compare when the load is low: on a shared machine a busy core costs far more
than its share.

Usage:
    python scripts/bench_main_job.py --before a19234f --model smollm2-135m \\
        --text ../shared/data/pg32154.txt [--steps crosscheck,negation,heads,similarity,replace]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(tree: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """``mechprobe all`` with ``tree``'s code; its wall time, load and per-step timings."""
    cmd = [sys.executable, "-m", "mechprobe", "all", "--model", args.model, "--out", str(out)]
    cmd += extra
    # the runs' cwd is their tree: a relative --text means the caller's directory
    cmd += ["--text", str(Path(args.text).resolve())] if args.text else []
    cmd += ["--steps", args.steps] if args.steps else []
    cmd += ["--no-png"] if args.no_png else []
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    steps, timing = {}, {}
    for manifest in sorted(out.glob("*/manifest.json")):
        steps[manifest.parent.name] = json.loads(manifest.read_text())["wall_s"]
    summary = out / "negation" / "summary.json"
    if summary.is_file():
        timing = json.loads(summary.read_text()).get("timing_s", {})
    return {
        "wall": wall,
        "load": (load0, os.getloadavg()[0]),
        "steps": steps,
        "timing": timing,
    }


def _row(name: str, r: dict) -> str:
    steps = ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
    t = r["timing"]
    neg = " / ".join(f"{k} {t[k]:.2f}" for k in ("forward", "fit", "best_unit") if k in t)
    return (
        f"{name:<8} {r['wall']:7.1f} s   load {r['load'][0]:.2f} -> {r['load'][1]:.2f}\n"
        f"         steps: {steps}\n         negation: {neg}"
    )


def main() -> None:
    """Parse the arguments, run both sides, print the table.

    Example:
        >>> main()  # doctest: +SKIP
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default="a19234f", help="the earlier commit (default a19234f)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "pg32154.txt"))
    p.add_argument("--steps", default="", help="comma-separated steps (default: all's own)")
    p.add_argument("--no-png", action="store_true", help="skip PNG export on both sides")
    p.add_argument(
        "--after-args",
        default="",
        help="further options for the working tree's run only, e.g. '--no-random-model'",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-main-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            warm = [sys.executable, "-m", "mechprobe", "crosscheck", "--model", args.model]
            subprocess.run(  # converts the model if needed and warms the file cache, untimed
                [*warm, "--no-png", "--out", str(Path(tmp) / "warm")], cwd=ROOT, check=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            results = {
                "before": _run(before, Path(tmp) / "out-before", args, []),
                "after": _run(ROOT, Path(tmp) / "out-after", args, args.after_args.split()),
            }
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                check=False,
            )
    print(f"mechprobe all --model {args.model} ({args.steps or 'default steps'})")
    print(
        f"before = {args.before}, after = the working tree {args.after_args}; {os.cpu_count()} CPUs"
    )
    for name, r in results.items():
        print(_row(name, r))
    print(f"ratio before/after: {results['before']['wall'] / results['after']['wall']:.2f}x")


if __name__ == "__main__":
    main()
