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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import (
    Course,
    Experiment,
    Figure,
    Finding,
    Inputs,
    option,
    verdict_of,
)
from mechprobe.models.registry import ModelShape
from mechprobe.stats.cosine import BLOCKS, POSITIONS
from mechprobe.validate import Problems, check_count, check_indices, check_seed, parse_layers

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "similarity"
DEFAULT_TARGET = " her"


@dataclass(frozen=True)
class SimilarityConfig:
    """Settings of the Q/K/V similarity sweep.

    Attributes:
        sentences: File with one sentence per line, each containing ``target``; None: the
            shipped 54 sentences.
        target: The target word, with its leading space as the tokenizer sees it.
        layers: Layer indices; None: every layer.
        centre: Also compute the mean-centred (Pearson) variant.
        batch_size: Rows per forward pass.
        block_rows: Rows of the cosine matrix computed at a time.
        activation_budget_mb: Memory for the activations collected per forward sweep.
        n_boot: Bootstrap resamples of the sentences for the depth finding (0: none).
        seed: Bootstrap seed.
    """

    sentences: str | None = option(
        None, "file with one sentence per line (default: the shipped 54 sentences)"
    )
    target: str = option(
        DEFAULT_TARGET, f"target word, leading space included ({DEFAULT_TARGET!r})"
    )
    layers: tuple[int, ...] | None = option(
        None, "'all' (default) or a list like 0,3,5", parse=parse_layers
    )
    centre: bool = option(False, "also compute the mean-centred (Pearson) variant")
    batch_size: int = option(32, "rows per forward pass (32)")
    block_rows: int = option(256, "rows of the cosine matrix computed at a time (256)")
    activation_budget_mb: float = option(
        64.0, "memory for collected activations (64 MB)", cli=False
    )
    n_boot: int = option(200, "bootstrap resamples of the sentences (200; 0: none)")
    seed: int = option(0, "bootstrap seed (0)")


def resolve(config: SimilarityConfig, shape: ModelShape) -> SimilarityConfig:
    """Resolve the layers and validate the settings.

    Example:
        >>> resolve(SimilarityConfig(layers=(0, 7)), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: layers: layer 7 is out of range (0..1)
    """
    p = Problems()
    layers = p.check("layers", check_indices, config.layers, shape.n_layers, "layer")
    p.check("batch_size", check_count, config.batch_size)
    p.check("block_rows", check_count, config.block_rows)
    if config.n_boot:
        p.check("n_boot", check_count, config.n_boot, 50, "bootstrap resamples")
    p.check("seed", check_seed, config.seed)
    if not config.target:
        p.add("target", "the target is empty")
    p.raise_if_any()
    assert layers is not None  # raise_if_any: every check passed
    return replace(config, layers=tuple(layers))


def load_sentences(config: SimilarityConfig) -> list[str]:
    """The sentences of a run: the file's lines, or the shipped set."""
    from mechprobe.corpus.sentences import default_sentences, read_sentences

    return read_sentences(config.sentences) if config.sentences else default_sentences()


def inputs(config: SimilarityConfig) -> Inputs:
    """The sentences, read once, and their sha256 (one per line, joined with newlines).

    Example:
        >>> len(inputs(SimilarityConfig()).sha256["sentences"])
        64
    """
    from mechprobe.corpus.text import text_source

    sentences = load_sentences(config)
    return Inputs({"sentences": text_source("\n".join(sentences)).sha256}, sentences)


def iter_layer_units(
    model: Model,
    encoded: Any,
    layers: Sequence[int],
    *,
    batch_size: int = 32,
    layer_chunk: int = 8,
    progress: bool | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``[2, n_sentences, units]`` Q|K|V units (target, non-target) layer by layer.

    Layers are collected ``layer_chunk`` at a time (each sweep stops after its last layer); the
    target and non-target rows go through the model as one batch of ``2 * n_sentences`` rows.

    Example:
        >>> from mechprobe.corpus.sentences import encode_sentences
        >>> enc = encode_sentences(tok, ["He gave her a book.", "We told her so."], " her")
        >>> next(iter_layer_units(model, enc, [0])).shape
        (2, 2, 192)
    """
    import torch

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


def _bootstrapped(
    stream: Iterable[np.ndarray], slices: dict[str, slice], rows: np.ndarray, out: list
) -> Iterator[np.ndarray]:
    """Pass the layers on; each layer's target mean |cos| on every resample goes to ``out``.

    The resamples of a layer are computed beside the stream, on a pool of one-BLAS-thread
    workers (the numbers of the serial loop exactly: each layer is the same one-thread
    computation); ``out`` gets them in layer order. At most two layers per worker wait, so the
    stream's memory stays bounded.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from threadpoolctl import threadpool_limits

    from mechprobe.stats.cosine_bootstrap import resampled_mean_abs_cos

    workers = max(1, torch.get_num_threads())
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        waiting: list[Any] = []
        for xs in stream:
            job = pool.submit(resampled_mean_abs_cos, xs[0], slices, rows, blas_threads=None)
            waiting.append(job)
            if len(waiting) > 2 * workers:
                out.append(waiting.pop(0).result())
            yield xs
        out.extend(job.result() for job in waiting)


def run(
    config: SimilarityConfig, model: Model, reference: Any = None, data: list[str] | None = None
) -> ExperimentResult:
    """Run the Q/K/V similarity sweep over layers.

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: Unused (the analysis needs no HF reference).
        data: The sentences (`inputs`); None: read what ``config.sentences`` names.

    Returns:
        ``ExperimentResult("similarity")`` with arrays ``variance``, ``mean``
        ``[2, n_layers, 3]``, ``hist`` ``[2, 6, n_layers, 100]``, ``hist_edges`` ``[101]``,
        ``target_index``, ``nontarget_index`` ``[n_sentences]``, ``layers``, the cosine moments
        ``cos_mean/cos_std/cos_mean_abs/n_pairs`` ``[2, 6, n_layers]``, ``n_zero_units``, the
        target's pooled depth profile ``depth_mean_abs`` and ``depth_far_share`` ``[n_layers]``,
        and the ``*_centred`` variants when ``config.centre``.

    Example:
        >>> res = run(resolve(SimilarityConfig(), model_shape(model)), model)
        >>> res.arrays["hist"].shape
        (2, 6, 2, 100)
    """
    from tqdm.auto import tqdm

    from mechprobe.corpus.sentences import encode_sentences
    from mechprobe.models.registry import model_shape
    from mechprobe.stats.bootstrap import resample_indices
    from mechprobe.stats.cosine import HIST_EDGES, depth_profile, stream_similarity
    from mechprobe.units import layout_of
    from mechprobe.validate import check_context

    t0 = time.perf_counter()
    sentences = load_sentences(config) if data is None else data
    encoded = encode_sentences(model.tokenizer, sentences, config.target)
    check_context(encoded.tokens.shape[1], model_shape(model).n_ctx, "the longest sentence")
    layout = layout_of(model)
    layers = list(config.layers or ())
    per_layer_bytes = 2 * len(sentences) * layout.n_units * 4
    chunk = max(1, int(config.activation_budget_mb * 2**20 // max(1, per_layer_bytes)))
    stream = iter_layer_units(
        model, encoded, layers, batch_size=config.batch_size, layer_chunk=chunk, progress=False
    )
    stream = tqdm(stream, total=len(layers), desc="similarity", unit="layer", leave=False)
    replicates: list[np.ndarray] = []
    if config.n_boot:
        rows = resample_indices(len(sentences), config.n_boot, config.seed)
        stream = _bootstrapped(stream, layout.slices(), rows, replicates)
    arrays = stream_similarity(
        stream, layout.slices(), centre=config.centre, block_rows=config.block_rows
    )
    mean_abs, far = depth_profile(
        arrays["n_pairs"][0], arrays["cos_mean_abs"][0], arrays["hist"][0]
    )
    arrays.update(
        hist_edges=HIST_EDGES.copy(),
        target_index=encoded.target_index,
        nontarget_index=encoded.nontarget_index,
        layers=np.array(layers, dtype=np.int64),
        depth_mean_abs=mean_abs,
        depth_far_share=far,
    )
    if replicates:
        arrays["depth_boot"] = np.stack(replicates)  # [layer, boot]
    tok = model.tokenizer
    multi = len(encoded.target_ids) > 1
    summary: dict[str, Any] = {
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
        "n_units": {c: layout.size(c) for c in "qkv"},
        "blocks": list(BLOCKS),
        "positions": list(POSITIONS),
        "centre": config.centre,
        "cosine": "columns normalised without centring; zero-norm units excluded",
        "zero_norm_units": int(arrays["n_zero_units"].sum()),
        "per_layer": _layer_summary(arrays, layers, ""),
    }
    if config.centre:
        summary["per_layer_centred"] = _layer_summary(arrays, layers, "_centred")
        summary["zero_norm_units_centred"] = int(arrays["n_zero_units_centred"].sum())
    summary["wall_s"] = round(time.perf_counter() - t0, 3)
    return ExperimentResult(NAME, arrays, summary)


def finding(result: ExperimentResult) -> Finding:
    """Whether target cosines pile up near +-1 early and flatten toward 0 with depth.

    Compares the target's pooled mean ``|cos|`` (all six blocks, weighted by pairs) of the first
    and the last third of the analysed layers, with a percentile bootstrap over sentences of that
    difference, and the share of ``|cos| > 0.9`` at the first and the last layer: the claim
    holds when the difference's 95% interval lies above 0 and that share falls.
    """
    from mechprobe.stats.bootstrap import percentile_interval
    from mechprobe.stats.cosine_bootstrap import early_minus_late

    a, s = result.arrays, result.summary
    layers = s["layers"]
    mean_abs, far = a["depth_mean_abs"], a["depth_far_share"]
    claim = (
        "Unit-by-unit cosines of Q/K/V for one token pile up near +-1 in early layers and "
        "flatten toward 0 with depth."
    )
    sample = f"{s['n_sentences']} sentences, {len(layers)} layers, target {s['target']!r}"
    if len(layers) < 2:
        text = f"one layer only: target mean |cos| {mean_abs[0]:.3f}"
        return Finding(claim, text, "not tested", key=f"|cos| {mean_abs[0]:.2f}", sample=sample)
    diff, k = early_minus_late(mean_abs)
    early, late = float(mean_abs[:k].mean()), float(mean_abs[-k:].mean())
    ci = None
    if "depth_boot" in a:
        reps, _ = early_minus_late(a["depth_boot"].T)
        ci = percentile_interval(reps, 0.95)
        sample += (
            f"; 95% percentile bootstrap over sentences ({a['depth_boot'].shape[1]} resamples; "
            "a resample's fewer distinct sentences raise every cosine a little, which mostly "
            "cancels in the difference)"
        )
    holds = (ci[0] > 0 if ci is not None else diff > 0) and far[0] > far[-1]
    interval = f" (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})" if ci is not None else ""
    text = (
        f"At the target, mean |cos| over all blocks is {early:.2f} in the first {k} layer(s) vs "
        f"{late:.2f} in the last {k}: a fall of {float(diff):.2f}{interval}; the share of "
        f"|cos| > 0.9 is {far[0]:.2f} at layer {layers[0]} and {far[-1]:.2f} at layer "
        f"{layers[-1]}."
    )
    key = f"mean |cos| {early:.2f} -> {late:.2f}"
    return Finding(claim, text, verdict_of(bool(holds)), key=key, sample=sample)


def table(result: ExperimentResult, blocks: Sequence[str] = ("QQ", "KK", "VV", "KV")) -> str:
    """Per layer, the standard deviation of each block's cosines, target / non-target."""
    s = result.summary
    lines = [
        f"target {s['target']!r} ({s['target_position_rule']}), {s['n_sentences']} sentences, "
        f"{len(s['layers'])} layers, zero-norm units excluded: {s['zero_norm_units']}",
        f"{'layer':>5}" + "".join(f"{b + ' std t/nt':>18}" for b in blocks),
    ]
    for row in s["per_layer"]:
        cells = "".join(
            f"{row['target'][b]['std']:>9.3f}/{row['nontarget'][b]['std']:<8.3f}" for b in blocks
        )
        lines.append(f"{row['layer']:>5}{cells}")
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer: the target's mean |cos| over all blocks (for ``mechprobe sweep``)."""
    layers = result.summary["layers"]
    return {"mean |cos| at the target": (layers, result.arrays["depth_mean_abs"].tolist())}


SPEC = Experiment(
    name=NAME,
    title="E3: Q/K/V similarities across layers",
    help="E3: cosine similarities of Q/K/V units across sentences at a target word, per layer",
    config=SimilarityConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=(
        Figure(
            "depth",
            "Mean |cos| at the target, per layer",
            "The target's mean absolute cosine over every pair of Q/K/V units per layer (the "
            "number the finding compares between the first and the last third of the layers), "
            "with the 95% band of the bootstrap over sentences, and the share of pairs with "
            "|cos| > 0.9 (dotted).",
        ),
        Figure(
            "histograms_by_depth",
            "Cosine histograms by depth",
            "Distribution of unit-by-unit cosine similarities across sentences, one line per "
            "layer coloured from early (dark) to late (yellow); top row the target word, bottom "
            "the token before it. Early layers piling up at +-1 and late layers centred near 0 "
            "is the course's finding.",
        ),
        Figure(
            "heatmap_target",
            "Cosines by layer at the target",
            "Rows are layers, columns cosine bins, colour the log10 share of pairs in the bin; "
            "one panel per block of unit pairs (QQ, KK, VV within, QK, QV, KV across).",
        ),
        Figure(
            "heatmap_nontarget",
            "Cosines by layer at the token before the target",
            "As above for the token before the target: the comparison shows what is specific "
            "to the target word.",
        ),
        Figure(
            "moments",
            "Mean and variance of Q/K/V units",
            "Per layer, the units' mean and variance across sentences averaged within Q, K and "
            "V; target solid, non-target dashed.",
        ),
        Figure(
            "cosine_spread",
            "Spread of unit cosines per layer",
            "Standard deviation and mean absolute value of each block's cosines per layer: "
            "falling lines are cosines flattening toward 0.",
        ),
    ),
    table=table,
    finding=finding,
    course=Course(model="gpt2-xl"),
    depth_curves=depth_curves,
)
