"""The probe's per-layer probes: mean unit, nested best unit, whole layer, k-sparse, baselines.

Per family and layer, six probes (`PROBE_KINDS`), each scored held out on the probe's grouped
folds, on the real labels and the control task (selectivity = real - control accuracy, with a
paired interval), the whole-layer and k-sparse ones also on shuffled labels; the same probes on
the token embedding (the embedding baseline) and the whole-layer probe on a random-weights copy
of the model (`mechprobe.models.loading.random_weights_model`). The statistics are in
`mechprobe.stats.layer_probe`; this module collects, runs and arranges them into arrays
``<family>_lp_<stat>`` ``[layer, probe]`` and ``embed_lp_<stat>`` ``[probe]``.

Example:
    >>> PROBE_KINDS
    ('unit_mean', 'best_unit', 'whole_layer', 'k1', 'k8', 'k64')
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mechprobe.experiments.probe_samples import ProbeSamples
    from mechprobe.models.types import Model

#: The probes of every family and layer, in the order of the arrays' ``probe`` axis.
PROBE_KINDS = ("unit_mean", "best_unit", "whole_layer", "k1", "k8", "k64")
#: The statistics of each probe: ``<family>_lp_<stat>`` ``[layer, probe]``.
LP_STATS = (
    "accuracy",
    "ci_low",
    "ci_high",
    "auc",
    "control_accuracy",
    "selectivity",
    "selectivity_low",
    "selectivity_high",
    "shuffled_accuracy",
    "random_model_accuracy",
)
#: Seed offset of the random-weights model (its seed: ``RANDOM_MODEL_SEED + config.seed``).
RANDOM_MODEL_SEED = 1000


def _score_row(real: Any, control: Any | None, shuffled: Any | None) -> dict[str, float]:
    """One probe's row from its per-sample correctness (`mechprobe.stats.layer_probe`)."""
    from mechprobe.stats.heldout import roc_auc
    from mechprobe.stats.layer_probe import paired_interval, wilson_interval

    correct = np.asarray(real["correct"], dtype=bool)
    low, high = wilson_interval(int(correct.sum()), correct.size)
    row = {"accuracy": float(correct.mean()), "ci_low": low, "ci_high": high}
    if real.get("decision") is not None:
        y = real["labels"]
        row["auc"] = float(roc_auc(np.asarray(real["decision"])[:, None], y)[0])
    if control is not None:
        c = np.asarray(control["correct"], dtype=bool)
        sel, s_low, s_high = paired_interval(correct, c)
        row.update(
            control_accuracy=float(c.mean()),
            selectivity=sel,
            selectivity_low=s_low,
            selectivity_high=s_high,
        )
    if shuffled is not None:
        row["shuffled_accuracy"] = float(np.mean(shuffled["correct"]))
    return row


def _as_dict(score: Any, labels: np.ndarray) -> dict[str, Any]:
    return {"correct": score.correct, "decision": score.decision, "labels": labels}


def probe_layer(
    x: Any,
    labels: dict[str, np.ndarray],
    folds: np.ndarray,
    *,
    whole: bool = True,
    ks: tuple[int, ...] | None = None,
) -> dict[str, dict[str, float]]:
    """Whole-layer and k-sparse rows of one layer (`mechprobe.stats.layer_probe.nested_probes`).

    ``labels``: ``real`` first, then optionally ``control`` and ``shuffled``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 30)
        >>> rows = probe_layer(rng.normal(size=(60, 5)) + y[:, None], {"real": y},
        ...                    np.arange(60) % 3, ks=(1,))
        >>> sorted(rows), rows["k1"]["accuracy"] > 0.6
        (['k1', 'whole_layer'], True)
    """
    from mechprobe.stats.layer_probe import KS, nested_probes

    res = nested_probes(x, labels, folds, ks=KS if ks is None else ks, whole=whole)
    rows = {}
    for kind, by_label in res.items():
        real = _as_dict(by_label["real"], labels["real"])
        ctrl = by_label.get("control")
        shuf = by_label.get("shuffled")
        rows[kind] = _score_row(
            real,
            None if ctrl is None else _as_dict(ctrl, labels["control"]),
            None if shuf is None else _as_dict(shuf, labels["shuffled"]),
        )
        rows[kind]["c_median"] = float(np.median(by_label["real"].c))
    return rows


def layer_probes(
    config: Any,
    model: Model,
    samples: ProbeSamples,
    acts: dict[str, Any],
    pairs: list[tuple[str, np.ndarray]],
    folds: np.ndarray | None,
    control: np.ndarray | None,
    shuffled: np.ndarray | None,
    best_correct: dict[str, tuple[Any, Any]],
    per_layer: list[dict[str, Any]],
    arrays: dict[str, np.ndarray],
    timing: dict[str, float],
    note: str | None = None,
    lexical: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every family's per-layer probes into ``arrays``; returns the summary's ``layer_probes``.

    The first contrast only (for more than two classes: the first class against the rest).
    Without folds nothing is computed and the summary says why.
    """
    from mechprobe.stats.threads import map_one_thread

    if folds is None:
        why = note or "no held-out folds (folds 0)"
        return {"note": f"whole-layer and k-sparse held-out probes unavailable: {why}"}
    t0 = time.perf_counter()
    multi = len(pairs) > 1
    y = pairs[0][1].astype(np.int64)

    def first(lab: np.ndarray | None) -> np.ndarray | None:
        if lab is None:
            return None
        return (lab == (0 if multi else 1)).astype(np.int64)

    labels = {"real": y}
    for name, lab in (("control", first(control)), ("shuffled", first(shuffled))):
        if lab is not None and _both_classes_everywhere(lab, folds):
            labels[name] = lab
    key = pairs[0][0]
    summary: dict[str, Any] = {"kinds": list(PROBE_KINDS), "families": {}}
    fams = [f for f in acts if f != "embed"]
    order = [*fams, *(["embed"] if "embed" in acts else [])]
    tasks = [(fam, i) for fam in order for i in range(acts[fam].shape[1])]
    probed = dict(
        zip(
            tasks,
            map_one_thread(
                lambda t: probe_layer(acts[t[0]][:, t[1], :].double().numpy(), labels, folds),
                tasks,
            ),
            strict=True,
        )
    )
    for fam in order:
        x = acts[fam]
        n_layers = x.shape[1]
        table = {s: np.full((n_layers, len(PROBE_KINDS)), np.nan) for s in LP_STATS}
        for i in range(n_layers):
            rows = probed[fam, i]
            rows.update(_unit_rows(fam, i, per_layer, key, multi, best_correct, y, labels, lexical))
            for j, kind in enumerate(PROBE_KINDS):
                for stat, v in rows.get(kind, {}).items():
                    if stat in table:
                        table[stat][i, j] = v
        prefix = f"{fam}_lp_"
        for stat, arr in table.items():
            if stat == "random_model_accuracy":
                continue
            arrays[prefix + stat] = arr[0] if fam == "embed" else arr
        if fam != "embed":
            summary["families"][fam] = _family_summary(table)
    timing["layer_probes"] = time.perf_counter() - t0
    if "embed" in acts:
        summary["embedding"] = {
            k: float(arrays["embed_lp_accuracy"][j]) for j, k in enumerate(PROBE_KINDS)
        }
    if not config.no_random_model:
        _random_model_rows(config, model, samples, fams, y, folds, arrays, summary, timing)
    return summary


def _random_model_rows(
    config: Any,
    model: Model,
    samples: ProbeSamples,
    fams: list[str],
    y: np.ndarray,
    folds: np.ndarray,
    arrays: dict[str, np.ndarray],
    summary: dict[str, Any],
    timing: dict[str, float],
) -> None:
    """The random-weights model's whole-layer accuracies into ``arrays`` and ``summary``."""
    t0 = time.perf_counter()
    rnd = random_model_accuracy(config, model, samples, fams, y, folds)
    timing["random_model"] = time.perf_counter() - t0
    whole = PROBE_KINDS.index("whole_layer")
    for fam, acc in rnd.items():
        arr = np.full((len(acc), len(PROBE_KINDS)), np.nan)
        arr[:, whole] = acc
        arrays[f"{fam}_lp_random_model_accuracy"] = arr
        summary["families"][fam]["random_model"] = [float(v) for v in acc]
    summary["random_model"] = (
        f"{getattr(model, 'mechprobe_name', 'the model')}, randomly initialised from its "
        f"config (seed {RANDOM_MODEL_SEED + config.seed})"
    )


def _both_classes_everywhere(lab: np.ndarray, folds: np.ndarray) -> bool:
    """Every training split (and the labels) holds both classes: a control can be fitted."""
    if np.unique(lab).size < 2:
        return False
    return all(np.unique(lab[folds != f]).size == 2 for f in np.unique(folds))


def _unit_rows(
    fam: str,
    i: int,
    per_layer: list[dict[str, Any]],
    key: str,
    multi: bool,
    best_correct: dict[str, tuple[Any, Any]],
    y: np.ndarray,
    labels: dict[str, np.ndarray],
    lexical: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """The mean unit's row (from the per-unit statistics) and the nested best unit's."""
    from mechprobe.stats.layer_probe import wilson_interval

    rows: dict[str, dict[str, float]] = {}
    real_best, ctrl_best = best_correct.get(fam, (None, None))
    if real_best is not None:
        rows["best_unit"] = _score_row(
            {"correct": real_best[i]},
            None if ctrl_best is None or "control" not in labels else {"correct": ctrl_best[i]},
            None,
        )
    group = fam if not multi else f"{fam}:{key}"
    r = (lexical or None) if fam == "embed" else per_layer[i].get(group)
    if r is not None and "mean_heldout_accuracy" in r:
        acc = r["mean_heldout_accuracy"]
        low, high = wilson_interval(round(acc * y.size), y.size)
        rows["unit_mean"] = {
            "accuracy": acc,
            "ci_low": low,
            "ci_high": high,
            "auc": r.get("mean_heldout_auc", np.nan),
            "control_accuracy": r.get("mean_control_accuracy", np.nan),
            "selectivity": r.get("selectivity", np.nan),
        }
    return rows


def _family_summary(table: dict[str, np.ndarray]) -> dict[str, Any]:
    """The whole-layer, nested best-unit and k-sparse columns for the summary (JSON lists)."""
    out: dict[str, Any] = {}
    for kind in ("whole_layer", "best_unit", "k1", "k8", "k64"):
        j = PROBE_KINDS.index(kind)
        out[kind] = {
            stat: [None if np.isnan(v) else float(v) for v in table[stat][:, j]]
            for stat in LP_STATS
            if stat != "random_model_accuracy"
        }
    return out


def random_model_accuracy(
    config: Any,
    model: Model,
    samples: ProbeSamples,
    families: list[str],
    y: np.ndarray,
    folds: np.ndarray,
) -> dict[str, np.ndarray]:
    """Whole-layer held-out accuracy per layer of a random-weights copy of the model.

    Same samples, windows, layers, families and folds; the nested whole-layer probe on the real
    labels only.
    """
    from mechprobe.activations import collect_units
    from mechprobe.models.loading import random_weights_model
    from mechprobe.stats.layer_probe import nested_probes
    from mechprobe.stats.threads import map_one_thread

    rnd = random_weights_model(model, seed=RANDOM_MODEL_SEED + config.seed)
    acts = collect_units(
        rnd,
        samples.windows,
        config.context_pre,
        list(config.layers),
        tuple(families),
        batch_size=config.batch_size,
    )
    del rnd

    def whole(t: tuple[str, int]) -> float:
        x = acts[t[0]][:, t[1], :].double().numpy()
        return nested_probes(x, {"real": y}, folds, ks=())["whole_layer"]["real"].accuracy

    tasks = [(fam, i) for fam in families for i in range(acts[fam].shape[1])]
    acc = dict(zip(tasks, map_one_thread(whole, tasks), strict=True))
    return {fam: np.array([acc[t] for t in tasks if t[0] == fam]) for fam in families}
