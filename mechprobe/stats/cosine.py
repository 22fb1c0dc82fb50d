"""Streaming statistics of unit-by-unit cosine similarities, block by block.

For one layer, the flat Q|K|V units at one position form an ``[n_sentences, n_units]`` matrix.
The cosine similarity between units across sentences (each unit's column normalised; with
``centre`` mean-centred first, i.e. Pearson) is histogrammed per block QQ, KK, VV (pairs
``i < j``) and QK, QV, KV (all cross pairs) on ``linspace(-1, 1, 101)`` (``np.histogram``
semantics, last bin closed; cosines clipped to ``[-1, 1]``), with the mean, standard deviation and
mean absolute value of each block. The unit x unit matrix is never materialised: it is computed
one row block at a time and reduced at once, so memory is ``O(block_rows * units)``. A unit whose
column has zero norm has an undefined cosine: its pairs are left out and counted.

Example:
    >>> slices = {"q": slice(0, 8), "k": slice(8, 16), "v": slice(16, 24)}
    >>> stats = cosine_block_stats(np.random.default_rng(0).normal(size=(10, 24)), slices)
    >>> stats["hist"].shape, stats["n_pairs"].tolist()
    ((6, 100), [28, 28, 28, 64, 64, 64])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import einops
import numpy as np
from jaxtyping import Float

from mechprobe.errors import MechprobeError

COMPONENTS = ("q", "k", "v")
BLOCKS = ("QQ", "KK", "VV", "QK", "QV", "KV")
POSITIONS = ("target", "nontarget")
N_BINS = 100
HIST_EDGES = np.linspace(-1.0, 1.0, N_BINS + 1)
_STAT_KEYS = ("hist", "n_pairs", "cos_mean", "cos_std", "cos_mean_abs", "n_zero_units")


class _Moments:
    """Running count, mean, M2 (Chan et al. parallel combination) and sum of |x|."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.abs_sum = 0, 0.0, 0.0, 0.0

    def add(self, vals: np.ndarray) -> None:
        nb = vals.size
        if nb == 0:
            return
        mb = float(vals.mean())
        m2b = float(np.square(vals - mb).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.abs_sum += float(np.abs(vals).sum())

    def result(self) -> tuple[int, float, float, float]:
        if self.n == 0:
            return 0, float("nan"), float("nan"), float("nan")
        return self.n, self.mean, float(np.sqrt(self.m2 / self.n)), self.abs_sum / self.n


def _normalised_columns(
    x: Float[np.ndarray, "batch units"], centre: bool
) -> tuple[Float[np.ndarray, "batch units"], np.ndarray]:
    """Unit-norm columns in float64 and the mask of valid (non-zero-norm) units."""
    x = np.asarray(x, dtype=np.float64)
    if centre:
        constant = x.max(axis=0) == x.min(axis=0)
        x = x - x.mean(axis=0, keepdims=True)
        x[:, constant] = 0.0  # exact zeros: rounding in the mean must not leave noise
    norms = np.sqrt(einops.einsum(x, x, "batch units, batch units -> units"))
    valid = norms > 0
    xn = np.zeros_like(x)
    xn[:, valid] = x[:, valid] / norms[valid]
    return xn, valid


def cosine_block_stats(
    x: Float[np.ndarray, "batch units"],
    slices: Mapping[str, slice],
    *,
    centre: bool = False,
    block_rows: int = 256,
) -> dict[str, np.ndarray | np.int64]:
    """Histograms and moments of unit x unit cosines for one layer, block by block.

    The cosine matrix is computed ``block_rows`` rows at a time, and only its upper part (the
    columns from the block's first row on), so memory is ``O(block_rows * units)``.

    Args:
        x: ``[n_sentences, n_units]`` flat Q|K|V units of one layer at one position.
        slices: The columns of ``q``, ``k`` and ``v`` among the units.
        centre: Mean-centre each unit's column first (Pearson correlation).
        block_rows: Rows of the cosine matrix per block.

    Returns:
        ``hist`` ``[6, 100]`` int64 counts (blocks `BLOCKS`), ``n_pairs``, ``cos_mean``,
        ``cos_std`` (``ddof=0``) and ``cos_mean_abs`` ``[6]``, and ``n_zero_units`` (scalar):
        units left out because their column has zero norm.

    Example:
        >>> slices = {"q": slice(0, 64), "k": slice(64, 128), "v": slice(128, 192)}
        >>> stats = cosine_block_stats(np.random.randn(54, 192), slices)
        >>> stats["hist"].shape, int(stats["n_pairs"][0])
        ((6, 100), 2016)
    """
    n_units = sum(s.stop - s.start for s in slices.values())
    if x.ndim != 2 or x.shape[1] != n_units:
        raise ValueError(f"x must be [n_sentences, {n_units}], got {x.shape}")
    block_rows = max(1, int(block_rows))
    xn, valid = _normalised_columns(x, centre)
    hist = np.zeros((len(BLOCKS), N_BINS), dtype=np.int64)
    moments = [_Moments() for _ in BLOCKS]
    for ci, c in enumerate(COMPONENTS):
        sl = slices[c]
        for r0 in range(sl.start, sl.stop, block_rows):
            r1 = min(r0 + block_rows, sl.stop)
            # Rows r0..r1 against every column from r0 on: the upper part of the matrix.
            cos = einops.einsum(xn[:, r0:r1], xn[:, r0:], "batch rows, batch cols -> rows cols")
            np.clip(cos, -1.0, 1.0, out=cos)
            row_ok = valid[r0:r1]
            for cj in range(ci, len(COMPONENTS)):
                cs = slices[COMPONENTS[cj]]
                c0 = max(cs.start, r0)  # within a component, columns before r0 are all j < i
                block = cos[:, c0 - r0 : cs.stop - r0]
                keep = row_ok[:, None] & valid[None, c0 : cs.stop]
                if cj == ci:  # within-component block: strict upper triangle i < j
                    keep &= np.arange(c0, cs.stop)[None, :] > np.arange(r0, r1)[:, None]
                vals = block[keep]
                b = BLOCKS.index(COMPONENTS[ci].upper() + COMPONENTS[cj].upper())
                hist[b] += np.histogram(vals, bins=N_BINS, range=(-1.0, 1.0))[0]
                moments[b].add(vals)
    res = [m.result() for m in moments]
    return {
        "hist": hist,
        "n_pairs": np.array([r[0] for r in res], dtype=np.int64),
        "cos_mean": np.array([r[1] for r in res]),
        "cos_std": np.array([r[2] for r in res]),
        "cos_mean_abs": np.array([r[3] for r in res]),
        "n_zero_units": np.int64((~valid).sum()),
    }


def component_moments(
    x: Float[np.ndarray, "batch units"], slices: Mapping[str, slice]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit variance (``ddof=0``) and mean across sentences, averaged within Q, K, V.

    Example:
        >>> slices = {"q": slice(0, 64), "k": slice(64, 128), "v": slice(128, 192)}
        >>> var, mean = component_moments(np.random.randn(54, 192), slices)
        >>> var.shape
        (3,)
    """
    x = np.asarray(x, dtype=np.float64)
    var = x.var(axis=0, ddof=0)
    mean = x.mean(axis=0)
    sl = [slices[c] for c in COMPONENTS]
    return np.array([var[s].mean() for s in sl]), np.array([mean[s].mean() for s in sl])


def stream_similarity(
    layer_units: Iterable[Float[np.ndarray, "position batch units"]],
    slices: Mapping[str, slice],
    *,
    centre: bool = False,
    block_rows: int = 256,
) -> dict[str, np.ndarray]:
    """Reduce a per-layer stream of ``[2, n_sentences, units]`` (target, non-target) arrays.

    Only per-layer summaries are kept (histograms, moments), so memory is that of one layer's
    arrays plus one row block of the cosine matrix, whatever the number of layers.

    Args:
        layer_units: One array per layer: position 0 the target, 1 the non-target.
        slices: The columns of ``q``, ``k`` and ``v`` among the units.
        centre: Also compute the mean-centred (Pearson) variant (keys with ``_centred``).
        block_rows: Rows of the cosine matrix per block.

    Returns:
        ``variance``, ``mean`` ``[2, n_layers, 3]``; ``hist`` ``[2, 6, n_layers, 100]``;
        ``n_pairs``, ``cos_mean``, ``cos_std``, ``cos_mean_abs`` ``[2, 6, n_layers]``;
        ``n_zero_units`` ``[2, n_layers]``; the same with ``_centred`` when ``centre``.

    Example:
        >>> slices = {"q": slice(0, 64), "k": slice(64, 128), "v": slice(128, 192)}
        >>> layers = (np.random.randn(2, 54, 192) for _ in range(3))
        >>> stream_similarity(layers, slices)["hist"].shape
        (2, 6, 3, 100)
    """
    variants = [("", False)] + ([("_centred", True)] if centre else [])
    per_layer: dict[str, list[Any]] = {"variance": [], "mean": []}
    for suffix, _ in variants:
        for k in _STAT_KEYS:
            per_layer[k + suffix] = []
    for xs in layer_units:
        if len(xs) != len(POSITIONS):
            raise ValueError(f"each layer needs {len(POSITIONS)} arrays (target, non-target)")
        moments = [component_moments(x, slices) for x in xs]
        per_layer["variance"].append(np.stack([m[0] for m in moments]))
        per_layer["mean"].append(np.stack([m[1] for m in moments]))
        for suffix, c in variants:
            stats = [cosine_block_stats(x, slices, centre=c, block_rows=block_rows) for x in xs]
            for k in _STAT_KEYS:
                per_layer[k + suffix].append(np.stack([s[k] for s in stats]))
    if not per_layer["variance"]:
        raise MechprobeError("no layers to analyse")
    # Stack layers on axis 1 (after position): [position, layer, ...] -> block axis first.
    out = {k: np.stack(v, axis=1) for k, v in per_layer.items()}  # [position, layer, ...]
    for suffix, _ in variants:
        for k in ("hist", "n_pairs", "cos_mean", "cos_std", "cos_mean_abs"):
            out[k + suffix] = np.moveaxis(out[k + suffix], 2, 1)  # [position, block, layer, ...]
    return out


def depth_profile(
    n_pairs: Float[np.ndarray, "block layer"],
    cos_mean_abs: Float[np.ndarray, "block layer"],
    hist: Float[np.ndarray, "block layer bins"],
) -> tuple[Float[np.ndarray, " layer"], Float[np.ndarray, " layer"]]:
    """Per layer: mean ``|cos|`` pooled over blocks (by pairs) and the share of ``|cos| > 0.9``.

    Example:
        >>> hist = np.zeros((6, 1, N_BINS)); hist[:, 0, -1] = 1
        >>> mean_abs, far = depth_profile(np.ones((6, 1)), np.full((6, 1), 0.99), hist)
        >>> mean_abs.round(2).tolist(), far.tolist()
        ([0.99], [1.0])
    """
    n_pairs = np.asarray(n_pairs, dtype=np.float64)
    weights = n_pairs / np.maximum(n_pairs.sum(axis=0, keepdims=True), 1)
    mean_abs = np.nansum(cos_mean_abs * weights, axis=0)
    pooled = hist.sum(axis=0)  # [layer, bin]
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    far = pooled[:, np.abs(centres) > 0.9].sum(axis=1) / np.maximum(pooled.sum(axis=1), 1)
    return mean_abs, far
