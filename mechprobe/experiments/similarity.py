"""E3: similarities of Q/K/V units across sentences, layer by layer, at a target word.

For each sentence the target index is the first occurrence of the target's tokens (for a
multi-token target, the LAST token of that occurrence) and the non-target index is the token right
before it. Per layer the flat Q|K|V units (``hook_q/k/v``, head-major) at both positions form
``[n_sentences, n_units]`` matrices. From them:

- variance (``ddof=0``) and mean across sentences of each unit, averaged within Q, K and V;
- the cosine similarity between units across sentences (each unit's column normalised, no
  centring; ``centre=True`` adds the mean-centred, i.e. Pearson, variant), histogrammed per
  block QQ, KK, VV (pairs ``i < j``) and QK, QV, KV (all cross pairs) on
  ``linspace(-1, 1, 101)`` (``np.histogram`` semantics, last bin closed; cosines clipped to
  ``[-1, 1]``), plus the mean, standard deviation and mean absolute value of each block.

Memory: the unit x unit cosine matrix is never materialised; it is computed one row block at a
time (``block_rows`` rows) inside one layer and reduced to histogram counts and running moments
at once. Activations are collected for a chunk of layers at a time (``layer_chunk``, by default
as many as fit in ``activation_budget_mb``), so peak memory does not grow with the number of
layers. A unit whose column has zero norm (all zeros; with centring, a constant column) has an
undefined cosine: its pairs are treated as NaN and left out of histograms and statistics, and the
count of such units is reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from mechprobe.errors import MechprobeError, check_index
from mechprobe.experiments.result import ExperimentResult
from mechprobe.units import COMPONENTS, QKVLayout

NAME = "similarity"
BLOCKS = ("QQ", "KK", "VV", "QK", "QV", "KV")
POSITIONS = ("target", "nontarget")
N_BINS = 100
HIST_EDGES = np.linspace(-1.0, 1.0, N_BINS + 1)
DEFAULT_TARGET = " her"
_STAT_KEYS = ("hist", "n_pairs", "cos_mean", "cos_std", "cos_mean_abs", "n_zero_units")


@dataclass(frozen=True)
class SimilarityConfig:
    """Settings of the Q/K/V similarity sweep.

    Attributes:
        model: Model name (see ``mechprobe models``).
        sentences: Sentences, each containing ``target``; ``None``: the shipped 54 sentences.
        target: The target word, with its leading space as the tokenizer sees it.
        layers: Layer indices (negative allowed), or a string ``"all"`` / ``"0,3,5"``;
            ``None``: every layer.
        centre: Also compute the mean-centred (Pearson) variant.
        batch_size: Rows per forward pass.
        block_rows: Rows of the cosine matrix computed at a time.
        layer_chunk: Layers collected per forward sweep; ``None``: as many as fit in
            ``activation_budget_mb``.
        activation_budget_mb: Memory budget for collected activations when ``layer_chunk`` is None.
        device: Torch device (default: CUDA if available).
    """

    model: str = "smollm2-135m"
    sentences: tuple[str, ...] | None = None
    target: str = DEFAULT_TARGET
    layers: tuple[int, ...] | str | None = None
    centre: bool = False
    batch_size: int = 32
    block_rows: int = 256
    layer_chunk: int | None = None
    activation_budget_mb: float = 64.0
    device: str | None = None


@dataclass
class EncodedSentences:
    """A right-padded batch of sentences and the target / non-target index of each.

    Attributes:
        tokens: ``[batch, pos]`` token ids, right-padded, no BOS.
        lengths: Tokens per sentence before padding.
        target_index: Index of the target (last token of its first occurrence).
        nontarget_index: The token right before the target's first token.
        target_ids: The target's token ids on its own.
        fallback_rows: Sentences where the target was located by character offsets because its
            tokens differ in context.
    """

    tokens: Int[torch.Tensor, "batch pos"]
    lengths: np.ndarray
    target_index: np.ndarray
    nontarget_index: np.ndarray
    target_ids: list[int]
    fallback_rows: list[int] = field(default_factory=list)


def default_sentences() -> list[str]:
    """The shipped sentences, each containing " her" once.

    Example:
        >>> len(default_sentences())
        54
    """
    from mechprobe.data import read_data_text

    return [s for s in read_data_text("sentences_her.txt").splitlines() if s.strip()]


def read_sentences(path: str | Path) -> list[str]:
    """Read one sentence per line (blank lines skipped); a user error if unreadable or empty.

    Example:
        >>> read_sentences("sentences.txt")[:1]
        ['She gave her brother the keys.']
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MechprobeError(f"cannot read sentences file {str(path)!r}: {exc}") from exc
    lines = [s.rstrip("\r") for s in text.splitlines() if s.strip()]
    if not lines:
        raise MechprobeError(f"sentences file {str(path)!r} has no sentences")
    return lines


def _short(sentence: str, width: int = 70) -> str:
    return repr(sentence if len(sentence) <= width else sentence[: width - 3] + "...")


def _char_spans(tokenizer: Any, sentence: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Character span of every token: offset mapping if the tokenizer has one, else decoding."""
    try:
        enc = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
        spans = [tuple(map(int, s)) for s in enc["offset_mapping"]]
        if len(spans) == len(ids):
            return spans  # type: ignore[return-value]
    except (NotImplementedError, TypeError, KeyError, ValueError):
        pass
    spans, start = [], 0
    for t in range(len(ids)):
        end = len(tokenizer.decode(ids[: t + 1]))
        spans.append((start, end))
        start = end
    return spans if start == len(sentence) else None


def locate_target(
    tokenizer: Any, sentence: str, target: str, target_ids: list[int]
) -> tuple[int, int] | None:
    """First and last token index of the target's first occurrence in ``sentence``, or None.

    The target's own token ids are matched as a subsequence; when they do not occur (the target
    tokenises differently in context), the first character occurrence of ``target`` is used and
    the tokens overlapping it are returned.

    Example:
        >>> ids = tokenizer(" her", add_special_tokens=False).input_ids
        >>> locate_target(tokenizer, "He gave her a book.", " her", ids)
        (2, 2)
    """
    ids = list(tokenizer(sentence, add_special_tokens=False).input_ids)
    k = len(target_ids)
    for i in range(len(ids) - k + 1):
        if ids[i : i + k] == target_ids:
            return i, i + k - 1
    c = sentence.find(target)
    if c < 0:
        return None
    spans = _char_spans(tokenizer, sentence, ids)
    if spans is None:
        return None
    hits = [t for t, (s, e) in enumerate(spans) if s < c + len(target) and e > c]
    return (hits[0], hits[-1]) if hits else None


def encode_sentences(tokenizer: Any, sentences: Sequence[str], target: str) -> EncodedSentences:
    """Tokenise sentences as a right-padded batch (no BOS) and find target / non-target.

    The target index is the last token of the target's first occurrence (the only token for a
    single-token target); the non-target is the token right before the target's first token.
    Padding uses the tokenizer's pad id (else its EOS id, else 0); the models are causal, so the
    positions before the padding are unaffected by it.

    Raises:
        MechprobeError: A sentence without the target, or with the target as its first token.

    Example:
        >>> enc = encode_sentences(tokenizer, ["He gave her a book."], " her")
        >>> enc.target_index, enc.nontarget_index
        (array([2]), array([1]))
    """
    if not sentences:
        raise MechprobeError("no sentences given")
    if not target:
        raise MechprobeError("the target must not be empty")
    target_ids = list(tokenizer(target, add_special_tokens=False).input_ids)
    if not target_ids:
        raise MechprobeError(f"the target {target!r} has no tokens")
    rows, tidx, nidx, fallback = [], [], [], []
    for n, sentence in enumerate(sentences):
        ids = list(tokenizer(sentence, add_special_tokens=False).input_ids)
        found = locate_target(tokenizer, sentence, target, target_ids)
        if found is None:
            raise MechprobeError(
                f"sentence {n + 1} does not contain the target {target!r}: {_short(sentence)}"
            )
        first, last = found
        if ids[first : last + 1] != target_ids:
            fallback.append(n)
        if first == 0:
            raise MechprobeError(
                f"the target {target!r} starts sentence {n + 1} ({_short(sentence)}), so no "
                "token comes before it for the non-target"
            )
        rows.append(ids)
        tidx.append(last)
        nidx.append(first - 1)
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    pad = 0 if pad is None else int(pad)
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return EncodedSentences(
        tokens=tokens,
        lengths=np.array([len(r) for r in rows]),
        target_index=np.array(tidx, dtype=np.int64),
        nontarget_index=np.array(nidx, dtype=np.int64),
        target_ids=target_ids,
        fallback_rows=fallback,
    )


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """Layers from ``"all"`` / ``None`` / ``"0,3,5"`` / a list; sorted, unique, validated.

    Example:
        >>> parse_layers("0,-1", 30)
        [0, 29]
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(n_layers))
    if isinstance(spec, str):
        try:
            values = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError as exc:
            msg = f"--layers must be 'all' or integers like 0,3,5; got {spec!r}"
            raise MechprobeError(msg) from exc
    else:
        values = [int(v) for v in spec]
    if not values:
        raise MechprobeError("no layers given")
    what = f"the model's {n_layers} layers"
    return sorted({check_index("layer", v, n_layers, what) for v in values})


# ---------------------------------------------------------------------------------------------
# The streaming core: per layer, cosine histograms in row blocks.


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
    layout: QKVLayout,
    *,
    centre: bool = False,
    block_rows: int = 256,
) -> dict[str, np.ndarray]:
    """Histograms and moments of unit x unit cosines for one layer, block by block.

    The cosine matrix is computed ``block_rows`` rows at a time, and only its upper part (the
    columns from the block's first row on), so memory is ``O(block_rows * units)``.

    Args:
        x: ``[n_sentences, n_units]`` flat Q|K|V units of one layer at one position.
        layout: Where Q, K and V sit among the units.
        centre: Mean-centre each unit's column first (Pearson correlation).
        block_rows: Rows of the cosine matrix per block.

    Returns:
        ``hist`` ``[6, 100]`` int64 counts (blocks `BLOCKS`), ``n_pairs``, ``cos_mean``,
        ``cos_std`` (``ddof=0``) and ``cos_mean_abs`` ``[6]``, and ``n_zero_units`` (scalar):
        units left out because their column has zero norm.

    Example:
        >>> stats = cosine_block_stats(np.random.randn(54, 192), QKVLayout(4, 4, 16))
        >>> stats["hist"].shape, int(stats["n_pairs"][0])
        ((6, 100), 2016)
    """
    if x.ndim != 2 or x.shape[1] != layout.n_units:
        raise ValueError(f"x must be [n_sentences, {layout.n_units}], got {x.shape}")
    block_rows = max(1, int(block_rows))
    xn, valid = _normalised_columns(x, centre)
    hist = np.zeros((len(BLOCKS), N_BINS), dtype=np.int64)
    moments = [_Moments() for _ in BLOCKS]
    slices = {c: layout.slice(c) for c in COMPONENTS}
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
    x: Float[np.ndarray, "batch units"], layout: QKVLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit variance (``ddof=0``) and mean across sentences, averaged within Q, K, V.

    Example:
        >>> var, mean = component_moments(np.random.randn(54, 192), QKVLayout(4, 4, 16))
        >>> var.shape
        (3,)
    """
    x = np.asarray(x, dtype=np.float64)
    var = x.var(axis=0, ddof=0)
    mean = x.mean(axis=0)
    sl = [layout.slice(c) for c in COMPONENTS]
    return np.array([var[s].mean() for s in sl]), np.array([mean[s].mean() for s in sl])


def stream_similarity(
    layer_units: Iterable[Float[np.ndarray, "position batch units"]],
    layout: QKVLayout,
    *,
    centre: bool = False,
    block_rows: int = 256,
) -> dict[str, np.ndarray]:
    """Reduce a per-layer stream of ``[2, n_sentences, units]`` (target, non-target) arrays.

    Only per-layer summaries are kept (histograms, moments), so memory is that of one layer's
    arrays plus one row block of the cosine matrix, whatever the number of layers.

    Args:
        layer_units: One array per layer: position 0 the target, 1 the non-target.
        layout: Where Q, K and V sit among the units.
        centre: Also compute the mean-centred (Pearson) variant (keys with ``_centred``).
        block_rows: Rows of the cosine matrix per block.

    Returns:
        ``variance``, ``mean`` ``[2, n_layers, 3]``; ``hist`` ``[2, 6, n_layers, 100]``;
        ``n_pairs``, ``cos_mean``, ``cos_std``, ``cos_mean_abs`` ``[2, 6, n_layers]``;
        ``n_zero_units`` ``[2, n_layers]``; the same with ``_centred`` when ``centre``.

    Example:
        >>> layers = (np.random.randn(2, 54, 192) for _ in range(3))
        >>> stream_similarity(layers, QKVLayout(4, 4, 16))["hist"].shape
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
        moments = [component_moments(x, layout) for x in xs]
        per_layer["variance"].append(np.stack([m[0] for m in moments]))
        per_layer["mean"].append(np.stack([m[1] for m in moments]))
        for suffix, c in variants:
            stats = [cosine_block_stats(x, layout, centre=c, block_rows=block_rows) for x in xs]
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


def iter_layer_units(
    model: Any,
    encoded: EncodedSentences,
    layers: Sequence[int],
    *,
    batch_size: int = 32,
    layer_chunk: int = 8,
    progress: bool | None = None,
) -> Iterator[Float[np.ndarray, "position batch units"]]:
    """Yield ``[2, n_sentences, units]`` Q|K|V units (target, non-target) layer by layer.

    Layers are collected ``layer_chunk`` at a time (each sweep stops after its last layer); the
    target and non-target rows go through the model as one batch of ``2 * n_sentences`` rows.

    Example:
        >>> next(iter_layer_units(model, enc, [0])).shape
        (2, 54, 192)
    """
    from mechprobe.activations import collect_units

    n = encoded.tokens.shape[0]
    tokens = torch.cat([encoded.tokens, encoded.tokens])
    positions = torch.as_tensor(np.concatenate([encoded.target_index, encoded.nontarget_index]))
    for c0 in range(0, len(layers), max(1, layer_chunk)):
        chunk = list(layers[c0 : c0 + max(1, layer_chunk)])
        units = collect_units(
            model,
            tokens,
            positions,
            chunk,
            components=("qkv",),
            batch_size=batch_size,
            progress=progress,
            desc=f"layers {chunk[0]}-{chunk[-1]}",
        )["qkv"]
        for i in range(len(chunk)):
            yield units[:, i].float().numpy().reshape(2, n, -1)
        del units


def _layer_summary(arrays: dict[str, np.ndarray], layers: list[int], suffix: str) -> list[dict]:
    out = []
    for li, L in enumerate(layers):
        entry: dict[str, Any] = {"layer": L}
        for p, pos in enumerate(POSITIONS):
            entry[pos] = {
                b: {
                    "mean": float(arrays["cos_mean" + suffix][p, bi, li]),
                    "std": float(arrays["cos_std" + suffix][p, bi, li]),
                    "mean_abs": float(arrays["cos_mean_abs" + suffix][p, bi, li]),
                    "n_pairs": int(arrays["n_pairs" + suffix][p, bi, li]),
                }
                for bi, b in enumerate(BLOCKS)
            }
        out.append(entry)
    return out


def depth_finding(arrays: dict[str, np.ndarray], layers: list[int]) -> tuple[str, bool | None]:
    """Whether target cosines pile up near +-1 early and flatten toward 0 with depth.

    Pooled over the six blocks (weighted by pairs), compares the target's mean ``|cos|`` and
    its fraction of ``|cos| > 0.9`` in the first and the last third of the analysed layers.
    Returns a one-sentence description and the verdict (None with fewer than two layers).

    Example:
        >>> depth_finding(result.arrays, result.summary["layers"])[1]
        True
    """
    n_pairs = arrays["n_pairs"][0].astype(np.float64)  # [block, layer]
    weights = n_pairs / np.maximum(n_pairs.sum(axis=0, keepdims=True), 1)
    mean_abs = np.nansum(arrays["cos_mean_abs"][0] * weights, axis=0)  # [layer]
    hist = arrays["hist"][0].sum(axis=0)  # [layer, bin]
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    far = hist[:, np.abs(centres) > 0.9].sum(axis=1) / np.maximum(hist.sum(axis=1), 1)
    if len(layers) < 2:
        return f"one layer only: target mean |cos| {mean_abs[0]:.3f}", None
    k = max(1, len(layers) // 3)
    early, late = float(mean_abs[:k].mean()), float(mean_abs[-k:].mean())
    holds = bool(early > late and far[0] > far[-1])
    text = (
        f"target mean |cos| (all blocks) {early:.3f} in the first {k} analysed layer(s) vs "
        f"{late:.3f} in the last {k}; share of |cos| > 0.9: {far[0]:.2f} at layer {layers[0]}, "
        f"{far[-1]:.2f} at layer {layers[-1]}"
    )
    return text, holds


def run_similarity(
    config: SimilarityConfig, *, model: Any = None, reference: Any = None
) -> ExperimentResult:
    """Run the Q/K/V similarity sweep over layers.

    Args:
        config: The settings.
        model: A loaded TransformerLens bridge (loaded from ``config.model`` if None).
        reference: Unused (the analysis needs no HF reference); accepted for a uniform API.

    Returns:
        An `ExperimentResult` named ``similarity`` with arrays ``variance``, ``mean``
        ``[2, n_layers, 3]``, ``hist`` ``[2, 6, n_layers, 100]``, ``hist_edges`` ``[101]``,
        ``target_index``, ``nontarget_index`` ``[n_sentences]``, ``layers``, the cosine moments
        ``cos_mean/cos_std/cos_mean_abs/n_pairs`` ``[2, 6, n_layers]``, ``n_zero_units``, and the
        ``*_centred`` variants when ``config.centre``.

    Example:
        >>> res = run_similarity(SimilarityConfig(model="tiny-gpt2"))
        >>> res.arrays["hist"].shape
        (2, 6, 2, 100)
    """
    from mechprobe.models import load_model
    from mechprobe.models.registry import model_shape
    from mechprobe.units import layout_of

    t0 = time.perf_counter()
    model = model if model is not None else load_model(config.model, device=config.device)
    sentences = list(config.sentences) if config.sentences is not None else default_sentences()
    encoded = encode_sentences(model.tokenizer, sentences, config.target)
    layout = layout_of(model)
    layers = parse_layers(config.layers, model_shape(model).n_layers)
    per_layer_bytes = 2 * len(sentences) * layout.n_units * 4
    chunk = config.layer_chunk or max(
        1, int(config.activation_budget_mb * 2**20 // max(1, per_layer_bytes))
    )
    stream = iter_layer_units(
        model, encoded, layers, batch_size=config.batch_size, layer_chunk=chunk, progress=False
    )
    stream = tqdm(stream, total=len(layers), desc="similarity", unit="layer", leave=False)
    arrays = stream_similarity(stream, layout, centre=config.centre, block_rows=config.block_rows)
    arrays.update(
        hist_edges=HIST_EDGES.copy(),
        target_index=encoded.target_index,
        nontarget_index=encoded.nontarget_index,
        layers=np.array(layers, dtype=np.int64),
    )
    tok = model.tokenizer
    multi = len(encoded.target_ids) > 1
    summary: dict[str, Any] = {
        "model": config.model,
        "target": config.target,
        "target_tokens": [tok.decode([i]) for i in encoded.target_ids],
        "target_position_rule": (
            "last token of the target's first occurrence (multi-token target)"
            if multi
            else "first occurrence of the target token"
        ),
        "nontarget_position_rule": "the token right before the target's first token",
        "n_sentences": len(sentences),
        "sentences_located_by_characters": [int(i) for i in encoded.fallback_rows],
        "layers": layers,
        "n_units": {"q": layout.size("q"), "k": layout.size("k"), "v": layout.size("v")},
        "blocks": list(BLOCKS),
        "positions": list(POSITIONS),
        "centre": config.centre,
        "cosine": "columns normalised without centring; zero-norm units excluded (NaN)",
        "zero_norm_units": int(arrays["n_zero_units"].sum()),
        "per_layer": _layer_summary(arrays, layers, ""),
    }
    if config.centre:
        summary["per_layer_centred"] = _layer_summary(arrays, layers, "_centred")
        summary["zero_norm_units_centred"] = int(arrays["n_zero_units_centred"].sum())
    summary["finding"], summary["finding_holds"] = depth_finding(arrays, layers)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 3)
    return ExperimentResult(NAME, arrays, summary)
