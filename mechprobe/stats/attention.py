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
