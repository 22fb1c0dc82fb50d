"""E2: isolating and investigating attention heads (the course's dissection of one layer).

One text (no BOS) runs through the model; at one layer the per-head queries and keys come
straight from TransformerLens's hooks (no manual split of a fused projection):

* **Q/K statistics** per head: mean and standard deviation (``ddof=1``, as ``torch.std``) of
  all values of tokens ``1:`` (first token excluded), pooled over the head's ``d_head`` dims.
  They come from ``hook_q`` / ``hook_k``, the projection outputs. On grouped-query models a
  key head serves several query heads: ``k_mean``/``k_std`` are given per *query* head (each
  query head gets the numbers of the key/value head it attends with,
  ``QKVLayout.kv_head_of``), and ``k_mean_kv``/``k_std_kv`` hold the ``[n_kv_heads]`` originals.
* **Raw scores** (unscaled, unmasked), as the course defines them: the last token's query of
  head ``h`` dotted with the keys of head ``h'`` for tokens ``1 .. last-1``. Same-head pairs are
  ``h' = kv_head_of(h)`` (for GPT-2, ``h' = h``), every other key/value head is different.
* **Softmax weights** per head: ``q k^T / sqrt(d_head)``, causal mask, softmax. Groups: the final
  token's weights on all previous tokens (first included), the self-attention of tokens
  ``1:``, and the first token's self-attention (always exactly 1).

Rotary models (Llama/SmolLM2): attention uses the *rotated* queries and keys, so the raw and
scaled scores use ``hook_rot_q`` / ``hook_rot_k`` when the model has them (this is what the
parity checks against ``hook_attn_scores``, ``hook_pattern`` and HF's ``output_attentions``
need); the mean/std statistics use the pre-rotary projection outputs ``hook_q`` / ``hook_k``.
GPT-2 has no rotary embedding, so both come from ``hook_q`` / ``hook_k``.

Orders of the pooled 1-D arrays: ``raw_same`` is head-major then token (``h``, tokens
``1..n-2``); ``raw_diff`` is query head, then key/value head ascending (skipping the same one),
then token; ``attn_final_to_prev`` is head-major over key tokens ``0..n-2``; ``attn_self`` is
head-major over tokens ``1..n-1``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.stats import gaussian_kde
from torch import Tensor

from mechprobe.errors import MechprobeError, check_index
from mechprobe.experiments.result import ExperimentResult
from mechprobe.hooks import hook_name
from mechprobe.models.registry import model_shape
from mechprobe.units import QKVLayout

NAME = "heads"
DEFAULT_TEXT_FILE = "heads_default.txt"
KDE_POINTS = 300
PARITY_TOLERANCE = 1e-5
MIN_TOKENS = 3
BANDWIDTH_RULES = ("scott", "silverman")


def default_text() -> str:
    """The project's default passage (two factual sentences, about 35 tokens).

    Example:
        >>> default_text().startswith("Copper")
        True
    """
    from mechprobe.data import read_data_text

    return read_data_text(DEFAULT_TEXT_FILE).strip()


@dataclass(frozen=True)
class HeadsConfig:
    """Settings of the attention-head dissection.

    Attributes:
        model: Model name (see ``mechprobe models``).
        layer: Layer to dissect; None: the middle layer ``n_layers // 2``. Negative counts back.
        text: Text to run (no BOS); None: `default_text`.
        bandwidth: ``gaussian_kde`` bandwidth: None or ``"scott"`` (default), ``"silverman"``,
            or a positive factor.
        device: Torch device (default CUDA if available, else CPU).
        tolerance: Largest max-abs difference the parity checks allow.

    Example:
        >>> HeadsConfig(model="tiny-gpt2", layer=1).bandwidth is None
        True
    """

    model: str = "smollm2-135m"
    layer: int | None = None
    text: str | None = None
    bandwidth: float | str | None = None
    device: str | None = None
    tolerance: float = PARITY_TOLERANCE


def check_bandwidth(bandwidth: float | str | None) -> float | str:
    """Validate a KDE bandwidth: ``"scott"``, ``"silverman"`` or a positive number.

    Example:
        >>> check_bandwidth(None), check_bandwidth("0.2")
        ('scott', 0.2)
    """
    if bandwidth is None:
        return "scott"
    if isinstance(bandwidth, str):
        if bandwidth.lower() in BANDWIDTH_RULES:
            return bandwidth.lower()
        try:
            bandwidth = float(bandwidth)
        except ValueError:
            raise MechprobeError(
                f"bandwidth must be a positive number, 'scott' or 'silverman', got {bandwidth!r}"
            ) from None
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise MechprobeError(f"bandwidth must be a positive number, got {bandwidth!r}")
    return float(bandwidth)


def tokenize(tokenizer: Any, text: str) -> Int[Tensor, "batch pos"]:
    """Token ids of ``text`` without BOS, ``[1, pos]``; at least 3 tokens are required.

    Example:
        >>> tokenize(model.tokenizer, default_text()).shape
        torch.Size([1, 34])
    """
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < MIN_TOKENS:
        raise MechprobeError(
            f"the text has {len(ids)} token(s); the head analysis needs at least {MIN_TOKENS} "
            "(first token, at least one middle token, last token)"
        )
    return torch.tensor([ids], dtype=torch.long)


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
    `QKVLayout.kv_head_of`.

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


def same_head_mask(layout: QKVLayout) -> Bool[np.ndarray, "head kv_head"]:
    """``mask[h, h']``: whether key/value head ``h'`` is the one query head ``h`` uses.

    Example:
        >>> same_head_mask(QKVLayout(9, 3, 64)).sum(axis=1)
        array([1, 1, 1, 1, 1, 1, 1, 1, 1])
    """
    kv_of = np.array([layout.kv_head_of(h) for h in range(layout.n_heads)])
    return kv_of[:, None] == np.arange(layout.n_kv_heads)[None, :]


def split_same_diff(
    raw: Float[np.ndarray, "head kv_head pos"], layout: QKVLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Pool raw scores into same-head and different-head pairs (1-D, orders as in the module doc).

    Example:
        >>> same, diff = split_same_diff(np.zeros((4, 4, 5)), QKVLayout(4, 4, 16))
        >>> same.shape, diff.shape
        ((20,), (60,))
    """
    mask = same_head_mask(layout)
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

    Degenerate data (fewer than two values, or all equal) has no KDE: NaNs and NaN factor.

    Example:
        >>> curve, factor = kde_curve(np.random.rand(50), np.linspace(0, 1, 300))
        >>> float(curve.max())
        1.0
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or np.ptp(values) == 0:
        return np.full(grid.shape, np.nan), float("nan")
    kde = gaussian_kde(values, bw_method=bandwidth)
    density = kde(grid)
    return density / density.max(), float(kde.factor)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _maxdiff(a: Tensor, b: Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def run_heads(config: HeadsConfig, *, model: Any = None, reference: Any = None) -> ExperimentResult:
    """Dissect the attention heads of one layer on one text (see the module docstring).

    Args:
        config: The settings.
        model: A loaded TransformerLens bridge (loaded from ``config.model`` if None).
        reference: A loaded HF reference ``(hf_model, tokenizer)`` with eager attention, used for
            the ``output_attentions`` parity check (loaded if None).

    Returns:
        ``ExperimentResult("heads", arrays, summary)``. ``summary["parity"]["passed"]`` says
        whether all parity checks are within ``config.tolerance``.

    Raises:
        MechprobeError: Layer out of range, a text of fewer than 3 tokens, a bad bandwidth.

    Example:
        >>> res = run_heads(HeadsConfig(model="tiny-gpt2"))
        >>> res.arrays["q_mean"].shape, res.summary["parity"]["passed"]
        ((4,), True)
    """
    from mechprobe.activations import collect
    from mechprobe.models import load_model, load_reference
    from mechprobe.reference import capture_reference

    start = time.perf_counter()
    bandwidth = check_bandwidth(config.bandwidth)
    model = model if model is not None else load_model(config.model, device=config.device)
    shape = model_shape(model)
    layer = shape.n_layers // 2 if config.layer is None else config.layer
    layer = check_index("layer", layer, shape.n_layers, f"{config.model}'s {shape.n_layers} layers")
    text = default_text() if config.text is None else config.text
    tokens = tokenize(model.tokenizer, text)
    hf, _ = (
        reference if reference is not None else load_reference(config.model, device=config.device)
    )
    layout = QKVLayout(shape.n_heads, shape.n_kv_heads, shape.d_head)

    def name(point: str) -> str:
        return hook_name(layer, f"attn.{point}")

    rotary = name("hook_rot_q") in model.hook_dict and name("hook_rot_k") in model.hook_dict
    q_point, k_point = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
    points = dict.fromkeys(
        ["hook_q", "hook_k", q_point, k_point, "hook_attn_scores", "hook_pattern"]
    )
    collected = collect(model, tokens, [name(p) for p in points], desc="heads")
    acts = {p: collected[name(p)][0] for p in points}

    # Per-head statistics of the projection outputs (pre-rotary), tokens 1:.
    q_mean, q_std = head_stats(acts["hook_q"])
    k_mean_kv, k_std_kv = head_stats(acts["hook_k"])
    kv_of = torch.tensor([layout.kv_head_of(h) for h in range(shape.n_heads)])

    # Raw scores from the queries/keys attention really uses (rotated on rotary models).
    q_att, k_att = acts[q_point], acts[k_point]
    raw = raw_scores(q_att, k_att).numpy()
    raw_same, raw_diff = split_same_diff(raw, layout)

    # Scaled, masked softmax in the model's dtype, and the parity checks.
    n_pos = tokens.shape[1]
    mask = causal_mask(n_pos)
    scores = scaled_scores(q_att, expand_kv(k_att, shape.n_heads))
    pattern = masked_softmax(scores, mask)
    ref = capture_reference(hf, tokens, layers=[layer])
    hf_attn = ref["attentions"][layer][0].detach().cpu()
    parity = {
        "scores_vs_hook_attn_scores": _maxdiff(scores[:, mask], acts["hook_attn_scores"][:, mask]),
        "softmax_vs_hook_pattern": _maxdiff(pattern, acts["hook_pattern"]),
        "softmax_vs_hf_attentions": _maxdiff(pattern, hf_attn),
        "hook_pattern_vs_hf_attentions": _maxdiff(acts["hook_pattern"], hf_attn),
    }
    passed = all(d <= config.tolerance for d in parity.values())

    pattern_np = pattern.double().numpy()
    attn_final_to_prev = pattern_np[:, -1, :-1].reshape(-1)
    attn_self = np.diagonal(pattern_np, axis1=1, axis2=2)[:, 1:].reshape(-1)
    first_self = pattern_np[:, 0, 0]

    grid = np.linspace(0.0, 1.0, KDE_POINTS)
    kde_final, factor_final = kde_curve(attn_final_to_prev, grid, bandwidth)
    kde_self, factor_self = kde_curve(attn_self, grid, bandwidth)
    raw_all = np.concatenate([raw_same, raw_diff])
    raw_grid = np.linspace(raw_all.min(), raw_all.max(), KDE_POINTS)
    kde_raw_same, factor_same = kde_curve(raw_same, raw_grid, bandwidth)
    kde_raw_diff, factor_diff = kde_curve(raw_diff, raw_grid, bandwidth)

    def neg(x: np.ndarray) -> float:
        return float((x < 0).mean()) if x.size else float("nan")

    def med(x: np.ndarray) -> float:
        return float(np.median(x)) if x.size else float("nan")

    frac = {"same": neg(raw_same), "diff": neg(raw_diff)}
    median = {"same": med(raw_same), "diff": med(raw_diff)}
    holds = all(f > 0.5 for f in frac.values()) and all(m < 0 for m in median.values())
    arrays = {
        "q_mean": q_mean.numpy(),
        "q_std": q_std.numpy(),
        "k_mean": k_mean_kv[kv_of].numpy(),
        "k_std": k_std_kv[kv_of].numpy(),
        "k_mean_kv": k_mean_kv.numpy(),
        "k_std_kv": k_std_kv.numpy(),
        "raw_scores": raw,
        "raw_same": raw_same,
        "raw_diff": raw_diff,
        "attn_final_to_prev": attn_final_to_prev,
        "attn_self": attn_self,
        "attn_first_self": first_self,
        "pattern": pattern_np,
        "kde_grid": grid,
        "kde_final_to_prev": kde_final,
        "kde_self": kde_self,
        "raw_kde_grid": raw_grid,
        "kde_raw_same": kde_raw_same,
        "kde_raw_diff": kde_raw_diff,
    }
    summary = {
        "model": config.model,
        "layer": layer,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "d_head": shape.d_head,
        "text": text,
        "n_tokens": n_pos,
        "tokens": [model.tokenizer.decode([t]) for t in tokens[0].tolist()],
        "hooks": {
            "stats": [name("hook_q"), name("hook_k")],
            "scores": [name(q_point), name(k_point)],
            "rotary": rotary,
        },
        "stats_ddof": 1,
        "k_stats_per_query_head": "k_mean/k_std[h] = k_mean_kv/k_std_kv[kv_head_of(h)]",
        "n_pairs": {"same": int(raw_same.size), "diff": int(raw_diff.size)},
        "negative_fraction": {k: _finite(v) for k, v in frac.items()},
        "median": {k: _finite(v) for k, v in median.items()},
        "finding": "raw scores shift negative: most raw scores (same and different heads) are "
        "below zero and both medians are negative",
        "finding_holds": bool(holds),
        "first_token_self_attention_max_dev": float(np.abs(first_self - 1.0).max()),
        "bandwidth": bandwidth,
        "bandwidth_factor": {
            "final_to_prev": _finite(factor_final),
            "self": _finite(factor_self),
            "raw_same": _finite(factor_same),
            "raw_diff": _finite(factor_diff),
        },
        "parity": {**parity, "tolerance": config.tolerance, "passed": bool(passed)},
        "wall_s": round(time.perf_counter() - start, 3),
    }
    return ExperimentResult(NAME, arrays, summary)


def parity_failures(result: ExperimentResult) -> list[str]:
    """The parity checks of a heads result that exceed its tolerance, as ``name=value`` strings.

    Example:
        >>> parity_failures(run_heads(HeadsConfig(model="tiny-gpt2")))
        []
    """
    parity = result.summary["parity"]
    tol = parity["tolerance"]
    return [
        f"{k}={v:.3e}"
        for k, v in parity.items()
        if k not in ("tolerance", "passed") and not v <= tol
    ]
