"""Ablate: do the units that decode the classes matter for the model's next-token predictions?

Reads a probe's result (``OUT/negation`` or ``OUT/probe``, or a library `ProbeResult`) and, per
layer and family (``qkv``, ``mlp``):

* **split**: the samples of one of the probe's grouped outer folds are the *eval* samples (at
  most ``max_eval``, balanced over the classes, seeded); the samples of every other fold are the
  *select* samples. Overlapping windows share a fold, so no eval window overlaps a select one.
* **selection**: single-unit probes ``label ~ 1 + activation`` are scored on the select samples
  only (held-out accuracy over the probe's other folds, `mechprobe.stats.heldout.heldout_eval`);
  the top ``k`` units are ablated.
* **ablation** at each eval sample's target position only: ``mean`` (the unit's mean over the
  select samples), ``zero``, or ``resample`` (the unit's value at a random select sample of the
  other class).
* **effects** from the logits at the target and the ``context_post`` positions after it:
  ``kl``, the mean KL(clean || ablated) of the next-token distribution (nats), and ``loss``, the
  mean of log p_clean - log p_ablated of the actual next token where it lies in the window; both
  overall, per class and as the difference between the classes (class-specific effect).
* **controls**: ``draws`` sets of ``k`` random units of the same layer and family, ablated the same
  way; ``p = (1 + #{null >= observed}) / (draws + 1)``; Benjamini-Hochberg over layers x families
  per metric; percentile bootstrap intervals over eval samples resampled by groups of
  overlapping windows.

The ablated passes run on the plain HF model, from the ablated layer on, over the window's
positions from the target on, every unit set in one batch (`mechprobe.experiments.ablate_engine`).

Example:
    >>> from pathlib import Path
    >>> story = "We can go. The keeper walked along the old harbour wall. It is not here. "
    >>> _ = Path("ab.txt").write_text(story * 40, encoding="utf-8")
    >>> from mechprobe.experiments import negation
    >>> probe_cfg = negation.resolve(negation.NegationConfig(text="ab.txt", context_pre=6,
    ...     context_post=2, folds=3, no_controls=True), model_shape(model))
    >>> probe_res = negation.run(probe_cfg, model)
    >>> cfg = resolve(AblateConfig(draws=9, k=2, layers=(1,)), model_shape(model))
    >>> res = run(cfg, model, (hf, tok), AblateInput(probe_res))
    >>> res.arrays["null"].shape  # [family, layer, metric, draw]
    (2, 1, 2, 9)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.errors import MechprobeError
from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment, Figure, Finding, Inputs, option
from mechprobe.models.registry import ModelShape
from mechprobe.validate import (
    Problems,
    check_count,
    check_indices,
    check_number,
    check_seed,
    parse_choices,
    parse_layers,
)

if TYPE_CHECKING:
    from mechprobe.models.types import Model

NAME = "ablate"
FAMILIES = ("qkv", "mlp")
METHODS = ("mean", "zero", "resample")
METRICS = ("kl", "loss")
#: The probe steps ablate reads.
PROBE_STEPS = ("negation", "probe")


@dataclass(frozen=True)
class AblateConfig:
    """Settings of an ablation of a probe's decoding units.

    Attributes:
        source: The probe's step directory (``OUT/negation`` or ``OUT/probe``); None: the
            negation step of the same run or of ``OUT``, else E1's probe run first.
        k: Units ablated per layer and family.
        draws: Random unit sets per layer and family (the null distribution).
        method: ``mean``, ``zero`` or ``resample``.
        layers: Layers ablated; None: the probe's middle layer.
        components: Families among ``qkv``, ``mlp`` (None: those of the probe).
        eval_fold: The probe's outer fold whose samples are measured.
        max_eval: At most this many eval samples (balanced over the classes).
        max_select: At most this many select samples (balanced; 0: all): their forward
            pass, up to the deepest ablated layer, is much of the cost.
        n_boot: Bootstrap resamples of the intervals.
        level: Coverage of the intervals.
        alpha: Level of the Benjamini-Hochberg q-values in the verdict.
        seed: Seed of the eval subsample, the draws, resampling and the bootstrap.
        batch_rows: Rows (unit sets x eval samples) per ablated forward.
        stop_after: Stop drawing random sets for a layer and family once this many reach the
            observed effect on every metric and on the class difference (Besag and Clifford's
            sequential test: p is then at least ``stop_after / draws made`` and more draws
            cannot make it small); 0: always every draw. ``p`` is ``(1 + #{null >= observed})
            / (draws made + 1)``.
    """

    source: str | None = option(
        None,
        "a probe step directory, OUT/negation or OUT/probe (in 'mechprobe all': OUT/negation)",
        flag="--from",
        metavar="DIR",
    )
    k: int = option(10, "units ablated per layer and family: the top k on the select samples (10)")
    draws: int = option(200, "random unit sets per layer and family, the null (200)")
    method: str = option("mean", "mean (default), zero or resample", choices=METHODS)
    layers: tuple[int, ...] | None = option(
        None,
        "layers to ablate, 0,3,5 or 'all' (default: the probe's middle layer)",
        parse=parse_layers,
    )
    components: tuple[str, ...] | None = option(
        None,
        "qkv, mlp or qkv,mlp (default: the probe's)",
        parse=lambda t: parse_choices(t, FAMILIES),
    )
    eval_fold: int = option(0, "the probe's outer fold whose samples are measured (0)")
    max_eval: int = option(16, "at most this many eval samples, balanced over classes (16)")
    max_select: int = option(
        128, "at most this many select samples, balanced over classes (128; 0: all)"
    )
    n_boot: int = option(1000, "bootstrap resamples of the intervals (1000)")
    level: float = option(0.95, "coverage of the intervals (0.95)")
    alpha: float = option(0.05, "level of the BH q-values in the verdict (0.05)")
    seed: int = option(0, "seed of the eval subsample, draws, resampling, bootstrap (0)")
    batch_rows: int = option(256, "rows (unit sets x eval samples) per ablated forward (256)")
    stop_after: int = option(
        10,
        "stop drawing random sets once this many reach the observed effect on every metric and "
        "the class difference (Besag-Clifford; 0: always every draw) (10)",
    )


@dataclass
class AblateInput:
    """What ablate reads: the probe's result and, where known, its data (text and classes).

    Attributes:
        probe: The probe's `ExperimentResult` (arrays and summary).
        data: Its `mechprobe.experiments.probe_samples.ProbeData`; None: read what the probe's
            settings name (a file, a URL, ``gutenberg:ID``, the preset).
        sha256: ``{name: sha256}`` of the inputs, for the manifest.
    """

    probe: ExperimentResult
    data: Any = None
    sha256: dict[str, str] | None = None


def resolve(config: AblateConfig, shape: ModelShape) -> AblateConfig:
    """Validate every setting against the model (layers are checked again against the probe).

    Example:
        >>> resolve(AblateConfig(k=0, draws=-1), model_shape(model))
        Traceback (most recent call last):
        ...
        mechprobe.errors.ConfigError: k: value must be at least 1, got 0; draws: value must be ...
    """
    p = Problems()
    p.check("k", check_count, config.k, 1)
    p.check("draws", check_count, config.draws, 1)
    if config.layers is not None:
        p.check("layers", check_indices, config.layers, shape.n_layers, "layer")
    if config.method not in METHODS:
        p.add("method", f"expected one of {', '.join(METHODS)}, got {config.method!r}")
    if config.components is not None and (
        not config.components or any(c not in FAMILIES for c in config.components)
    ):
        p.add("components", f"expected some of {', '.join(FAMILIES)}")
    p.check("eval_fold", check_count, config.eval_fold, 0)
    p.check("max_eval", check_count, config.max_eval, 2)
    p.check("max_select", check_count, config.max_select, 0)
    p.check("n_boot", check_count, config.n_boot, 0)
    p.check("level", check_number, config.level, low=0.0, high=1.0, inclusive=False, what="level")
    p.check("alpha", check_number, config.alpha, low=0.0, high=1.0, inclusive=False, what="alpha")
    p.check("seed", check_seed, config.seed)
    p.check("batch_rows", check_count, config.batch_rows, 1)
    p.check("stop_after", check_count, config.stop_after, 0)
    p.raise_if_any()
    return config


def read_probe_step(path: str | Path) -> AblateInput:
    """A probe step directory's result, or a one-line error saying why it is not one.

    Example:
        >>> read_probe_step("no/such/dir")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: --from no/such/dir: no such directory
    """
    from mechprobe.io import sha256_file

    path = Path(path)
    if not path.is_dir():
        raise MechprobeError(f"--from {path}: no such directory")
    manifest = path / "manifest.json"
    step = None
    if manifest.is_file():
        try:
            step = json.loads(manifest.read_text(encoding="utf-8")).get("step")
        except (OSError, ValueError):
            step = None
    if step not in PROBE_STEPS or not (path / "arrays.npz").is_file():
        raise MechprobeError(
            f"--from {path}: not a probe step directory (expected OUT/negation or OUT/probe "
            "with its manifest.json and arrays.npz)"
        )
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    return AblateInput(
        ExperimentResult(step, arrays, summary),
        None,
        {"probe_arrays": sha256_file(path / "arrays.npz")},
    )


def inputs(config: AblateConfig) -> Inputs:
    """The probe step named by ``--from`` (None: the runner passes the negation step's result)."""
    if config.source is None:
        return Inputs({})
    got = read_probe_step(config.source)
    return Inputs(dict(got.sha256 or {}), got)


def _probe_config(probe: ExperimentResult) -> Any:
    """The probe's config, rebuilt from its summary's settings."""
    from mechprobe.experiments import negation
    from mechprobe.experiments import probe as probe_mod

    kind = negation.NegationConfig if probe.name == "negation" else probe_mod.ProbeConfig
    settings = dict(probe.summary.get("settings", {}))
    fields = {f for f in kind.__dataclass_fields__}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields
    }
    return kind(**values)


def _windows(probe: ExperimentResult, data: Any, tokenizer: Any) -> tuple[Any, int, int]:
    """The probe's windows, taken again from its text; checked against its stored positions."""
    from mechprobe.experiments.probe_samples import take_samples

    cfg = _probe_config(probe)
    if cfg.store:
        cfg = replace(cfg, store=None, scheduler=None, score_threshold=None)
    samples = take_samples(cfg, tokenizer, data)
    a = probe.arrays
    same = (
        len(samples.positions) == len(a["positions"])
        and np.array_equal(np.asarray(samples.positions), a["positions"])
        and np.array_equal(np.asarray(samples.labels), a["labels"])
    )
    if not same:
        raise MechprobeError(
            "the probe's text or classes changed since it ran: its samples cannot be taken "
            "again (run the probe again)"
        )
    return samples.windows, cfg.context_pre, cfg.context_post


def split_samples(
    labels: np.ndarray,
    folds: np.ndarray,
    eval_fold: int,
    max_eval: int,
    seed: int,
    max_select: int | None = None,
) -> np.ndarray:
    """``select``, ``eval`` or ``unused`` per sample: eval from one fold, balanced, seeded.

    The select samples are the other folds' (at most ``max_select``, balanced, seeded).

    Example:
        >>> split_samples(np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 0, 0, 1, 1]), 0, 2, 0)
        ...     # doctest: +ELLIPSIS
        array([...'select', 'select'], dtype='<U6')
    """
    rng = np.random.default_rng(seed)
    split = np.where(folds == eval_fold, "unused", "select").astype("<U6")
    classes = np.unique(labels)
    per = max(1, max_eval // len(classes))
    for c in classes:
        idx = np.flatnonzero((folds == eval_fold) & (labels == c))
        take = np.sort(rng.permutation(idx)[:per])
        split[take] = "eval"
    if max_select is not None:
        per = max(1, max_select // len(classes))
        for c in classes:
            idx = np.flatnonzero((split == "select") & (labels == c))
            split[rng.permutation(idx)[per:]] = "unused"
    return split


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``multipletests(p, method="fdr_bh")[1]``).

    Example:
        >>> bh_qvalues(np.array([0.01, 0.04, 0.03])).round(3).tolist()
        [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=float)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _default_layers(probe_layers: list[int]) -> list[int]:
    """The middle one of the probe's layers.

    Each ablated layer costs a batched pass of every unit set through the blocks above it and
    the unembedding; ``--layers`` asks for more.

    Example:
        >>> _default_layers(list(range(30))), _default_layers([0, 1])
        ([15], [1])
    """
    return [probe_layers[len(probe_layers) // 2]]


def run(
    config: AblateConfig, model: Model, reference: Any = None, data: Any = None
) -> ExperimentResult:
    """Ablate the decoding units of a probe and their random controls (see the module docstring).

    Args:
        config: The settings, resolved.
        model: The TransformerLens bridge the probe ran on (it collects the select samples).
        reference: The HF ``(model, tokenizer)`` pair: the ablated passes run on it.
        data: An `AblateInput` (or the runner's ``(probe result, its data)``); None: read
            ``config.source``, or, with none, run E1's probe with its defaults first.

    Returns:
        ``ExperimentResult("ablate")``: ``observed``, ``ci_low``, ``ci_high``, ``pvalue``,
        ``qvalue``, ``class_effect``, ``difference`` (+ its interval and p-value), ``null``,
        ``null_difference``, ``selected``, ``ablation_value``, ``selection_accuracy`` and the
        per-sample ``positions``, ``labels``, ``documents``, ``split``, ``probe_index``.
    """
    import torch

    from mechprobe.activations import collect_units
    from mechprobe.experiments.ablate_engine import Engine
    from mechprobe.stats.heldout import grouped_folds, window_groups

    t0, timing = time.perf_counter(), {}
    if isinstance(data, tuple):  # the runner: (the probe step's result, its inputs' data)
        data = AblateInput(data[0], data[1])
    if data is None:
        data = _negation_first(model) if config.source is None else read_probe_step(config.source)
    if reference is None:
        raise MechprobeError("ablate runs its ablated passes on the HF reference model")
    hf = reference[0]
    probe = data.probe
    a, s = probe.arrays, probe.summary
    names = list(s.get("classes", []))
    if len(names) != 2:
        raise MechprobeError(f"ablate needs a probe of two classes, this one has {len(names)}")
    probe_layers = [int(x) for x in a["layers"]]
    layers = list(config.layers) if config.layers is not None else _default_layers(probe_layers)
    families = [f for f in (config.components or s.get("components", [])) if f in FAMILIES]
    if not families:
        raise MechprobeError("ablate: the probe has no qkv or mlp units")
    windows, pre, post = _windows(probe, data.data, model.tokenizer)
    labels = np.asarray(a["labels"]).astype(int)
    positions, documents = np.asarray(a["positions"]), np.asarray(a["documents"])
    if "folds" in a:
        folds = np.asarray(a["folds"]).astype(int)
    else:
        groups = window_groups(positions, pre, post, sequences=documents)
        folds = grouped_folds(labels, groups, 5, seed=config.seed)
    if config.eval_fold > folds.max():
        raise MechprobeError(f"eval_fold: the probe has folds 0..{folds.max()}")
    split = split_samples(
        labels, folds, config.eval_fold, config.max_eval, config.seed, config.max_select or None
    )
    sel, ev = np.flatnonzero(split == "select"), np.flatnonzero(split == "eval")
    timing["prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    acts = collect_units(
        model, windows[torch.as_tensor(sel)], pre, layers, families, progress=False
    )
    timing["collect_select"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    engine = Engine(hf, windows[torch.as_tensor(ev)], pre, layers, rows=config.batch_rows)
    timing["clean"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    y_sel, y_ev = labels[sel], labels[ev]
    sel_folds = np.unique(folds[sel], return_inverse=True)[1]
    got = _ablate_all(config, families, layers, acts, engine, y_sel, y_ev, sel_folds)
    per_sample, selected, ablation_value, sel_acc, null_units = got
    timing["ablate"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    stats = _statistics(config, per_sample, y_ev, positions[ev], documents[ev], pre, post)
    timing["statistics"] = time.perf_counter() - t1
    timing["total"] = time.perf_counter() - t0
    arrays = {
        **stats,
        "selected": selected,
        "ablation_value": ablation_value,
        "selection_accuracy": sel_acc,
        "null_units": null_units,
        "eval_effect": per_sample[:, :, :, 0, :],
        "layers": np.asarray(layers, dtype=np.int64),
        "positions": positions.astype(np.int64),
        "labels": labels.astype(np.int8),
        "documents": documents.astype(np.int64),
        "folds": folds.astype(np.int8),
        "split": split,
        "eval_index": ev.astype(np.int64),
    }
    summary = {
        "probe": probe.name,
        "source": config.source,
        "families": families,
        "metrics": list(METRICS),
        "classes": names,
        "layers": layers,
        "k": config.k,
        "draws": config.draws,
        "method": config.method,
        "context_pre": pre,
        "context_post": post,
        "n_select": int(sel.size),
        "n_eval": int(ev.size),
        "n_eval_by_class": {names[c]: int((y_ev == c).sum()) for c in (0, 1)},
        "eval_fold": config.eval_fold,
        "rows": _rows(arrays, families, layers, names),
        "timing_s": timing,
        "settings": asdict(config),
    }
    result = ExperimentResult(NAME, arrays, summary)
    summary["causal_line"] = causal_line(result)
    return result


def _negation_first(model: Model) -> AblateInput:
    """No probe given nor in OUT: E1's probe with its defaults, run now on ``model``."""
    from mechprobe.experiments import negation
    from mechprobe.models.registry import model_shape

    config = negation.resolve(negation.NegationConfig(), model_shape(model))
    return AblateInput(negation.run(config, model))


def _ablate_all(
    config: AblateConfig,
    families: list[str],
    layers: list[int],
    acts: dict[str, Any],
    engine: Any,
    y_sel: np.ndarray,
    y_ev: np.ndarray,
    sel_folds: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Select the top-k units on the select samples, draw the null sets, ablate them all.

    Returns ``(per-sample effects [family, layer, metric, set, eval] (set 0: the selected
    units), selected units, ablation values, selection accuracies, null units)``.
    """
    import torch

    from mechprobe.stats.heldout import heldout_eval

    rng = np.random.default_rng(config.seed)
    n_f, n_l, n_m, R, k = len(families), len(layers), len(METRICS), config.draws, config.k
    per_sample = np.full((n_f, n_l, n_m, R + 1, len(y_ev)), np.nan)
    selected = np.zeros((n_f, n_l, k), dtype=np.int64)
    ablation_value = np.full((n_f, n_l, k), np.nan)
    sel_acc = np.full((n_f, n_l, k), np.nan)
    null_units = np.zeros((n_f, n_l, R, k), dtype=np.int64)
    # resample: for each eval sample and unit set, a random select sample of the other class
    donors = np.empty((R + 1, len(y_ev)), dtype=np.int64)
    for j, c in enumerate(y_ev):
        donors[:, j] = rng.choice(np.flatnonzero(y_sel != c), size=R + 1)
    for fi, fam in enumerate(families):
        for li, layer in enumerate(layers):
            x = acts[fam][:, li, :].double().numpy()
            n_units = x.shape[1]
            if k > n_units:
                raise MechprobeError(f"k: {fam} has only {n_units} units per layer")
            acc = heldout_eval(x, y_sel, sel_folds).accuracy
            order = np.argsort(-np.nan_to_num(acc, nan=-1.0), kind="stable")[:k]
            selected[fi, li], sel_acc[fi, li] = order, acc[order]
            draws = np.stack([rng.choice(n_units, size=k, replace=False) for _ in range(R)])
            null_units[fi, li] = draws
            sets = np.concatenate([order[None], draws])  # [R + 1, k]
            values = _values(config.method, x, sets, donors)
            if config.method != "resample":
                ablation_value[fi, li] = values[0, 0]
            chunk = max(1, config.batch_rows // len(y_ev))
            for s0 in range(0, R + 1, chunk):
                part = slice(s0, min(s0 + chunk, R + 1))
                out = engine.effects(
                    fam,
                    layer,
                    torch.as_tensor(sets[part]),
                    torch.as_tensor(values[part], dtype=torch.float32),
                )
                for mi, metric in enumerate(METRICS):
                    per_sample[fi, li, mi, part] = out[metric].numpy()
                if _settled(per_sample[fi, li, :, : part.stop], y_ev, config.stop_after):
                    break
    return per_sample, selected, ablation_value, sel_acc, null_units


def _settled(effects: np.ndarray, y: np.ndarray, stop_after: int) -> bool:
    """Whether ``stop_after`` random sets reach the observed effect everywhere.

    Every metric and the class difference count (Besag and Clifford's sequential Monte Carlo
    test: more draws cannot make the p-value small); ``effects`` is ``[metric, sets so far,
    eval]``, set 0 the observed.

    Example:
        >>> e = np.zeros((2, 12, 4)); e[:, 0] = -1.0
        >>> _settled(e, np.array([0, 0, 1, 1]), 10), _settled(e, np.array([0, 0, 1, 1]), 0)
        (True, False)
    """
    if stop_after <= 0:
        return False
    means = effects.mean(-1)
    diff = effects[..., y == 1].mean(-1) - effects[..., y == 0].mean(-1)
    for m, d in zip(means, diff, strict=True):
        if not np.isfinite(m[0]):
            continue
        if (m[1:] >= m[0]).sum() < stop_after or (np.abs(d[1:]) >= abs(d[0])).sum() < stop_after:
            return False
    return True


def _values(method: str, x: np.ndarray, sets: np.ndarray, donors: np.ndarray) -> np.ndarray:
    """The value of each unit of each set at each eval sample's target ``[sets, eval, k]``."""
    n_sets, n_eval, k = sets.shape[0], donors.shape[1], sets.shape[1]
    if method == "zero":
        return np.zeros((n_sets, n_eval, k))
    if method == "mean":
        means = x.mean(0)[sets]  # [sets, k]
        return np.broadcast_to(means[:, None, :], (n_sets, n_eval, k)).copy()
    return x[donors[:, :, None], sets[:, None, :]]


def _statistics(
    config: AblateConfig,
    per_sample: np.ndarray,
    y: np.ndarray,
    positions: np.ndarray,
    documents: np.ndarray,
    pre: int,
    post: int,
) -> dict[str, np.ndarray]:
    """Observed effects, per class, differences, null draws, p, BH q and bootstrap intervals."""
    from mechprobe.stats.bootstrap import percentile_interval
    from mechprobe.stats.heldout import window_groups

    _n_f, _n_l, n_m = per_sample.shape[:3]
    c0, c1 = y == 0, y == 1
    mean_all = per_sample.mean(-1)  # [f, l, m, sets]
    by_class = np.stack([per_sample[..., c0].mean(-1), per_sample[..., c1].mean(-1)], -1)
    diff = by_class[..., 1] - by_class[..., 0]
    observed, null = mean_all[..., 0], mean_all[..., 1:]
    obs_diff, null_diff = diff[..., 0], diff[..., 1:]
    drawn = np.isfinite(null[:, :, :1]).sum(-1)  # draws made (fewer where they stopped early)
    drawn = np.broadcast_to(drawn, observed.shape)
    pvalue = (1 + (null >= observed[..., None]).sum(-1)) / (drawn + 1)
    diff_p = (1 + (np.abs(null_diff) >= np.abs(obs_diff)[..., None]).sum(-1)) / (drawn + 1)
    qvalue = np.full_like(pvalue, np.nan)
    for mi in range(n_m):
        p = pvalue[:, :, mi]
        ok = np.isfinite(observed[:, :, mi])
        q = np.full(p.shape, np.nan)
        q[ok] = bh_qvalues(p[ok])
        qvalue[:, :, mi] = q
    # bootstrap over eval samples, resampled by groups of overlapping windows
    groups = window_groups(positions, pre, post, sequences=documents)
    gid = np.unique(groups, return_inverse=True)[1]
    n_g = int(gid.max()) + 1 if gid.size else 0
    rng = np.random.default_rng(config.seed + 1)
    eff = per_sample[..., 0, :]  # [f, l, m, eval]
    boots, dboots = [], []
    member = np.stack([gid == g for g in range(n_g)]).astype(float)  # [groups, eval]
    for _ in range(config.n_boot):
        w = np.bincount(rng.integers(0, n_g, n_g), minlength=n_g) @ member  # sample weights
        tot = w.sum()
        boots.append((eff * w).sum(-1) / tot)
        w0, w1 = w * c0, w * c1
        with np.errstate(invalid="ignore", divide="ignore"):
            dboots.append((eff * w1).sum(-1) / w1.sum() - (eff * w0).sum(-1) / w0.sum())
    level = config.level
    if boots:
        lo, hi = percentile_interval(np.stack(boots), level)
        # a resample without one class has no difference: those replicates are left out
        dlo, dhi = np.nanquantile(np.stack(dboots), [(1 - level) / 2, (1 + level) / 2], axis=0)
    else:
        lo = hi = dlo = dhi = np.full(observed.shape, np.nan)
    return {
        "observed": observed,
        "ci_low": np.asarray(lo),
        "ci_high": np.asarray(hi),
        "pvalue": pvalue,
        "qvalue": qvalue,
        "class_effect": by_class[..., 0, :],
        "difference": obs_diff,
        "difference_ci_low": np.asarray(dlo),
        "difference_ci_high": np.asarray(dhi),
        "difference_pvalue": diff_p,
        "null": null,
        "null_difference": null_diff,
        "null_mean": np.nanmean(null, -1),
        "draws_made": drawn.astype(np.int64),
    }


def _rows(
    arrays: dict[str, np.ndarray], families: list[str], layers: list[int], names: list[str]
) -> list[dict[str, Any]]:
    """One JSON row per family x layer x metric (the table's rows)."""
    rows = []
    for fi, fam in enumerate(families):
        for li, layer in enumerate(layers):
            for mi, metric in enumerate(METRICS):
                at = (fi, li, mi)
                rows.append(
                    {
                        "family": fam,
                        "layer": layer,
                        "metric": metric,
                        **{
                            key: float(arrays[key][at])
                            for key in (
                                "observed",
                                "ci_low",
                                "ci_high",
                                "pvalue",
                                "qvalue",
                                "null_mean",
                                "draws_made",
                                "difference",
                                "difference_ci_low",
                                "difference_ci_high",
                                "difference_pvalue",
                            )
                        },
                        **{
                            f"observed_{n}": float(arrays["class_effect"][fi, li, mi, c])
                            for c, n in enumerate(names)
                        },
                    }
                )
    return rows


def family_verdicts(result: ExperimentResult, alpha: float | None = None) -> dict[str, Any]:
    """Per family: do decoding units matter more than random ones, and class-specifically?

    A family *matters* when some layer's KL effect has BH q below ``alpha``; it is *class
    specific* when, at such a layer, the difference between the classes' effects has an
    interval excluding 0 and beats the random sets' differences (p below ``alpha``).

    Example:
        >>> family_verdicts(ExperimentResult("ablate", {}, {"rows": [], "families": []}))
        {}
    """
    s = result.summary
    alpha = alpha if alpha is not None else s.get("settings", {}).get("alpha", 0.05)
    out = {}
    for fam in s["families"]:
        rows = [r for r in s["rows"] if r["family"] == fam and r["metric"] == "kl"]
        sig = [r for r in rows if r["qvalue"] < alpha]
        specific = [
            r
            for r in sig
            if r["difference_pvalue"] < alpha
            and (r["difference_ci_low"] > 0 or r["difference_ci_high"] < 0)
        ]
        best = max(rows, key=lambda r: r["observed"] / max(r["null_mean"], 1e-12), default=None)
        out[fam] = {
            "matters": bool(sig),
            "class_specific": bool(specific),
            "layers_matter": [r["layer"] for r in sig],
            "best": best,
        }
    return out


def finding(result: ExperimentResult) -> Finding:
    """Whether the decoding units matter more than random units, per family, with numbers."""
    from mechprobe.experiments.spec import verdict_of

    s = result.summary
    v = family_verdicts(result)
    parts = []
    for fam, r in v.items():
        b = r["best"]
        if b is None:
            continue
        parts.append(
            f"{fam}: top-{s['k']} units at layer {b['layer']} KL {b['observed']:.2e} nats "
            f"[{b['ci_low']:.2e}, {b['ci_high']:.2e}] vs random {b['null_mean']:.2e} "
            f"(p {b['pvalue']:.3f}, q {b['qvalue']:.3f}); class difference "
            f"{b['difference']:+.2e} [{b['difference_ci_low']:.2e}, {b['difference_ci_high']:.2e}]"
            f"; matters at layers {r['layers_matter'] or 'none'}"
            f"{', class-specific' if r['class_specific'] else ''}"
        )
    matters = [r["matters"] for r in v.values()]
    holds = all(matters) if matters else None
    return Finding(
        claim="The units that decode the classes matter for the next-token predictions more "
        "than random units of the same layer and family (a causal test of the probe).",
        this_run="; ".join(parts) + f". {s['method']} ablation of {s['n_eval']} held-out samples, "
        f"{s['draws']} random sets.",
        verdict=verdict_of(holds, partly=any(matters)),
        key="; ".join(_key(f, r) for f, r in v.items()),
        sample=f"{s['n_eval']} eval samples, {s['n_select']} select samples, R={s['draws']}",
    )


def _key(family: str, verdict: dict[str, Any]) -> str:
    """``mlp: matters (KL 2.3e-03 vs random 5.3e-05, p 0.005)``: a family's verdict and numbers.

    Example:
        >>> _key("mlp", {"matters": False, "best": None})
        'mlp: no effect'
    """
    b, word = verdict["best"], "matters" if verdict["matters"] else "no effect"
    if b is None:
        return f"{family}: {word}"
    return (
        f"{family}: {word} (KL {b['observed']:.1e} vs random {b['null_mean']:.1e}, "
        f"p {b['pvalue']:.3f})"
    )


def causal_line(result: ExperimentResult) -> str:
    """One sentence for E1's finding: the ablation's verdict per family.

    Example:
        >>> causal_line(ExperimentResult("ablate", {}, {"rows": [], "families": [], "k": 10}))
        'Ablation (causal): not run.'
    """
    v = family_verdicts(result)
    if not v:
        return "Ablation (causal): not run."
    bits = []
    for fam, r in v.items():
        b = r["best"]
        word = "matter" if r["matters"] else "do not matter more than random units"
        spec = ", class-specifically" if r["class_specific"] else ""
        bits.append(
            f"{fam} top-{result.summary['k']} units {word}{spec} "
            f"(layer {b['layer']}: KL {b['observed']:.2e} vs random {b['null_mean']:.2e}, "
            f"p {b['pvalue']:.3f})"
        )
    return "Ablation (causal): " + "; ".join(bits) + "."


def table(result: ExperimentResult) -> str:
    """Per family x layer x metric: observed, interval, null mean, p, q, class difference."""
    lines = [
        f"{'family':<6} {'layer':>5} {'metric':<6} {'observed':>10} {'ci':>23} {'null':>10} "
        f"{'p':>6} {'q':>6} {'difference':>11}"
    ]
    for r in result.summary["rows"]:
        lines.append(
            f"{r['family']:<6} {r['layer']:>5} {r['metric']:<6} {r['observed']:>10.3e} "
            f"[{r['ci_low']:>10.3e},{r['ci_high']:>10.3e}] {r['null_mean']:>10.3e} "
            f"{r['pvalue']:>6.3f} {r['qvalue']:>6.3f} {r['difference']:>+11.3e}"
        )
    lines.append(finding(result).this_run)
    return "\n".join(lines)


def depth_curves(result: ExperimentResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per family: the decoding units' KL over the random units' mean KL, per layer (sweeps).

    Example:
        >>> depth_curves(ExperimentResult("ablate", {}, {"rows": [], "families": []}))
        {}
    """
    out = {}
    for fam in result.summary["families"]:
        rows = [r for r in result.summary["rows"] if r["family"] == fam and r["metric"] == "kl"]
        out[f"KL decoding / random units, {fam}"] = (
            [r["layer"] for r in rows],
            [r["observed"] / r["null_mean"] if r["null_mean"] > 0 else float("nan") for r in rows],
        )
    return out


FIGURES = (
    Figure(
        "null",
        "Decoding units against random units",
        "Per family and layer, the KL effect (nats) of ablating the top-k decoding units at "
        "each eval sample's target (diamond, with its bootstrap interval) against the same "
        "ablation of random k-unit sets of that layer and family (grey dots, the null): a "
        "diamond above the grey cloud means the decoding units matter more than random ones.",
    ),
)

SPEC = Experiment(
    name=NAME,
    title="Ablate: do the decoding units matter?",
    help="ablate a probe's top decoding units vs random units (reads --from OUT/negation)",
    config=AblateConfig,
    run=run,
    resolve=resolve,
    inputs=inputs,
    figures=FIGURES,
    table=table,
    finding=finding,
    needs_reference=True,
    reads="negation",
    depth_curves=depth_curves,
)
