"""Attention-score helpers: per-head statistics, raw and scaled scores, masked softmax, KDEs.

Pure functions on per-head tensors ``[pos, head, d_head]`` of one text (TransformerLens's
``hook_q``/``hook_k`` layout without the batch axis).

Example:
    >>> q, k = torch.randn(6, 4, 16), torch.randn(6, 2, 16)
    >>> raw_scores(q, k).shape  # [head, kv_head, pos]: last query vs keys 1..n-2
    torch.Size([4, 2, 4])
    >>> masked_softmax(scaled_scores(q, expand_kv(k, 4)), causal_mask(6)).sum(-1).allclose(
    ...     torch.ones(4, 6))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import einops
import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.stats import gaussian_kde
from torch import Tensor

from mechprobe.errors import MechprobeError


def head_stats(
    x: Float[Tensor, "pos head d_head"],
) -> tuple[Float[Tensor, " head"], Float[Tensor, " head"]]:
    """Per-head mean and std (``ddof=1``) over tokens ``1:`` and all ``d_head`` dims.

    Example:
        >>> mean, std = head_stats(torch.randn(10, 4, 16))
        >>> mean.shape, std.shape
        (torch.Size([4]), torch.Size([4]))
    """
    rest = einops.rearrange(x[1:].double(), "pos head d_head -> head (pos d_head)")
    return rest.mean(dim=-1), rest.std(dim=-1, correction=1)


def expand_kv(
    k: Float[Tensor, "pos kv_head d_head"], n_heads: int
) -> Float[Tensor, "pos head d_head"]:
    """Repeat each key/value head for the query heads that use it (identity without GQA).

    Query head ``h`` gets key/value head ``h // (n_heads // n_kv_heads)``, as
    `kv_head_of`.

    Example:
        >>> expand_kv(torch.zeros(5, 3, 64), 9).shape
        torch.Size([5, 9, 64])
    """
    group = n_heads // k.shape[1]
    return einops.repeat(k, "pos kv_head d_head -> pos (kv_head group) d_head", group=group)


def raw_scores(
    q: Float[Tensor, "pos head d_head"], k: Float[Tensor, "pos kv_head d_head"]
) -> Float[Tensor, "head kv_head pos"]:
    """The course's raw scores: last query of each head against every key head's tokens 1..n-2.

    Unscaled and unmasked; the ``pos`` axis of the result is tokens ``1 .. n-2``.

    Example:
        >>> raw_scores(torch.randn(6, 4, 16), torch.randn(6, 4, 16)).shape
        torch.Size([4, 4, 4])
    """
    return einops.einsum(
        q[-1].double(), k[1:-1].double(), "head d_head, pos kv_head d_head -> head kv_head pos"
    )


def kv_head_of(n_heads: int, n_kv_heads: int) -> np.ndarray:
    """The key/value head each query head attends with: ``h // (n_heads // n_kv_heads)``.

    Example:
        >>> kv_head_of(9, 3).tolist()
        [0, 0, 0, 1, 1, 1, 2, 2, 2]
    """
    return np.arange(n_heads) // (n_heads // n_kv_heads)


def same_head_mask(n_heads: int, n_kv_heads: int) -> Bool[np.ndarray, "head kv_head"]:
    """``mask[h, h']``: whether key/value head ``h'`` is the one query head ``h`` uses.

    Example:
        >>> same_head_mask(9, 3).sum(axis=1)
        array([1, 1, 1, 1, 1, 1, 1, 1, 1])
    """
    return kv_head_of(n_heads, n_kv_heads)[:, None] == np.arange(n_kv_heads)[None, :]


def split_same_diff(
    raw: Float[np.ndarray, "head kv_head pos"],
) -> tuple[np.ndarray, np.ndarray]:
    """Pool raw scores into same-head and different-head pairs (1-D).

    ``same`` is head-major then token; ``diff`` is query head, then the other key/value heads
    ascending, then token.

    Example:
        >>> same, diff = split_same_diff(np.zeros((4, 4, 5)))
        >>> same.shape, diff.shape
        ((20,), (60,))
    """
    mask = same_head_mask(raw.shape[0], raw.shape[1])
    return raw[mask].reshape(-1), raw[~mask].reshape(-1)


def causal_mask(n_pos: int) -> Bool[Tensor, "q_pos k_pos"]:
    """True where a query may attend to a key (key position <= query position).

    Example:
        >>> causal_mask(3).sum().item()
        6
    """
    return torch.tril(torch.ones(n_pos, n_pos, dtype=torch.bool))


def scaled_scores(
    q: Float[Tensor, "pos head d_head"], k: Float[Tensor, "pos head d_head"]
) -> Float[Tensor, "head q_pos k_pos"]:
    """``q k^T / sqrt(d_head)`` per head, unmasked, in the activations' dtype.

    Example:
        >>> scaled_scores(torch.randn(5, 4, 16), torch.randn(5, 4, 16)).shape
        torch.Size([4, 5, 5])
    """
    scores = einops.einsum(q, k, "q_pos head d_head, k_pos head d_head -> head q_pos k_pos")
    return scores / math.sqrt(q.shape[-1])


def masked_softmax(
    scores: Float[Tensor, "head q_pos k_pos"], mask: Bool[Tensor, "q_pos k_pos"]
) -> Float[Tensor, "head q_pos k_pos"]:
    """Softmax over keys with disallowed entries set to ``-inf``.

    Example:
        >>> masked_softmax(torch.zeros(1, 2, 2), causal_mask(2))[0, 0].tolist()
        [1.0, 0.0]
    """
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def kde_curve(
    values: np.ndarray, grid: np.ndarray, bandwidth: float | str = "scott"
) -> tuple[np.ndarray, float]:
    """A max-normalised ``gaussian_kde`` of ``values`` on ``grid`` and its bandwidth factor.

    Degenerate data (fewer than two values, or all equal) has no KDE: NaNs and NaN factor. A
    bandwidth so small (or large) that the density on the grid is not finite and positive is a
    `MechprobeError`.

    Example:
        >>> curve, factor = kde_curve(np.random.rand(50), np.linspace(0, 1, 300))
        >>> float(curve.max())
        1.0
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or np.ptp(values) == 0:
        return np.full(grid.shape, np.nan), float("nan")
    try:
        with np.errstate(all="ignore"):
            kde = gaussian_kde(values, bw_method=bandwidth)
            density = kde(grid)
    except np.linalg.LinAlgError:
        density = np.full(grid.shape, np.nan)
    if not (np.isfinite(density).all() and density.max() > 0):
        raise MechprobeError(
            f"the KDE bandwidth {bandwidth!r} gives no finite density on these values; "
            "use 'scott', 'silverman' or a factor near 1"
        )
    return density / density.max(), float(kde.factor)


# ------------------------------------------------------------------ raw scores at every query


#: Target size in bytes of one chunk of float64 scores in `query_position_scores`.
SCORE_CHUNK_BYTES = 1 << 25
_PAIR_KINDS = ("same", "diff")


def query_position_scores(
    q: Float[Tensor, "pos head d_head"], k: Float[Tensor, "pos kv_head d_head"]
) -> dict[str, np.ndarray]:
    """Raw-score statistics of every query position ``q >= 2`` against its keys ``1 .. q-1``.

    The course's `raw_scores` take the last query against keys ``1 .. n-2``; here every query
    position ``p`` in ``2 .. n-1`` is taken against keys ``1 .. p-1`` (the keys it may attend to,
    less the first token and itself), unscaled, in float64. The pairs of a position are split as
    in `split_same_diff`: same-head (query head ``h`` with key head ``kv_head_of(h)``: ``head x
    (p-1)`` scores) and different-head (every other key head: ``head x (kv_head-1) x (p-1)``).
    The last row is the course's last-query numbers: its fraction ``neg_same / n_same`` and
    ``median_same`` are those of ``split_same_diff(raw_scores(q, k))[0]`` (and likewise diff).

    Args:
        q: Queries of one text (rotated where the model has rotary embeddings).
        k: Keys of the same text, one per key/value head.

    Returns:
        ``q_pos`` ``[q_pos]`` (2 .. n-1) and, for ``same`` and ``diff``: ``n_{kind}`` (pairs),
        ``neg_{kind}`` (pairs with a score < 0) and ``median_{kind}`` (NaN where there is no
        pair, e.g. ``diff`` with one key/value head), each ``[q_pos]``.

    Raises:
        MechprobeError: If the text has fewer than 3 tokens (no query position ``>= 2``).

    Example:
        >>> q, k = torch.randn(6, 4, 16), torch.randn(6, 2, 16)
        >>> s = query_position_scores(q, k)
        >>> s["q_pos"].tolist(), s["n_same"].tolist(), s["n_diff"].tolist()
        ([2, 3, 4, 5], [4, 8, 12, 16], [4, 8, 12, 16])
    """
    n_pos, n_heads, d_head = q.shape
    n_kv = k.shape[1]
    if k.shape[0] != n_pos or k.shape[2] != d_head or n_heads % n_kv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not match")
    if n_pos < 3:
        raise MechprobeError(f"{n_pos} token(s): no query position >= 2 with a key 1 .. q-1")
    same = torch.from_numpy(same_head_mask(n_heads, n_kv))
    keys = k[1:-1].double()  # keys 1 .. n-2: every key some query position >= 2 uses
    n_keys = keys.shape[0]
    qs = torch.arange(2, n_pos)
    out: dict[str, list[np.ndarray]] = {
        f"{s}_{kind}": [] for s in ("n", "neg", "median") for kind in _PAIR_KINDS
    }
    # a chunk of query positions holds [q_pos, head, kv_head, k_pos] float64 scores (and a sort)
    step = max(1, SCORE_CHUNK_BYTES // (8 * n_heads * n_kv * n_keys))
    for c0 in range(0, qs.numel(), step):
        pos = qs[c0 : c0 + step]
        n_k = int(pos[-1]) - 1  # this chunk's queries use keys 1 .. n_k at most
        pattern = "q_pos head d_head, k_pos kv_head d_head -> q_pos head kv_head k_pos"
        scores = einops.einsum(q[pos].double(), keys[:n_k], pattern)
        valid = torch.arange(1, n_k + 1)[None, :] <= (pos - 1)[:, None]  # [q_pos, k_pos]
        kinds = {
            "same": scores[:, same].reshape(len(pos), -1, n_k),
            "diff": scores[:, ~same].reshape(len(pos), -1, n_k),
        }
        for kind, s in kinds.items():
            ok = valid[:, None, :].expand_as(s).reshape(len(pos), -1)
            flat = s.reshape(len(pos), -1)
            n = ok.sum(-1)
            out[f"n_{kind}"].append(n.numpy())
            out[f"neg_{kind}"].append(((flat < 0) & ok).sum(-1).numpy())
            out[f"median_{kind}"].append(_row_medians(flat, ok, n))
    res = {key: np.concatenate(v) for key, v in out.items()}
    return {"q_pos": qs.numpy(), **res}


def pooled_negative_fraction(
    stats: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    cluster: bool = False,
) -> dict[str, dict[str, float]]:
    """Pooled share of negative raw scores over query positions, with a bootstrap interval.

    ``stats`` is one text's `query_position_scores` (or a list, one per text, of one layer).
    Per pair kind, ``fraction`` is all negative scores over all pairs (so later query
    positions, with more keys, weigh more), with a percentile bootstrap interval from
    resampling query positions (`mechprobe.stats.bootstrap.ratio_ci`); with ``cluster`` whole
    texts are resampled instead (positions within a text share keys and are not independent).
    Both kinds use the same resamples. Also: ``n_pairs``, ``n_positions`` and
    ``share_negative_median``, the share of query positions whose median score is negative.

    Example:
        >>> s = query_position_scores(torch.randn(8, 4, 16) - 1, torch.randn(8, 2, 16) + 1)
        >>> res = pooled_negative_fraction(s, n_boot=200)
        >>> res["same"]["low"] <= res["same"]["fraction"] <= res["same"]["high"]
        True
    """
    from mechprobe.stats.bootstrap import ratio_ci

    texts = [stats] if isinstance(stats, Mapping) else list(stats)
    if not texts:
        raise MechprobeError("no texts to pool")
    text_id = np.concatenate([np.full(len(t["q_pos"]), i) for i, t in enumerate(texts)])
    result = {}
    for kind in _PAIR_KINDS:
        neg = np.concatenate([t[f"neg_{kind}"] for t in texts])
        n = np.concatenate([t[f"n_{kind}"] for t in texts])
        med = np.concatenate([t[f"median_{kind}"] for t in texts])
        ci = ratio_ci(neg, n, n_boot, seed, level, groups=text_id if cluster else None)
        with np.errstate(invalid="ignore"):
            share = float(np.mean(med[n > 0] < 0)) if (n > 0).any() else float("nan")
        result[kind] = {
            "fraction": float(ci.estimate),
            "low": float(ci.low),
            "high": float(ci.high),
            "n_pairs": int(n.sum()),
            "n_positions": int(n.size),
            "share_negative_median": share,
        }
    return result


def _row_medians(
    values: Float[Tensor, "q_pos pairs"], ok: Bool[Tensor, "q_pos pairs"], n: Tensor
) -> np.ndarray:
    """Median of each row's valid entries (mean of the two middle ones); NaN for none."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], np.nan)
    ordered = values.masked_fill(~ok, float("inf")).sort(dim=-1).values
    lo = ((n - 1).clamp(min=0) // 2)[:, None]
    hi = (n // 2).clamp(max=values.shape[1] - 1)[:, None]
    med = (ordered.gather(-1, lo) + ordered.gather(-1, hi))[:, 0] / 2
    return torch.where(n > 0, med, torch.nan).numpy()
