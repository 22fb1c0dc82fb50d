"""Experiment results as labelled data: an ``xarray.Dataset`` with named dimensions.

Every array an experiment writes gets its dimensions from one vocabulary (``layer``, ``unit``,
``head``, ``kv_head``, ``pos``, ``sample``, ``d_model``, ``family``, ...) and its coordinates from
the summary (the layers analysed, the class contrasts, the checks). A probe's per-family arrays
``<family>_<stat>`` ``[layer, unit]`` become one variable ``<stat>`` over ``family x layer x
unit`` (a ``contrast`` axis first for more than two classes), padded where a family has fewer
units than the widest (``n_units`` says how many are real). Any array this module does not know
keeps its own dimensions, named ``<array>_<axis>``, so nothing is dropped.

Example:
    >>> from mechprobe.experiments.result import ExperimentResult
    >>> res = ExperimentResult("crosscheck", {"max_abs_diff": np.zeros((2, 3)),
    ...     "model_wide": np.zeros(2)}, {"checks": ["hook_q", "hook_k", "final_norm", "logits"]})
    >>> ds = to_dataset(res)
    >>> dict(ds.sizes), ds["check"].values.tolist()
    ({'check': 2, 'layer': 3, 'model_check': 2}, ['hook_q', 'hook_k'])
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult

#: ``{experiment: ((array name pattern, dims), ...)}``: the first matching pattern wins.
DIMS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "crosscheck": (("max_abs_diff", ("check", "layer")), ("model_wide", ("model_check",))),
    "heads": (
        ("kde_demo_*", ("grid",)),
        ("kde_grid", ("grid",)),
        ("kde_final_to_prev", ("grid",)),
        ("kde_self", ("grid",)),
        ("raw_kde_grid", ("raw_grid",)),
        ("kde_raw_*", ("raw_grid",)),
        ("[qk]_mean", ("head",)),
        ("[qk]_std", ("head",)),
        ("k_*_kv", ("kv_head",)),
        ("raw_scores", ("head", "kv_head", "score_pos")),
        ("raw_same", ("same_score",)),
        ("raw_diff", ("diff_score",)),
        ("attn_final_to_prev", ("final_to_prev",)),
        ("attn_self", ("self_weight",)),
        ("attn_first_self", ("head",)),
        ("pattern", ("head", "pos", "key_pos")),
        ("layer_*", ("layer",)),
        ("layers", ("layer",)),
    ),
    "similarity": (
        ("variance*", ("position", "layer", "component")),
        ("mean*", ("position", "layer", "component")),
        ("hist_edges", ("bin_edge",)),
        ("hist*", ("position", "block", "layer", "bin")),
        ("n_pairs*", ("position", "block", "layer")),
        ("cos_*", ("position", "block", "layer")),
        ("n_zero_units*", ("position", "layer")),
        ("*target_index", ("sample",)),
        ("depth_boot", ("layer", "draw")),
        ("depth_*", ("layer",)),
        ("layers", ("layer",)),
    ),
    "replace": (
        ("*_values", ("hidden_state", "d_model")),
        ("*_many_holds", ("sample",)),
        ("*_many_*", ("hidden_state",)),
        ("*_norm", ("hidden_state",)),
        ("*_std", ("hidden_state",)),
        ("*_ratio", ("hidden_state",)),
        ("*_qkv", ("unit",)),
        ("qkv_*", ("unit",)),
        ("*_mlp_pre", ("mlp_unit",)),
        ("noise_*", ("noise_unit",)),
    ),
    "ablate": (
        ("null_units", ("family", "layer", "draw", "rank")),
        ("null*", ("family", "layer", "metric", "draw")),
        ("class_effect", ("family", "layer", "metric", "class")),
        ("eval_effect", ("family", "layer", "metric", "eval_sample")),
        ("eval_index", ("eval_sample",)),
        ("selected", ("family", "layer", "rank")),
        ("ablation_value", ("family", "layer", "rank")),
        ("selection_accuracy", ("family", "layer", "rank")),
        ("positions", ("sample",)),
        ("labels", ("sample",)),
        ("documents", ("sample",)),
        ("folds", ("sample",)),
        ("split", ("sample",)),
        ("*", ("family", "layer", "metric")),
    ),
    "patch": (
        ("resid_pre*", ("layer", "pos", "pair")),
        ("attn_out*", ("layer", "pos", "pair")),
        ("mlp_out*", ("layer", "pos", "pair")),
        ("resid_pre*", ("layer", "pos")),
        ("attn_out*", ("layer", "pos")),
        ("mlp_out*", ("layer", "pos")),
        ("[zqkv]", ("layer", "head", "pair")),
        ("[zqkv]_*", ("layer", "head")),
        ("clean", ("pair",)),
        ("corrupt", ("pair",)),
        ("template", ("pair",)),
        ("length", ("pair",)),
    ),
}

#: Per-unit statistics of a probe family, ``<family>_<stat>``.
PROBE_STATS = (
    "beta",
    "pvalue",
    "significant",
    "accuracy",
    "converged",
    "separated",
    "heldout_accuracy",
    "heldout_auc",
    "control_accuracy",
    "firth_beta",
    "firth_pvalue",
)
#: Per-sample arrays of a probe and their variable names.
PROBE_SAMPLES = {
    "labels": "label",
    "positions": "position",
    "documents": "doc",
    "tokens": "token",
    "folds": "fold",
    "control_labels": "control_label",
    "best_unit_probability": "best_unit_probability",
}


def dims_of(experiment: str, name: str, ndim: int) -> tuple[str, ...]:
    """The dimensions of array ``name`` of ``experiment`` (``<name>_<axis>`` if unknown).

    Example:
        >>> dims_of("heads", "pattern", 3), dims_of("heads", "mystery", 1)
        (('head', 'pos', 'key_pos'), ('mystery_0',))
    """
    for pattern, dims in DIMS.get(experiment, ()):
        if fnmatch.fnmatchcase(name, pattern) and len(dims) == ndim:
            return dims
    return tuple(f"{name}_{i}" for i in range(ndim))


def _coords(result: ExperimentResult) -> dict[str, Any]:
    """Coordinates the summary names: layers, checks, positions, blocks, components."""
    a, s = result.arrays, result.summary
    coords: dict[str, Any] = {}
    if "layers" in a:
        coords["layer"] = np.asarray(a["layers"])
    if result.name == "crosscheck" and "max_abs_diff" in a:
        coords["check"] = list(s.get("checks", []))[: a["max_abs_diff"].shape[0]]
        coords["layer"] = np.arange(a["max_abs_diff"].shape[1])
        coords["model_check"] = ["final_norm", "logits"]
    if result.name == "ablate":
        coords.update(
            family=list(s.get("families", [])),
            metric=list(s.get("metrics", [])),
            **{"class": list(s.get("classes", []))},
        )
    if result.name == "similarity":
        from mechprobe.stats.cosine import BLOCKS, COMPONENTS, POSITIONS

        coords.update(position=list(POSITIONS), block=list(BLOCKS), component=list(COMPONENTS))
    return coords


def _attrs(result: ExperimentResult, provenance: dict[str, Any] | None) -> dict[str, str]:
    attrs = {"experiment": result.name}
    for key, value in (provenance or {}).items():
        attrs[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return attrs


def to_dataset(result: ExperimentResult, provenance: dict[str, Any] | None = None) -> Any:
    """The result as an ``xarray.Dataset`` (probes: `probe_dataset`), provenance as attributes.

    Args:
        result: What an experiment returned, or what a step directory holds.
        provenance: Attributes to attach (model, config, inputs' sha256), JSON-encoded.
    """
    import xarray as xr

    if result.name in ("probe", "negation"):
        return probe_dataset(result, provenance)
    coords = _coords(result)
    data = {}
    for name, arr in result.arrays.items():
        if name == "layers":
            continue
        dims = dims_of(result.name, name, arr.ndim)
        data[name] = (dims, arr)
    used = {d for dims, _ in data.values() for d in dims}
    ds = xr.Dataset(data, coords={k: v for k, v in coords.items() if k in used})
    ds.attrs.update(_attrs(result, provenance))
    return ds


def _family_stack(arrays: list[np.ndarray], width: int) -> np.ndarray:
    """Stack per-family ``[..., layer, unit]`` arrays on a new first axis, padding the units."""
    out = []
    for arr in arrays:
        pad = width - arr.shape[-1]
        fill: Any = False if arr.dtype == bool else np.nan
        if pad:
            widths = [(0, 0)] * (arr.ndim - 1) + [(0, pad)]
            arr = np.pad(
                arr.astype(float) if fill is not False else arr, widths, constant_values=fill
            )
        out.append(arr)
    return np.stack(out)


def _layer_probe_vars(a: dict[str, np.ndarray], families: list[str]) -> tuple[set[str], dict]:
    """The per-layer probes (`mechprobe.experiments.probe_layers`) as ``lp_<stat>``.

    ``<family>_lp_<stat>`` ``[layer, probe]`` become ``lp_<stat>`` over ``family x layer x
    probe`` (the first contrast's, for more than two classes); the token embedding's
    ``embed_lp_<stat>`` ``[probe]`` become ``embedding_lp_<stat>`` over ``probe``.

    Example:
        >>> a = {"mlp_lp_accuracy": np.ones((2, 6)), "embed_lp_accuracy": np.zeros(6)}
        >>> used, data = _layer_probe_vars(a, ["mlp"])
        >>> data["lp_accuracy"][0], data["embedding_lp_accuracy"][0]
        (('family', 'layer', 'probe'), ('probe',))
    """
    from mechprobe.experiments.probe_layers import LP_STATS

    used: set[str] = set()
    data: dict[str, Any] = {}
    if not families:
        return used, data
    for stat in LP_STATS:
        keys = [f"{f}_lp_{stat}" for f in families]
        if all(k in a for k in keys):
            data[f"lp_{stat}"] = (("family", "layer", "probe"), np.stack([a[k] for k in keys]))
            used.update(keys)
        if f"embed_lp_{stat}" in a:
            data[f"embedding_lp_{stat}"] = (("probe",), a[f"embed_lp_{stat}"])
            used.add(f"embed_lp_{stat}")
    return used, data


def probe_dataset(result: ExperimentResult, provenance: dict[str, Any] | None = None) -> Any:
    """A probe's (or E1's) arrays over ``family x [contrast x] layer x unit`` and ``sample``.

    Example:
        >>> a = {"layers": np.array([0, 1]), "labels": np.array([0, 1, 1], dtype=np.int8),
        ...      "qkv_beta": np.ones((2, 3)), "mlp_beta": np.zeros((2, 2))}
        >>> ds = probe_dataset(ExperimentResult("probe", a, {"components": ["qkv", "mlp"],
        ...     "contrasts": ["b"], "classes": ["a", "b"]}))
        >>> ds["beta"].dims, ds["n_units"].values.tolist()
        (('family', 'layer', 'unit'), [3, 2])
    """
    import xarray as xr

    a, s = result.arrays, result.summary
    families = list(s.get("components", []))
    contrasts = list(s.get("contrasts", []))
    multi = len(contrasts) > 1
    width = max((a[f"{f}_beta"].shape[-1] for f in families if f"{f}_beta" in a), default=0)
    lead = ("contrast",) if multi else ()
    data: dict[str, Any] = {}
    used: set[str] = set()
    for stat in PROBE_STATS:
        parts = [a[f"{f}_{stat}"] for f in families if f"{f}_{stat}" in a]
        if not parts or len(parts) < len(families):
            continue
        data[stat] = (("family", *lead, "layer", "unit"), _family_stack(parts, width))
        used.update(f"{f}_{stat}" for f in families)
    data["n_units"] = ("family", np.array([a[f"{f}_beta"].shape[-1] for f in families], int))
    for key, name in PROBE_SAMPLES.items():
        if key in a:
            data[name] = ("sample", a[key])
            used.add(key)
    names = list(s.get("classes", []))
    if "labels" in a and names:
        data["class"] = ("sample", np.array([names[int(k)] for k in a["labels"]], dtype=str))
    lp_used, lp_data = _layer_probe_vars(a, families)
    if lp_data:
        data.update(lp_data)
        used |= lp_used
    if "embed_heldout_accuracy" in a:
        embed = a["embed_heldout_accuracy"]
        data["embed_heldout_accuracy"] = ((*lead, "d_model"), embed.reshape(*embed.shape[:-2], -1))
        used.add("embed_heldout_accuracy")
    for key in ("best_unit_heatmap", "best_unit_heatmap_scaled"):
        if key in a:
            data[key] = (("batch", "pos"), a[key])
            used.add(key)
    for key, arr in a.items():
        if key not in used and key != "layers":
            data[key] = (dims_of(result.name, key, arr.ndim), arr)
    coords: dict[str, Any] = {"family": families, "layer": np.asarray(a["layers"])}
    if lp_data:
        from mechprobe.experiments.probe_layers import PROBE_KINDS

        coords["probe"] = list(PROBE_KINDS)
    if multi:
        coords["contrast"] = contrasts
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(_attrs(result, provenance))
    return ds
