"""Activation patching over minimal pairs: which activations carry the answer.

For every pair (a clean prompt, a corrupted one of the same token length, the answer and a wrong
answer, one token each) and every cell -- ``resid_pre``, ``attn_out`` and ``mlp_out`` at a layer
and position; ``z`` (and optionally ``q``/``k``/``v``) at a layer and head, over every
position -- the clean activation goes into the corrupted run (TransformerLens's convention) and
the metric is the logit difference ``answer - wrong`` at the last position. Per cell: the
normalised effect ``mean(patched - corrupt) / mean(clean - corrupt)`` (0: nothing restored, 1:
the clean answer restored), its 95% bootstrap interval over pairs (whole templates resampled
when the pairs name templates), a sign-flip permutation p-value and a Benjamini-Hochberg q-value
across every cell of the run (`mechprobe.stats.patching`). A sample of cells (every cell of a
small run) is patched again through plain HuggingFace hooks on the reference model; the largest
difference is reported and must be finite and within the tolerance.

A pair set on which the model fails (mean clean logit difference not above 0) is not patched:
the finding says so and the run still succeeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment, Figure, Finding, Inputs, option
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_count,
    check_indices,
    check_number,
    check_seed,
    check_tolerance,
    parse_choices,
    parse_int,
    parse_layers,
)

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "patch"
COMPONENT_CHOICES = ("resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v")
DEFAULT_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "z")
#: Runs with at most this many cells are checked against HF hooks at every cell.
ALL_REFERENCE_CELLS = 200


@dataclass(frozen=True)
class PatchConfig:
    """Settings of activation patching.

    Attributes:
        pairs: A built-in pair set (``ioi``, ``negation``) or a JSONL file of pairs.
        components: Components patched (``resid_pre,attn_out,mlp_out,z``; add ``q,k,v``).
        layers: Layers patched (None: every layer).
        max_pairs: Use the first N pairs only (None: all).
        n_boot: Bootstrap resamples (of templates, or of pairs without templates).
        n_perm: Sign patterns drawn per cell above 12 pairs (exact enumeration below).
        seed: Seed of the bootstrap and the sign patterns.
        alpha: FDR level at which the figures mark cells.
        reference_cells: Cells rerun through HF hooks (every cell when the run has at most 200).
        tolerance: Largest allowed |difference| of a logit difference, TL vs HF hooks.
        batch_tokens: Tokens per patched forward (cells x pairs x positions).
    """

    pairs: str = option("ioi", "built-in pair set (ioi, negation) or a JSONL file (ioi)")
    components: tuple[str, ...] = option(
        DEFAULT_COMPONENTS,
        "comma list of resid_pre, attn_out, mlp_out, z, q, k, v (resid_pre,attn_out,mlp_out,z)",
        parse=lambda t: parse_choices(t, COMPONENT_CHOICES),
    )
    layers: tuple[int, ...] | None = option(
        None, "layers to patch: 'all' or 0,3,5 (all)", parse=parse_layers
    )
    max_pairs: int | None = option(
        None, "use the first N pairs only (default: all)", parse=parse_int
    )
    n_boot: int = option(1000, "bootstrap resamples over templates/pairs (1000)")
    n_perm: int = option(1000, "sign-flip permutations per cell above 12 pairs (1000)")
    seed: int = option(0, "seed of the bootstrap and the permutations (0)")
    alpha: float = option(0.05, "FDR level of the marked cells (0.05)")
    reference_cells: int = option(
        24, "cells rerun through HF hooks (24; every cell when the run has <= 200)"
    )
    tolerance: float = option(1e-3, "largest TL-vs-HF |diff| of a logit difference (1e-3)")
    batch_tokens: int = option(4096, "tokens per patched forward (4096)")


def resolve(config: PatchConfig, shape: ModelShape) -> PatchConfig:
    """Validate every setting against the model's shape.

    Example:
        >>> resolve(PatchConfig(layers=(1,)), model_shape(model)).layers
        (1,)
    """
    p = Problems()
    if not config.components:
        p.add("components", "give at least one of " + ", ".join(COMPONENT_CHOICES))
    bad = [c for c in config.components if c not in COMPONENT_CHOICES]
    if bad:
        p.add("components", f"unknown {', '.join(bad)} (choose {', '.join(COMPONENT_CHOICES)})")
    layers = None
    if config.layers is not None:
        layers = p.check("layers", check_indices, config.layers, shape.n_layers, "layer")
    if config.max_pairs is not None:
        p.check("max_pairs", check_count, config.max_pairs, 1, "max pairs")
    p.check("n_boot", check_count, config.n_boot, 100, "bootstrap resamples")
    p.check("n_perm", check_count, config.n_perm, 100, "permutations")
    p.check("seed", check_seed, config.seed)
    p.check("alpha", check_number, config.alpha, low=0.0, high=1.0, inclusive=False, what="alpha")
    p.check("reference_cells", check_count, config.reference_cells, 0, "reference cells")
    p.check("tolerance", check_tolerance, config.tolerance)
    p.check("batch_tokens", check_count, config.batch_tokens, 1, "batch tokens")
    p.raise_if_any()
    return replace(config, layers=None if layers is None else tuple(layers))


def inputs(config: PatchConfig) -> Inputs:
    """The pairs, read and validated once (a bad file fails before the model loads).

    Example:
        >>> loaded = inputs(PatchConfig(pairs="negation"))
        >>> len(loaded.data), len(loaded.sha256["pairs"])
        (100, 64)
    """
    from mechprobe.corpus.pairs import load_pairs, pairs_sha256

    pairs = load_pairs(config.pairs)
    return Inputs({"pairs": pairs_sha256(pairs)}, pairs)


def _reference_cells(
    cells: list[tuple[str, int, int]], means: np.ndarray, k: int, seed: int
) -> list[int]:
    """The cells rerun through HF: all of a small run, else the k/2 strongest and k/2 random."""
    if len(cells) <= ALL_REFERENCE_CELLS:
        return list(range(len(cells)))
    order = np.argsort(-np.nan_to_num(np.abs(means), nan=-1.0))
    strongest = order[: k // 2].tolist()
    rest = np.setdiff1d(np.arange(len(cells)), strongest)
    rng = np.random.default_rng(seed)
    picked = rng.choice(rest, size=min(len(rest), k - len(strongest)), replace=False).tolist()
    return sorted(strongest + picked)


def run(config: PatchConfig, model: Model, reference: Any, data: Any = None) -> ExperimentResult:
    """Patch every cell of the chosen components over every pair; statistics; HF check.

    Args:
        config: The settings, resolved (`resolve`).
        model: A TransformerLens bridge.
        reference: The independent HF ``(model, tokenizer)``.
        data: The pairs (`inputs`, a list or an `Inputs`); None: read what ``config.pairs``
            names.

    Returns:
        ``ExperimentResult("patch")``: per component ``<c>`` ``[layer, pos|head, pair]`` (the
        patched logit difference), ``<c>_mean``/``_ci_low``/``_ci_high``/``_pvalue``/
        ``_qvalue`` ``[layer, pos|head]``; ``clean``, ``corrupt``, ``template``, ``length``
        ``[pair]``.

    Example:
        >>> rows = [{"clean": "When Mary and John went to the store, John gave a drink to",
        ...          "corrupt": "When Mary and John went to the store, Mary gave a drink to",
        ...          "answer": " Mary", "wrong": " John"}] * 3
        >>> res = run(resolve(PatchConfig(components=("resid_pre",), n_boot=100),
        ...           model_shape(model)), model, (hf, tok), rows)
        >>> res.arrays["resid_pre"].shape, res.summary["reference"]["passed"]
        ((2, 15, 3), True)
    """
    from mechprobe.corpus.pairs import load_pairs, tokenise_pairs
    from mechprobe.experiments.patch_core import POSITION_COMPONENTS, PatchRunner

    started = time.perf_counter()
    if isinstance(data, Inputs):  # the library passes the pairs with their sha256
        data = data.data
    pairs = list(data) if data is not None else load_pairs(config.pairs)
    if config.max_pairs is not None:
        pairs = pairs[: config.max_pairs]
    tp = tokenise_pairs(model, pairs)  # unequal lengths, multi-token answers: one-line error
    runner = PatchRunner(model, tp, batch_tokens=config.batch_tokens)
    n_layers = runner.n_layers
    layers = list(range(n_layers)) if config.layers is None else list(config.layers)
    tok = model.tokenizer
    shown = labelled_pair(tp.lengths)
    summary: dict[str, Any] = {
        "pairs": config.pairs,
        "n_pairs": len(pairs),
        "templates": tp.templates if tp.templates != [""] else [],
        "components": list(config.components),
        "layers_patched": layers,
        "n_layers": n_layers,
        "n_heads": runner.n_heads,
        "position_tokens": [""] * (runner.n_pos - int(tp.lengths[shown]))
        + [tok.decode([t]) for t in tp.clean[shown]],
        "position_alignment": "end",  # pairs of different lengths share their last column
        "example": {k: pairs[shown][k] for k in ("clean", "corrupt", "answer", "wrong")},
        "clean_mean": float(np.mean(runner.clean)),
        "corrupt_mean": float(np.mean(runner.corrupt)),
        "clean_accuracy": float(np.mean(runner.clean > 0)),
        "fast_path": bool(runner.fast),
        "fast_path_check": runner.fast_check,
        "alpha": config.alpha,
        "n_boot": config.n_boot,
        "n_perm": config.n_perm,
        "seed": config.seed,
    }
    arrays: dict[str, np.ndarray] = {
        "layers": np.arange(n_layers),
        "clean": runner.clean,
        "corrupt": runner.corrupt,
        "template": tp.template.astype(np.int64),
        "length": tp.lengths.astype(np.int64),
    }
    summary["failed"] = bool(summary["clean_mean"] <= 0)
    if summary["failed"]:
        summary["seconds"] = time.perf_counter() - started
        return ExperimentResult(NAME, arrays, summary)

    values = {
        c: align_right(runner.values(c, layers), tp.lengths) if c in POSITION_COMPONENTS else
        runner.values(c, layers)
        for c in config.components
    }  # fmt: skip
    cells, st, _ = statistics(config, arrays, values, layers, summary)
    summary["reference"] = _check_reference(config, reference, tp, runner, values, cells, st.mean)
    summary["seconds"] = time.perf_counter() - started
    return ExperimentResult(NAME, arrays, summary)


def labelled_pair(lengths: np.ndarray) -> int:
    """The pair whose tokens label the position columns: the first of the most common length.

    Ties go to the longer length. With positions aligned at the end (`align_right`), a column
    holds the same role in most pairs when it is labelled from the most common template shape.

    Example:
        >>> labelled_pair(np.array([15, 18, 16, 16, 15]))
        2
    """
    values, counts = np.unique(np.asarray(lengths), return_counts=True)
    modal = values[counts == counts.max()].max()
    return int(np.flatnonzero(np.asarray(lengths) == modal)[0])


def align_right(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``[layer, pos, pair]`` values by position from the start -> aligned at each pair's end.

    Column ``i`` of a pair of ``t`` tokens is its position ``i - (T - t)`` (``T`` the longest):
    the last token, where the metric is read, is the last column for every pair, and a shorter
    pair is NaN in the first ``T - t`` columns. Equal lengths: unchanged.

    Example:
        >>> v = np.arange(6.0).reshape(1, 3, 2)  # pair 1 has 2 tokens (NaN at position 2)
        >>> v[0, 2, 1] = np.nan
        >>> align_right(v, np.array([3, 2]))[0].tolist()
        [[0.0, nan], [2.0, 1.0], [4.0, 3.0]]
    """
    out = np.full_like(values, np.nan)
    n_pos = values.shape[1]
    for j, t in enumerate(np.asarray(lengths).astype(int)):
        out[:, n_pos - t :, j] = values[:, :t, j]
    return out


def statistics(
    config: PatchConfig,
    arrays: dict[str, np.ndarray],
    values: dict[str, np.ndarray],
    layers: list[int],
    summary: dict[str, Any],
) -> tuple[list[tuple[str, int, int]], Any, np.ndarray]:
    """Per cell: normalised mean, bootstrap interval, sign-flip p and BH q, into ``arrays``.

    ``values``: per component ``[layer, pos|head, pair]`` patched logit differences (positions
    aligned at the end, `align_right`); ``arrays`` holds ``clean``, ``corrupt`` and
    ``template``. Fills ``summary``'s ``n_cells``, ``n_significant`` and ``top_cells``.
    Returns ``(cells, their statistics, q-values)``.
    """
    from mechprobe.experiments.patch_core import POSITION_COMPONENTS
    from mechprobe.stats.patching import bh_qvalues, cell_statistics

    corrupt = arrays["corrupt"]
    denom = arrays["clean"] - corrupt
    cells: list[tuple[str, int, int]] = []
    rows = []
    for c, v in values.items():
        for L in layers:
            for i in range(v.shape[1]):
                if not np.all(np.isnan(v[L, i])):
                    cells.append((c, L, i))
                    rows.append(v[L, i] - corrupt)
    effects = np.array(rows)
    st = cell_statistics(
        effects,
        denom,
        arrays["template"],
        n_boot=config.n_boot,
        n_perm=config.n_perm,
        seed=config.seed,
    )
    q = bh_qvalues(st.pvalue)
    for c, v in values.items():
        arrays[c] = v
        for key in ("mean", "ci_low", "ci_high", "pvalue", "qvalue"):
            arrays[f"{c}_{key}"] = np.full(v.shape[:2], np.nan)
    for k, (c, L, i) in enumerate(cells):
        for key, arr in (("mean", st.mean), ("ci_low", st.ci_low), ("ci_high", st.ci_high),
                         ("pvalue", st.pvalue), ("qvalue", q)):  # fmt: skip
            arrays[f"{c}_{key}"][L, i] = arr[k]
    summary["n_cells"] = len(cells)
    summary["n_significant"] = int(np.sum(q < config.alpha))
    order = np.argsort(-np.nan_to_num(np.abs(st.mean), nan=-1.0))[:10]
    summary["top_cells"] = [
        {"component": cells[k][0], "layer": cells[k][1],
         ("pos" if cells[k][0] in POSITION_COMPONENTS else "head"): cells[k][2],
         "mean": float(st.mean[k]), "ci_low": float(st.ci_low[k]),
         "ci_high": float(st.ci_high[k]), "pvalue": float(st.pvalue[k]), "qvalue": float(q[k])}
        for k in order
    ]  # fmt: skip
    return cells, st, q


def _check_reference(
    config: PatchConfig,
    reference: Any,
    tp: Any,
    runner: Any,
    values: dict[str, np.ndarray],
    cells: list[tuple[str, int, int]],
    means: np.ndarray,
) -> dict[str, Any]:
    """Rerun a sample of cells through plain HF hooks; the largest |difference|."""
    import torch

    from mechprobe.reference.patching import reference_patch

    if reference is None or config.reference_cells == 0:
        return {"cells": 0, "max_abs_diff": None, "tolerance": config.tolerance, "passed": True}
    hf = reference[0]
    picked = _reference_cells(cells, means, config.reference_cells, config.seed)
    worst = 0.0
    for k in picked:
        c, L, i = cells[k]
        for g in runner.groups:
            at = i  # a position column is aligned at the end (`align_right`)
            if c in ("resid_pre", "attn_out", "mlp_out"):
                at = i - (runner.n_pos - len(tp.clean[g[0]]))
                if at < 0:
                    continue
            ref = reference_patch(
                hf, torch.tensor([tp.clean[j] for j in g]),
                torch.tensor([tp.corrupt[j] for j in g]), c, L, at, tp.answer[g], tp.wrong[g],
            )  # fmt: skip
            diff = np.abs(ref - values[c][L, i, g])
            worst = float("nan") if not np.all(np.isfinite(diff)) else max(worst, diff.max())
            if not np.isfinite(worst):
                break
    passed = bool(np.isfinite(worst) and worst <= config.tolerance)
    return {"cells": len(picked), "max_abs_diff": float(worst), "tolerance": config.tolerance,
            "passed": passed}  # fmt: skip


def _cell_name(cell: dict[str, Any]) -> str:
    where = f"pos {cell['pos']}" if "pos" in cell else f"head {cell['head']}"
    return f"{cell['component']} L{cell['layer']} {where}"


def finding(result: ExperimentResult) -> Finding:
    """Whether patching localises the behaviour: cells surviving FDR whose interval is above 0."""
    s = result.summary
    n = s["n_pairs"]
    base = (
        f"mean clean logit difference {s['clean_mean']:.2f} (corrupt {s['corrupt_mean']:.2f}), "
        f"clean answer right on {s['clean_accuracy']:.0%} of {n} pairs"
    )
    claim = (
        "Patching clean activations into the corrupted run restores the clean answer at a few "
        "localised cells (activation patching, TransformerLens's convention)."
    )
    if s["failed"]:
        return Finding(
            claim=claim,
            this_run=f"The model fails this pair set ({base}, not above 0): it was not patched.",
            verdict="not tested",
            key="model fails the set",
            sample=f"{n} pairs",
        )
    top = s["top_cells"][0]
    strong = [c for c in s["top_cells"] if c["qvalue"] < s["alpha"] and c["ci_low"] > 0]
    listed = "; ".join(
        f"{_cell_name(c)} {c['mean']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}], q "
        f"{c['qvalue']:.3g}"
        for c in s["top_cells"][:3]
    )
    ref = s["reference"]
    ref_text = (
        "" if ref["max_abs_diff"] is None
        else f" TL vs HF hooks on {ref['cells']} cells: max |diff| {ref['max_abs_diff']:.2g}."
    )  # fmt: skip
    clusters = f"{len(s['templates'])} templates" if s["templates"] else "pairs"
    return Finding(
        claim=claim,
        this_run=f"{base}. {s['n_significant']} of {s['n_cells']} cells survive FDR "
        f"{s['alpha']:g}; strongest normalised effects: {listed}.{ref_text}",
        verdict="holds" if strong else "does not hold",
        key=f"{_cell_name(top)} {top['mean']:.2f}",
        sample=f"{n} pairs; 95% bootstrap over {clusters}; sign-flip p, BH q over "
        f"{s['n_cells']} cells",
    )


def checks(result: ExperimentResult) -> list[dict[str, Any]]:
    """The TL-vs-HF check of the patched logit differences."""
    ref = result.summary.get("reference")
    if not ref or ref["max_abs_diff"] is None:
        return []
    return [{"check": "patched logit difference, TL vs HF hooks",
             "where": f"{ref['cells']} cells x every pair", "value": ref["max_abs_diff"],
             "tolerance": ref["tolerance"], "passed": ref["passed"]}]  # fmt: skip


def passed(result: ExperimentResult) -> bool:
    """Whether the HF rerun agrees (finite and within the tolerance); a failed set passes."""
    ref = result.summary.get("reference")
    return True if ref is None else bool(ref["passed"])


def table(result: ExperimentResult) -> str:
    """Clean/corrupt logit differences, the strongest cells and the HF check."""
    s = result.summary
    lines = [
        f"{s['n_pairs']} pairs ({s['pairs']}): clean logit diff {s['clean_mean']:.3f}, "
        f"corrupt {s['corrupt_mean']:.3f}, clean right on {s['clean_accuracy']:.0%}"
    ]
    if s["failed"]:
        lines.append("the model fails this set (mean clean logit difference <= 0): not patched")
        return "\n".join(lines)
    lines.append(f"{'cell':<24}{'effect':>8}{'95% CI':>18}{'p':>9}{'q':>9}")
    for c in s["top_cells"]:
        ci = f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
        lines.append(
            f"{_cell_name(c):<24}{c['mean']:>8.3f}{ci:>18}{c['pvalue']:>9.3g}{c['qvalue']:>9.3g}"
        )
    ref = s["reference"]
    if ref["max_abs_diff"] is not None:
        verdict = "PASS" if ref["passed"] else "FAIL"
        lines.append(
            f"{verdict}: TL vs HF hooks on {ref['cells']} cells, max |diff| "
            f"{ref['max_abs_diff']:.3e} (tolerance {ref['tolerance']:g})"
        )
    path = "cut-short batched forwards" if s["fast_path"] else "full forwards"
    lines.append(f"{s['n_cells']} cells, {path}, {s['seconds']:.1f} s")
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the largest normalised effect of each position component (for sweeps)."""
    a = result.arrays
    out = {}
    for c in ("resid_pre", "attn_out", "mlp_out"):
        if f"{c}_mean" in a:
            m = a[f"{c}_mean"]
            layers = [L for L in range(m.shape[0]) if not np.all(np.isnan(m[L]))]
            out[f"patch {c}: max effect"] = (layers, [float(np.nanmax(m[L])) for L in layers])
    return out


SPEC = Experiment(
    name=NAME,
    title="Activation patching over minimal pairs",
    help="patch clean activations into corrupted runs of minimal pairs (IOI, negation, a file)",
    config=PatchConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=(
        Figure(
            "positions",
            "Patching the residual stream, attention and MLP outputs by layer and position",
            "One panel per component: colour is the normalised effect of patching the clean "
            "activation at that layer (rows) and position (columns; pairs of different lengths "
            "aligned at their last token, labelled with the tokens of the first pair of the most "
            "common length) into the "
            "corrupted run "
            "(0: nothing restored, 1: the clean logit difference restored, negative: pushed "
            "further away); a dot marks cells that survive the Benjamini-Hochberg FDR.",
        ),
        Figure(
            "heads",
            "Patching each head's output",
            "One panel per head component: colour is the normalised effect of patching one head "
            "(columns) at one layer (rows) at every position; a dot marks cells that survive the "
            "FDR. Heads that restore the answer alone are the candidates of a circuit.",
        ),
        Figure(
            "spread",
            "Per-pair effects of the strongest cells",
            "For the cells with the largest mean effect, every pair's effect (patched minus "
            "corrupt, divided by the mean clean-minus-corrupt difference) as a dot, with the "
            "cell's mean and 95% bootstrap interval: a mean carried by a few pairs shows here.",
        ),
    ),
    table=table,
    finding=finding,
    passed=passed,
    checks=checks,
    needs_reference=True,
    depth_curves=depth_curves,
    in_all=False,
)
