"""Benchmark: per-unit probes fitted from an activation store on disk vs in memory.

Writes a synthetic store of ``--gb`` GB (float32 ``[window, unit]``, one array, written block by
block with its score-test state, as a collection would), then, each in a fresh process so that
peak memory is each side's own:

  store (from disk)  - `mechprobe.store.fit_store` on every unit, Dask's local scheduler;
  in memory (slice)  - `mechprobe.stats.fit_logistic` on the first ``--slice-units`` units, read
                       from the store into memory first (reading not timed).

Prints time, throughput (ns per window x unit) and peak RSS of both sides and their ratios, checks
that the store's fits of the slice equal the in-memory ones bit for bit, and deletes the store.
Before each side the store's files are dropped from the OS page cache (``posix_fadvise``), so
the store side reads from disk.

Usage:
    python scripts/bench_store.py --gb 8 --windows 65536 --slice-units 2048 --dir /tmp
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_store(url: str, n: int, m: int, block: int, seed: int = 0) -> float:
    """A store of random activations with sparse effects; returns the seconds taken."""
    from mechprobe.store import ActivationStore

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(np.int8)
    effect = np.where(rng.random(m) < 0.2, rng.normal(0, 1.0, m), 0.0).astype(np.float32)
    scale = (10.0 ** rng.uniform(-2, 1.5, m)).astype(np.float32)
    t0 = time.perf_counter()
    store = ActivationStore.create(
        url,
        windows=np.zeros((n, 1), np.int32),
        labels=y,
        positions=np.arange(n),
        position=0,
        layers=[0],
        widths={"mlp": m},
        block=block,
    )
    for b in range(store.n_blocks):
        rows = store.block_rows(b)
        x = rng.standard_normal((rows.stop - rows.start, m), dtype=np.float32)
        x += effect * y[rows, None]
        x *= scale
        store.write_block(b, {"mlp": x[:, None, :]})
    return time.perf_counter() - t0


def evict(url: str) -> None:
    """Drop the store's files from the OS page cache, so that the fit reads them from disk."""
    for f in Path(url).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def child(side: str, url: str, slice_units: int, out: str) -> dict:
    """One side, in this (fresh) process; writes the slice's fits to ``out``."""
    from mechprobe.store import ActivationStore, fit_store

    store = ActivationStore.open(url)
    n, m = store.n_windows, store.widths["mlp"]
    if side == "store":
        t0 = time.perf_counter()
        fit = fit_store(store)["mlp"][0]
        seconds, units = time.perf_counter() - t0, m
        got = {k: v[0, :slice_units] for k, v in fit.items() if k != "fitted"}
    else:
        from mechprobe.stats.probe import fit_layers

        x = store.columns("mlp", 0, 0, slice_units)  # read first, not timed
        y = (store.labels() == 1).astype(np.int8)
        import torch

        t0 = time.perf_counter()
        fit = fit_layers(torch.from_numpy(x)[:, None, :], y, progress=False)
        seconds, units = time.perf_counter() - t0, slice_units
        got = {k: v[0] for k, v in fit.items()}
    np.savez(out, **got)
    return {
        "side": side,
        "seconds": seconds,
        "windows": n,
        "units": units,
        "gb": n * units * 4 / 1e9,
        "ns_per_element": seconds / (n * units) * 1e9,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=8.0, help="store size in GB (1e9 bytes)")
    ap.add_argument("--windows", type=int, default=65536)
    ap.add_argument("--slice-units", type=int, default=2048, help="units fitted in memory")
    ap.add_argument("--block", type=int, default=512, help="windows per block")
    ap.add_argument("--dir", default=None, help="where to put the store (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, url, slice_units, out = args.child
        print(json.dumps(child(side, url, int(slice_units), out)))
        return
    n = args.windows
    m = max(args.slice_units, int(args.gb * 1e9 / (4 * n)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_store.", dir=args.dir))
    url = str(tmp / "store.zarr")
    try:
        print(
            f"writing {n:,} windows x {m:,} units = {n * m * 4 / 1e9:.2f} GB to {url}",
            file=sys.stderr,
            flush=True,
        )
        write_s = write_store(url, n, m, args.block)
        size = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())
        rows = []
        for side in ("store", "memory"):
            evict(url)  # each side starts with the store on disk, not in the page cache
            cmd = [
                sys.executable,
                __file__,
                "--child",
                side,
                url,
                str(args.slice_units),
                str(tmp / f"{side}.npz"),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"bench_store: the {side} side failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  {side}: done", file=sys.stderr, flush=True)
        with np.load(tmp / "store.npz") as a, np.load(tmp / "memory.npz") as b:
            same = all(np.array_equal(a[k], b[k], equal_nan=True) for k in b.files)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"store on disk: {size / 1e9:.2f} GB, written (with score-test state) in {write_s:.1f} s;"
        f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"{'side':<20}{'windows':>9}{'units':>9}{'GB':>8}{'time s':>9}{'ns/elem':>9}"
        f"{'peak RSS MB':>13}"
    )
    names = {"store": "store (from disk)", "memory": "in memory (slice)"}
    for r in rows:
        print(
            f"{names[r['side']]:<20}{r['windows']:>9,}{r['units']:>9,}{r['gb']:>8.2f}"
            f"{r['seconds']:>9.1f}{r['ns_per_element']:>9.2f}{r['peak_mb']:>13.0f}"
        )
    s, mem = rows
    print(
        f"ratio store / memory: {s['ns_per_element'] / mem['ns_per_element']:.2f}x time per "
        f"element, {s['peak_mb'] / mem['peak_mb']:.2f}x peak RSS for "
        f"{s['gb'] / mem['gb']:.1f}x the data"
    )
    print(f"slice fits identical: {same}")
    if not args.keep:
        print(f"store deleted: {not tmp.exists()}")


if __name__ == "__main__":
    main()
