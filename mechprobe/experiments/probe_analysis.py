"""The work of `mechprobe.experiments.probe`: collect the units, run every statistic, arrange.

Kept apart from the spec module so that importing the spec (for ``--help``) stays cheap; every
statistic is computed in `mechprobe.stats`; this module orchestrates and arranges the arrays.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.experiments.probe_samples import ProbeSamples, contrasts, examples
from mechprobe.experiments.result import ExperimentResult

if TYPE_CHECKING:
    from mechprobe.models.types import Model


def analyse(config: Any, model: Model, samples: ProbeSamples) -> ExperimentResult:
    """Collect the units at every sample and run every probe statistic (see `probe`).

    With ``config.store`` the units go through an activation store and are fitted from it
    (`mechprobe.experiments.probe_store`); the held-out statistics and controls are skipped.
    """
    from mechprobe.units import layout_of

    layout, timing = layout_of(model), dict[str, float]()
    pairs = contrasts(samples.names, samples.labels)

    def groups_of(fam: str, width: int) -> dict[str, slice]:
        return layout.groups(fam, width) if fam == "qkv" else {fam: slice(0, width)}

    heat = HeatCapture.for_probe(config, model, samples)
    acts, stored, config = _collect(config, model, samples, len(pairs), groups_of, timing, heat)
    t0 = time.perf_counter()
    folds, heldout_note, config = _heldout_folds(config, samples)
    control, shuffled = _control_labels(config, samples)
    arrays = _sample_arrays(config, model, samples, control, folds)
    if stored is None:
        results = _fit_families(config, acts, pairs, groups_of, folds, control, shuffled)
    else:
        results = iter(stored.results.items())
    fits, tables = _arrange(arrays, results, pairs, list(config.layers))
    if stored is None:
        timing["fit"] = time.perf_counter() - t0
        widths = {fam: int(acts[fam].shape[2]) for fam in config.components}
        from mechprobe.experiments.probe_layers import layer_probes

        lp = layer_probes(
            config,
            model,
            samples,
            acts,
            pairs,
            folds,
            control,
            shuffled,
            tables.pop("best_correct", {}),
            tables["per_layer"],
            arrays,
            timing,
            note=heldout_note,
            lexical=tables["lexical_baseline"],
        )
    else:
        arrays.update(stored.arrays)
        widths = stored.widths
    if config.save_activations:
        for fam in config.components:
            arrays[f"{fam}_acts"] = acts[fam].float().numpy()
    t0 = time.perf_counter()
    column = (
        stored.column
        if stored is not None
        else lambda fam, row, unit: acts[fam][:, row, unit].double().numpy()
    )
    best = best_unit_details(
        config,
        model,
        samples,
        column,
        fits,
        list(config.layers),
        arrays,
        scale_all=stored is None,
        captured=heat if stored is None else None,
    )
    timing["best_unit"] = time.perf_counter() - t0
    summary = _summary(config, model, samples, pairs, tables, best, timing)
    if stored is None:
        summary["layer_probes"] = lp
    summary["n_units"] = {
        g: sl.stop - sl.start
        for fam in config.components
        for g, sl in groups_of(fam, widths[fam]).items()
    }
    if stored is not None:
        summary["store"] = stored.info
    if heldout_note is not None:
        summary["heldout_note"] = heldout_note
    return ExperimentResult("probe", arrays, summary)


def _collect(
    config: Any,
    model: Model,
    samples: ProbeSamples,
    n_pairs: int,
    groups_of: Callable[[str, int], dict[str, slice]],
    timing: dict[str, float],
    heat: HeatCapture | None = None,
) -> tuple[dict[str, Any], Any, Any]:
    """The units at every sample (and the embedding for the lexical baseline), or a store run.

    Returns ``(activations by family, the store's results or None, the config)``; a store run
    turns the held-out statistics and controls off in the config it returns. With ``heat``, the
    windows of the last class go through the model in a pass of their own, which also fills
    ``heat`` (see `HeatCapture`).
    """
    from mechprobe.activations import collect, collect_units
    from mechprobe.hooks import EMBED

    pre, stored, t0 = config.context_pre, None, time.perf_counter()
    acts: dict[str, Any] = {}
    if config.store:
        from mechprobe.experiments.probe_store import store_results

        stored = store_results(config, model, samples, n_pairs, groups_of, timing)
        config = replace(config, folds=0, no_controls=True)  # not computed from a store
    elif heat is None:
        acts = collect_units(
            model,
            samples.windows,
            pre,
            list(config.layers),
            config.components,
            batch_size=config.batch_size,
        )
    else:
        acts = heat.collect_units(model, samples, config)
    if not config.no_controls:
        embed = collect(model, samples.windows, [EMBED], positions=pre, progress=False)[EMBED]
        acts["embed"] = embed[:, None, :]
    if stored is None:
        timing["forward"] = time.perf_counter() - t0
    return acts, stored, config


def _heldout_folds(config: Any, samples: ProbeSamples) -> tuple[Any, str | None, Any]:
    """The grouped folds (or fewer, or None with the reason) and the config that matches."""
    from mechprobe.stats.heldout import window_groups

    if not config.folds:
        return None, None, config
    groups = window_groups(
        samples.positions, config.context_pre, config.context_post, sequences=samples.documents
    )
    folds, note = _folds_or_fewer(samples.labels, groups, config.folds, config.seed)
    made = 0 if folds is None else int(folds.max()) + 1
    return folds, note, (config if made == config.folds else replace(config, folds=made))


def _control_labels(config: Any, samples: ProbeSamples) -> tuple[Any, Any]:
    """The control task's labels (word types get random classes) and the shuffled labels."""
    from mechprobe.stats.controls import control_task_labels, shuffled_labels

    if config.no_controls:
        return None, None
    return (
        control_task_labels(samples.word_types, samples.labels, config.seed),
        shuffled_labels(samples.labels, config.seed),
    )


def _sample_arrays(
    config: Any, model: Model, samples: ProbeSamples, control: Any, folds: Any
) -> dict[str, np.ndarray]:
    """The per-sample arrays: labels, where each sample sits, its token, control label, fold."""
    pre = config.context_pre
    arrays: dict[str, np.ndarray] = {
        "labels": samples.labels.astype(np.int8),
        "positions": samples.positions.astype(np.int64),
        "documents": np.asarray(samples.documents, dtype=np.int64),
        "tokens": np.asarray(
            [model.tokenizer.decode([int(t)]) for t in samples.windows[:, pre]], dtype=str
        ),
        "layers": np.asarray(list(config.layers), dtype=np.int64),
    }
    if control is not None:
        arrays["control_labels"] = np.asarray(control).astype(np.int8)
    if folds is not None:
        arrays["folds"] = folds.astype(np.int8)
    return arrays


def _fit_families(
    config: Any,
    acts: dict[str, Any],
    pairs: list[tuple[str, np.ndarray]],
    groups_of: Callable[[str, int], dict[str, slice]],
    folds: Any,
    control: Any,
    shuffled: Any,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Every family's probes, one per contrast (`mechprobe.stats.probe.analyse_family`)."""
    from mechprobe.stats.probe import analyse_family

    def one_vs_rest(labels: Any, k: int) -> Any:
        return None if labels is None else (labels == (k if len(pairs) > 1 else 1)).astype(np.int8)

    for fam, x in acts.items():
        results = []
        for k, (name, y) in enumerate(pairs):
            tag = fam if len(pairs) == 1 else f"{fam}:{name}"
            results.append(
                analyse_family(
                    x,
                    y,
                    groups_of(fam, x.shape[2]),
                    alpha=config.alpha,
                    correction=config.correction,
                    folds=folds,
                    control=one_vs_rest(control, k),
                    shuffled=one_vs_rest(shuffled, k),
                    method=config.method,
                    firth_separated=not config.no_firth,
                    desc=f"fit {tag}",
                )
            )
        yield fam, results


def _arrange(
    arrays: dict[str, np.ndarray],
    results: Iterator[tuple[str, list[dict[str, Any]]]],
    pairs: list[tuple[str, np.ndarray]],
    layers: list[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add each family's arrays; return its fits and the summary's tables.

    The tables: ``per_layer`` (per layer and group, its figures and p threshold),
    ``thresholds``, ``fit_flags``, ``lexical_baseline`` and ``best_correct`` (per family, the
    nested best unit's held-out correctness ``[layer, samples]`` on the real and control labels
    of the first contrast, or None).
    """
    fits: dict[str, Any] = {}
    per_layer: list[dict[str, Any]] = [{"layer": layer} for layer in layers]
    tables: dict[str, Any] = {
        "thresholds": {},
        "fit_flags": {},
        "lexical_baseline": {},
        "per_layer": per_layer,
        "best_correct": {},
    }
    for fam, res in results:
        held, ctrl = res[0]["heldout"], res[0]["control"]
        tables["best_correct"][fam] = (
            None if held is None else held["best_correct"],
            None if ctrl is None else ctrl["best_correct"],
        )
        if held is not None:
            arrays[f"{fam}_nested_best_unit"] = held["best_unit"]
        if fam == "embed":
            g = res[0]["groups"]["embed"]
            tables["lexical_baseline"] = {
                key: float(v[0]) for key, v in g.items() if not key.startswith("n_")
            }
            if res[0]["heldout"] is not None:
                arrays["embed_heldout_accuracy"] = _stack(res, "heldout", "accuracy")
            continue
        fits[fam] = res[0]["fits"]
        _arrays(arrays, fam, res)
        tables["thresholds"][fam] = [r["p_threshold"].tolist() for r in res]
        tables["fit_flags"][fam] = {
            k: int(res[0]["groups"][fam][k].sum())
            for k in ("n_separated", "n_constant", "n_not_converged")
        }
        for (name, _), r in zip(pairs, res, strict=True):
            for group, figs in r["groups"].items():
                key = group if len(pairs) == 1 else f"{group}:{name}"
                for i, row in enumerate(per_layer):
                    row[key] = {k: v[i].item() for k, v in figs.items()}
                    row[key]["p_threshold"] = float(r["p_threshold"][i])
    return fits, tables


def _summary(
    config: Any,
    model: Model,
    samples: ProbeSamples,
    pairs: list[tuple[str, np.ndarray]],
    tables: dict[str, Any],
    best: dict[str, Any] | None,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The probe's JSON summary (everything but ``n_units`` and the store's part)."""
    from mechprobe.models.registry import model_shape
    from mechprobe.units import layout_of

    labels, layout = samples.labels, layout_of(model)
    pairs_of_types = list(zip(samples.word_types, labels, strict=True))
    matched = {
        n: dict(Counter(t for t, y in pairs_of_types if y == k).most_common(25))
        for k, n in enumerate(samples.names)
    }
    return {
        "data": samples.source,
        "classes": list(samples.names),
        "contrasts": [name for name, _ in pairs],
        "n_tokens": samples.n_tokens,
        "n_samples": {n: int((labels == k).sum()) for k, n in enumerate(samples.names)},
        "chance_accuracy": float(np.bincount(labels).max() / len(labels)),
        "n_found": samples.n_found,
        "layers": list(config.layers),
        "components": list(config.components),
        "n_units": {},
        "qkv_layout": {
            "n_heads": layout.n_heads,
            "n_kv_heads": layout.n_kv_heads,
            "d_head": layout.d_head,
            "slices": {c: [s.start, s.stop] for c, s in layout.slices().items()},
        },
        "alpha": config.alpha,
        "correction": config.correction,
        "method": config.method,
        "folds": config.folds,
        "thresholds": tables["thresholds"],
        "fit_flags": tables["fit_flags"],
        "lexical_baseline": tables["lexical_baseline"],
        "detail_layer": config.detail_layer,
        "per_layer": tables["per_layer"],
        "best_unit": best,
        "matched_tokens": matched,
        "examples": examples(model.tokenizer, samples, config.context_pre),
        "model_shape": model_shape(model).as_dict(),
        "timing_s": timing,
    }


def _folds_or_fewer(
    labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> tuple[np.ndarray | None, str | None]:
    """Grouped folds; fewer (down to 2) when the groups allow no more; None when not even 2.

    The held-out statistics are an addition to the course's in-sample ones: when they cannot
    be made, the note says why and the rest of the probe goes on.

    Example:
        >>> y = np.array([0, 1] * 6)
        >>> _folds_or_fewer(y, np.arange(12) // 4, 5, 0)[1]
        'held-out statistics over 3 folds, not 5: class 0 occurs in only 3 group(s) of ...'
        >>> _folds_or_fewer(y, np.zeros(12, dtype=int), 5, 0)
        (None, 'held-out statistics unavailable: class 0 occurs in only 1 group(s) of ...')
    """
    import sys

    from mechprobe.errors import MechprobeError
    from mechprobe.stats.heldout import grouped_folds

    first = None
    for k in range(n_folds, 1, -1):
        try:
            folds = grouped_folds(labels, groups, k, seed=seed)
        except MechprobeError as exc:
            first = first or str(exc).split(": use fewer")[0]
            continue
        note = (
            None if k == n_folds else f"held-out statistics over {k} folds, not {n_folds}: {first}"
        )
        if note:
            print(f"[probe] {note}", file=sys.stderr)
        return folds, note
    note = f"held-out statistics unavailable: {first}"
    print(f"[probe] {note}; the in-sample statistics are computed", file=sys.stderr)
    return None, note


def _stack(results: list[dict[str, Any]], part: str, key: str) -> np.ndarray:
    values = [r[part][key] for r in results]
    return values[0] if len(values) == 1 else np.stack(values)


def _arrays(arrays: dict[str, np.ndarray], fam: str, results: list[dict[str, Any]]) -> None:
    """The course's arrays (a leading class axis for more than two classes) and the new ones."""
    for key in ("beta", "pvalue", "accuracy", "converged", "separated"):
        arrays[f"{fam}_{key}"] = _stack(results, "fits", key)
    arrays[f"{fam}_significant"] = _stack(
        [{"m": {"s": r["significant"]}} for r in results], "m", "s"
    )
    for part, keys in (
        ("heldout", ("accuracy", "auc")),
        ("control", ("accuracy",)),
        ("firth", ("beta", "pvalue")),
    ):
        if results[0][part] is not None:
            for key in keys:
                name = "control_accuracy" if part == "control" else f"{part}_{key}"
                arrays[f"{fam}_{name}"] = _stack(results, part, key)


def best_unit_details(
    config: Any,
    model: Model,
    samples: ProbeSamples,
    column: Callable[[str, int, int], np.ndarray],
    fits: dict[str, dict[str, np.ndarray]],
    layers: list[int],
    arrays: dict[str, np.ndarray],
    *,
    scale_all: bool = True,
    captured: HeatCapture | None = None,
) -> dict[str, Any] | None:
    """The best unit (course rule or accuracy rule), its probabilities and token heatmap.

    The course's rule: the largest beta among the significant units of the detail layer's MLP
    (or the first family without an MLP); the accuracy rule, or the course's rule finding no
    significant unit: the most accurate converged unit of any layer. Adds
    ``best_unit_probability``, ``best_unit_heatmap`` (raw activations over the first
    ``heatmap_windows`` windows of the last class) and ``best_unit_heatmap_scaled`` (the
    course's colouring: min-max over every window of that class and position, squared; with
    ``scale_all`` False over the shown windows only, so that a store run does not take a second
    forward pass over a whole class). Where ``captured`` (filled by the main forward pass) holds
    the best unit's layer, the heatmap comes from it; otherwise a forward pass over the class's
    windows, ended at the unit's layer, computes it.
    """
    from mechprobe.hooks import hook_name
    from mechprobe.stats.probe import best_unit, course_best_unit
    from mechprobe.units import layout_of

    rule, found = config.best_unit, None
    if rule == "course":
        fam = "mlp" if "mlp" in fits else next(iter(fits))
        row = layers.index(config.detail_layer)
        sig = arrays[f"{fam}_significant"]
        unit_at = course_best_unit(
            fits[fam]["beta"][row], sig[row] if sig.ndim == 2 else sig[0, row]
        )
        found = None if unit_at is None else (fam, row, unit_at)
        if found is None:
            rule = "accuracy (the course's rule found no significant unit)"
    if found is None:
        found = best_unit(fits)
    if found is None:
        return None
    fam, row, unit = found
    f, layer, pre = fits[fam], layers[row], config.context_pre
    if fam == "qkv":
        comp, head, dim = layout_of(model).locate(unit)
        col = unit - layout_of(model).slice(comp).start
        hook, where = hook_name(layer, comp), {"group": comp, "head": head, "dim": dim}
    else:
        from mechprobe.hooks import UNIT_POINTS

        hook, col, where = hook_name(layer, UNIT_POINTS[fam][0]), unit, {"group": fam, "unit": unit}
    xu = column(fam, row, unit)
    with np.errstate(over="ignore"):
        arrays["best_unit_probability"] = 1.0 / (
            1.0 + np.exp(-(f["intercept"][row, unit] + f["beta"][row, unit] * xu))
        )
    last = len(samples.names) - 1
    rows = np.flatnonzero(samples.labels == last)
    shown = rows[: config.heatmap_windows]
    if captured is not None and captured.hook == hook:
        heat, low, high = captured.unit(col)
    else:
        heat = _unit_pass(config, model, samples, rows if scale_all else shown, hook, col)
        low, high = heat.min(), heat.max()
    lo, hi = max(0, pre - 5), samples.windows.shape[1] - 1
    scaled = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    arrays["best_unit_heatmap"] = heat[: len(shown), lo : hi + 1]
    arrays["best_unit_heatmap_scaled"] = scaled[: len(shown), lo : hi + 1] ** 2
    decode = model.tokenizer.decode
    return {
        "rule": rule,
        "component": fam,
        "layer": layer,
        "unit": unit,
        "hook": hook,
        "hook_column": col,
        **where,
        "accuracy": float(f["accuracy"][row, unit]),
        "beta": float(f["beta"][row, unit]),
        "intercept": float(f["intercept"][row, unit]),
        "pvalue": float(f["pvalue"][row, unit]),
        "heatmap_class": samples.names[last],
        "heatmap_scaled_over": "every window of the class" if scale_all else "the shown windows",
        "heatmap_offsets": list(range(lo - pre, hi - pre + 1)),
        "heatmap_positions": [int(p) for p in samples.positions[shown]],
        "heatmap_tokens": [
            [decode([int(t)]) for t in samples.windows[r, lo : hi + 1]] for r in shown
        ],
    }


def _unit_pass(
    config: Any, model: Model, samples: ProbeSamples, rows: np.ndarray, hook: str, col: int
) -> np.ndarray:
    """One unit's activations at every position of the windows ``rows`` (float64).

    The forward pass ends at the unit's layer (`mechprobe.activations.collect`).
    """
    from mechprobe.activations import collect
    from mechprobe.units import heads_to_units

    def pick(name: str, t: Any) -> Any:
        return (heads_to_units(t) if t.ndim == 4 else t)[..., col]

    got = collect(
        model,
        samples.windows[rows],
        [hook],
        batch_size=config.batch_size,
        transform=pick,
        progress=False,
    )[hook]
    return got.double().numpy()


class HeatCapture:
    """The course's best-unit heatmap, read on the way by the probe's main forward pass.

    The course's best unit is an MLP unit of the detail layer, and its heatmap needs that unit's
    activation at every position of every window of the last class (the colour scale) and of
    the first ``shown`` of them (the picture). Rather than a second forward pass over the class
    once the unit is known, the main pass runs the last class's windows whole (every position,
    in batches of their own) and this hook keeps, for every unit of that layer, the minimum and
    maximum over them and every position, and the first ``shown`` windows in full; the values
    are those the second pass would compute (the same batches through the same model).

    Attributes:
        hook: The hook read (the detail layer's MLP units).
        shown: Windows kept in full.

    Example:
        >>> import torch
        >>> cap = HeatCapture("blocks.0.mlp.hook_pre", shown=1)
        >>> _ = cap(torch.tensor([[[1.0, 5.0], [2.0, -1.0]], [[0.0, 9.0], [3.0, 4.0]]]), None)
        >>> heat, low, high = cap.unit(1)
        >>> heat.tolist(), low, high
        ([[5.0, -1.0]], -1.0, 9.0)
    """

    def __init__(self, hook: str, shown: int) -> None:
        self.hook, self.shown = hook, shown
        self._rows: list[Any] = []
        self._kept = 0
        self._low: Any = None
        self._high: Any = None

    @classmethod
    def for_probe(cls, config: Any, model: Model, samples: ProbeSamples) -> HeatCapture | None:
        """The capture a probe run needs (None: not the course's rule, or no MLP at the layer)."""
        from mechprobe.hooks import UNIT_POINTS, hook_name

        if config.best_unit != "course" or config.store or "mlp" not in config.components:
            return None
        if (
            config.detail_layer not in config.layers
            or not (samples.labels == len(samples.names) - 1).any()
        ):
            return None
        return cls(hook_name(config.detail_layer, UNIT_POINTS["mlp"][0]), config.heatmap_windows)

    def __call__(self, act: Any, hook: Any) -> Any:
        """The hook: reads a batch's activations ``[batch, pos, units]``, returns them unchanged."""
        import torch

        a = act.detach()
        low, high = a.amin(dim=(0, 1)).cpu(), a.amax(dim=(0, 1)).cpu()
        self._low = low if self._low is None else torch.minimum(self._low, low)
        self._high = high if self._high is None else torch.maximum(self._high, high)
        if self._kept < self.shown:
            keep = a[: self.shown - self._kept].to("cpu", copy=True)
            self._rows.append(keep)
            self._kept += keep.shape[0]
        return act

    def unit(self, col: int) -> tuple[np.ndarray, float, float]:
        """Unit ``col`` over the shown windows ``[shown, pos]``, its min and max (float64)."""
        import torch

        heat = torch.cat(self._rows)[..., col].double().numpy()
        return heat, float(self._low[col].double()), float(self._high[col].double())

    def collect_units(self, model: Model, samples: ProbeSamples, config: Any) -> dict[str, Any]:
        """`mechprobe.activations.collect_units` over every window, the last class's apart."""
        import torch

        from mechprobe.activations import collect_units

        last = samples.labels == len(samples.names) - 1
        parts = [(np.flatnonzero(~last), ()), (np.flatnonzero(last), ((self.hook, self),))]
        acts: dict[str, Any] = {}
        for rows, hooks in parts:
            if not rows.size:
                continue
            got = collect_units(
                model,
                samples.windows[rows],
                config.context_pre,
                list(config.layers),
                config.components,
                batch_size=config.batch_size,
                hooks=hooks,
            )
            index = torch.from_numpy(rows)
            for fam, t in got.items():
                if fam not in acts:
                    acts[fam] = t.new_empty((len(last), *t.shape[1:]))
                acts[fam][index] = t
        return acts
