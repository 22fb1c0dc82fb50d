"""Logit and norm statistics of interventions: next-token distributions, KL, norm ratios.

Example:
    >>> kl_divergence(torch.zeros(5), torch.zeros(5))
    0.0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from mechprobe.models.types import Tokenizer


def top_tokens(
    logits: Float[Tensor, " vocab"], tokenizer: Tokenizer, k: int = 5
) -> list[dict[str, Any]]:
    """The ``k`` most probable next tokens: text, id and probability (softmax in float64).

    Example:
        >>> [t["id"] for t in top_tokens(torch.tensor([0.0, 3.0, 1.0]), tok, k=2)]
        [1, 2]
    """
    p, idx = torch.softmax(logits.double(), dim=-1).topk(k)
    return [
        {"token": tokenizer.decode([int(i)]), "id": int(i), "prob": float(q)}
        for q, i in zip(p, idx, strict=True)
    ]


def kl_divergence(base: Float[Tensor, " vocab"], other: Float[Tensor, " vocab"]) -> float:
    """KL(base || other) of the next-token distributions of two logit vectors, in nats.

    Example:
        >>> round(kl_divergence(torch.tensor([0.0, 0.0]), torch.tensor([0.0, math.log(3)])), 4)
        0.1438
    """
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(other.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


def scaling_verdict(ratio: np.ndarray, final: float, scale_layer: int, factor: float) -> dict:
    """Test the course's finding on one scaling condition from norm ratios to the baseline.

    ``ratio`` holds the pre-norm residual norm ratios ``[n_layers + 1]`` (the embeddings, then
    every block's output); ``final`` the ratio after the final norm. Factor < 1: the norm
    collapses at the block (ratio < 0.5) and later layers partly restore it (the last block's
    ratio is higher than at the block but still < 1). Factor > 1: the norm blows up at the block
    (ratio > 2) and the final norm compresses it (closer to 1, in log scale by half).

    Example:
        >>> scaling_verdict(np.array([1, 0.1, 0.5]), 0.9, 0, 0.1)["holds"]
        True
    """
    at, last = float(ratio[scale_layer + 1]), float(ratio[-1])
    later = [float(r) for r in ratio[scale_layer + 2 :]]
    if factor < 1:
        collapses, restores = at < 0.5, bool(later) and at < last < 1.0
        holds = collapses and restores
        if restores:
            how = "partly restored"
        elif not later:
            how = "no later block to restore it"
        elif last >= 1.0:
            how = "restored beyond the baseline (overshoot), not partly"
        else:
            how = "not restored"
        nxt = f"; next block {later[0]:.2f}" if later else ""
        text = (
            f"x{factor:g}: norm ratio {at:.2f} at block {scale_layer} "
            f"({'collapses' if collapses else 'does not collapse'}){nxt}; last block {last:.2f} "
            f"({how}); after the final norm {final:.2f}"
        )
    else:
        blows = at > 2.0
        compresses = at > 0 and abs(math.log(final)) < 0.5 * abs(math.log(at))
        holds = blows and compresses
        text = (
            f"x{factor:g}: norm ratio {at:.2f} at block {scale_layer} "
            f"({'blows up' if blows else 'does not blow up'}); last block {last:.2f}; after the "
            f"final norm {final:.2f} ({'compressed' if compresses else 'not compressed'})"
        )
    return {"factor": factor, "ratio_at_block": at, "holds": bool(holds), "text": text}
