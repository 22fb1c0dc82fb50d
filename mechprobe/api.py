"""mechprobe as a library: one call per experiment, labelled results, no hidden side effects.

Each function takes a loaded model (or a model name) and plain Python values, runs the same
code as the command line (`mechprobe.runner.execute.execute`) and returns a `Result`: ``.ds``
(an ``xarray.Dataset`` with named dimensions and the provenance as attributes),
``.to_dataframe()`` (a long pandas table), ``.finding`` (the verdict and its numbers),
``.figures()`` (the report's plotly figures) and ``.save(out)`` (exactly what the CLI writes).
`load_result` reads any step directory back, CLI runs included.

Example:
    >>> import mechprobe
    >>> story = "It is not here. The old keeper walked along the harbour wall. We can go. "
    >>> res = mechprobe.probe(model, story * 40,
    ...                       {"affirmation": ["can"], "negation": ["not"]},
    ...                       families=["mlp"], layers=[0, 1], context_pre=8, context_post=2)
    >>> df = res.to_dataframe()
    >>> len(df), list(df.columns)  # doctest: +NORMALIZE_WHITESPACE
    (512, ['family', 'layer', 'unit', 'beta', 'pvalue', 'significant', 'accuracy',
           'converged', 'separated', 'heldout_accuracy', 'heldout_auc', 'control_accuracy',
           'firth_beta', 'firth_pvalue'])
    >>> res.samples["class"].value_counts().to_dict()
    {'affirmation': 40, 'negation': 39}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.errors import MechprobeError
from mechprobe.experiments import get
from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment, Finding

if TYPE_CHECKING:
    import xarray as xr

    from mechprobe.models.types import Model

__all__ = [
    "AblateResult",
    "PatchResult",
    "ProbeResult",
    "Result",
    "ablate",
    "crosscheck",
    "heads",
    "load_result",
    "negation",
    "patch",
    "probe",
    "replace",
    "similarity",
]


class Result:
    """An experiment's result with labels: dataset, table, finding, figures, save.

    Returned by every experiment call ([`heads`][mechprobe.api.heads], ...) and by
    [`load_result`][mechprobe.api.load_result]; a probe's is a
    [`ProbeResult`][mechprobe.api.ProbeResult].

    Attributes:
        raw: The arrays and summary as the experiment returned them (``ExperimentResult``).
        manifest: What was asked for and how it ran (model, settings, inputs' sha256, times).
    """

    def __init__(self, raw: ExperimentResult, manifest: dict[str, Any]) -> None:
        self.raw = raw
        self.manifest = manifest

    @property
    def spec(self) -> Experiment:
        """The experiment's spec."""
        return get(self.raw.name)

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary (``summary.json``)."""
        return self.raw.summary

    @cached_property
    def ds(self) -> xr.Dataset:
        """The arrays as an ``xarray.Dataset``: named dimensions, provenance in ``attrs``."""
        from mechprobe.experiments.labelled import to_dataset

        keep = ("model", "config", "inputs", "command", "started")
        return to_dataset(self.raw, {k: self.manifest[k] for k in keep if k in self.manifest})

    def to_dataframe(self) -> Any:
        """A long table: one row per value, a column per dimension, ``variable`` and ``value``.

        Example:
            >>> res = similarity(model, n_boot=0)
            >>> list(res.to_dataframe().columns)[:3]
            ['variable', 'value', 'position']
        """
        import pandas as pd

        frames = []
        for name, var in self.ds.data_vars.items():
            if var.dtype.kind in "US":
                continue
            frame = var.to_dataframe(name="value").reset_index()
            frame.insert(0, "variable", name)
            frames.append(frame)
        out = pd.concat(frames, ignore_index=True)
        return out[
            ["variable", "value", *[c for c in out.columns if c not in ("variable", "value")]]
        ]

    @property
    def finding(self) -> Finding | None:
        """The course's claim, this run's numbers and the verdict (None: no claim tested)."""
        return None if self.spec.finding is None else self.spec.finding(self.raw)

    def figures(self) -> dict[str, Any]:
        """The report's plotly figures, by name (the same builders as the report)."""
        from mechprobe.plots import figures_of

        return {k: v for k, v in figures_of(self.raw).items() if v is not None}

    def save(self, out: str | Path, *, png: bool | None = None, overwrite: bool = False) -> Path:
        """Write ``out/<experiment>/`` exactly as the CLI does, and the report ``out/index.html``.

        Args:
            out: The output directory (created; locked while writing).
            png: Also export PNG figures (None: when a browser is available, as the CLI does).
            overwrite: Replace what ``out`` holds of another model's run (or of a probe on
                other classes); without it such an ``out`` is refused, as on the CLI.

        Returns:
            The step directory, which `load_result` reads back.
        """
        from mechprobe.plots import captions_of
        from mechprobe.report import build_report
        from mechprobe.runner.lock import out_lock
        from mechprobe.runner.overwrite import foreign_run, misplaced
        from mechprobe.runner.steps import write_step

        with out_lock(Path(out), self.manifest.get("command", "mechprobe (library call)")) as o:
            name = self.raw.name
            if bad := misplaced(o, [name], overwrite=overwrite):
                raise MechprobeError(bad)
            model = str(self.manifest.get("model", {}).get("model", ""))
            what = foreign_run(o, model, {name: self.manifest.get("request", {})})
            if what is not None and not overwrite:
                raise MechprobeError(f"{what}; pass overwrite=True to replace it")
            manifest = {k: v for k, v in self.manifest.items() if k not in ("format", "files")}
            figures, captions = self.figures(), captions_of(self.raw)
            path = write_step(o, self.spec, self.raw, figures, manifest, png=png, captions=captions)
            build_report(o)
        return path

    def __repr__(self) -> str:
        model = self.manifest.get("model", {}).get("model", "?")
        finding = self.finding
        verdict = f", {finding.verdict}: {finding.key}" if finding else ""
        sizes = ", ".join(f"{k} {v}" for k, v in self.ds.sizes.items())
        return f"<{self.raw.name} on {model}{verdict}; {sizes}>"


class ProbeResult(Result):
    """A probe's (or E1's) result: per-unit statistics, samples, per-family verdict."""

    def to_dataframe(self) -> Any:
        """One row per family x layer x unit (x contrast for more than two classes).

        Columns: ``family``, ``layer``, ``unit`` (``contrast``), ``beta``, ``pvalue``,
        ``significant``, ``accuracy``, ``converged``, ``separated``, and where computed
        ``heldout_accuracy``, ``heldout_auc``, ``control_accuracy``, ``firth_beta``,
        ``firth_pvalue``.
        """
        from mechprobe.experiments.labelled import PROBE_STATS

        ds = self.ds
        stats = [s for s in PROBE_STATS if s in ds]
        frame = ds[stats].to_dataframe().reset_index()
        n_units = dict(
            zip(ds["family"].values.tolist(), ds["n_units"].values.tolist(), strict=True)
        )
        frame = frame[frame["unit"] < frame["family"].map(n_units)].reset_index(drop=True)
        for col in ("significant", "converged", "separated"):
            if col in frame:
                frame[col] = frame[col].astype(bool)
        keys = [c for c in ("family", "contrast", "layer", "unit") if c in frame]
        return frame[keys + stats]

    @property
    def layers(self) -> Any:
        """Per-layer probes: one row per family x layer x probe kind (read from `ds`).

        ``probe`` is one of ``unit_mean`` (the mean of every unit's held-out accuracy),
        ``best_unit`` (nested: chosen on the training folds, scored on the held-out fold),
        ``whole_layer`` (L2 logistic on every unit, penalty chosen on the training folds) and
        ``k1``, ``k8``, ``k64`` (the same on the top-k units by ``|t|`` on the training
        folds); see `mechprobe.stats.layer_probe`. Columns, exactly: ``family``, ``layer``,
        ``probe``, ``heldout_accuracy``, ``ci_low``, ``ci_high`` (Wilson 95%),
        ``control_accuracy``, ``selectivity`` (held-out minus control accuracy),
        ``embedding_accuracy`` (the same probe on the token embedding) and
        ``random_model_accuracy`` (the whole-layer probe on a random-weights copy of the model;
        NaN for the other probes). Empty (with these columns) when no held-out folds ran.

        Example:
            >>> story = "We can go. The keeper walked along the old harbour wall. It is not here. "
            >>> res = negation(model, story * 40, layers=[1], context_pre=6, context_post=2,
            ...                folds=2, no_random_model=True)
            >>> res.layers.columns.tolist()[:4], len(res.layers)
            (['family', 'layer', 'probe', 'heldout_accuracy'], 12)
        """
        import pandas as pd

        cols = [
            "family",
            "layer",
            "probe",
            "heldout_accuracy",
            "ci_low",
            "ci_high",
            "control_accuracy",
            "selectivity",
            "embedding_accuracy",
            "random_model_accuracy",
        ]
        ds = self.ds
        if "lp_accuracy" not in ds:
            return pd.DataFrame(columns=cols)
        names = {
            "lp_accuracy": "heldout_accuracy",
            "lp_ci_low": "ci_low",
            "lp_ci_high": "ci_high",
            "lp_control_accuracy": "control_accuracy",
            "lp_selectivity": "selectivity",
            "lp_random_model_accuracy": "random_model_accuracy",
        }
        present = [k for k in names if k in ds]
        frame = ds[present].to_dataframe().reset_index().rename(columns=names)
        if "embedding_lp_accuracy" in ds:
            emb = dict(
                zip(
                    ds["probe"].values.tolist(),
                    ds["embedding_lp_accuracy"].values.tolist(),
                    strict=True,
                )
            )
            frame["embedding_accuracy"] = frame["probe"].map(emb).astype(float)
        for col in cols:
            if col not in frame:
                frame[col] = float("nan")
        return frame[cols]

    @property
    def samples(self) -> Any:
        """The samples: one row each, in the order of the arrays.

        Columns: ``doc``, ``position`` (token index in its tokenised document), ``token``,
        ``class``, ``label`` and, where held-out folds were made, ``fold``.
        """
        import pandas as pd

        ds = self.ds
        cols = {"doc": "doc", "position": "position", "token": "token", "class": "class"}
        frame = pd.DataFrame({k: ds[v].values for k, v in cols.items() if v in ds})
        frame["label"] = ds["label"].values.astype(int)
        if "fold" in ds:
            frame["fold"] = ds["fold"].values.astype(int)
        return frame

    def __repr__(self) -> str:
        s = self.summary
        model = self.manifest.get("model", {}).get("model", "?")
        lines = [
            f"<{self.raw.name} on {model}: "
            + ", ".join(f"{n} {k}" for k, n in s.get("n_samples", {}).items())
            + " samples"
        ]
        from mechprobe.experiments.probe_report import family_keys

        for _, key in family_keys(s):
            rows = [(r["layer"], r[key]) for r in s["per_layer"]]
            scored = [(lay, r) for lay, r in rows if "mean_heldout_accuracy" in r]
            if scored:
                lay, r = max(scored, key=lambda t: t[1]["mean_heldout_accuracy"])
                sel = r.get("selectivity")
                sel_text = "" if sel is None else f", selectivity {sel:+.3f}"
                lines.append(
                    f"  {key}: best layer {lay}, mean held-out accuracy "
                    f"{r['mean_heldout_accuracy']:.3f}{sel_text}"
                )
            elif rows:
                lay, r = max(rows, key=lambda t: t[1].get("percent_significant", 0.0))
                lines.append(
                    f"  {key}: most significant layer {lay} "
                    f"({r.get('percent_significant', 0.0):.1f}% of units)"
                )
        finding = self.finding
        if finding is not None:
            lines.append(f"  verdict: {finding.verdict} ({finding.key})")
        return "\n".join(lines) + ">"


class PatchResult(Result):
    """Activation patching's result: per-pair patched values and per-cell statistics."""

    def to_dataframe(self) -> Any:
        """One row per component x layer x position-or-head x pair that was patched.

        Columns: ``component``, ``layer``, ``pos`` (NaN for head cells; pairs of different
        lengths are aligned at their last token, `mechprobe.experiments.patch.align_right`),
        ``head`` (NaN for position cells), ``pair`` (0-based, in the order given), ``value``
        (the logit difference of the patched corrupted run).

        Example:
            >>> rows = [{"clean": "When Mary and John went to the store, John gave a drink to",
            ...   "corrupt": "When Mary and John went to the store, Mary gave a drink to",
            ...   "answer": " Mary", "wrong": " John"}] * 2
            >>> df = patch(model, rows, components=["resid_pre", "z"], n_boot=100).to_dataframe()
            >>> list(df.columns), len(df)  # 2 layers x (15 positions + 4 heads) x 2 pairs
            (['component', 'layer', 'pos', 'head', 'pair', 'value'], 76)
        """
        return self._long(per_pair=True)

    @property
    def cells(self) -> Any:
        """One row per cell patched, with its statistics.

        Columns: ``component``, ``layer``, ``pos``, ``head``, ``mean`` (the normalised effect),
        ``ci_low``, ``ci_high`` (95% bootstrap interval), ``pvalue`` (sign flips), ``qvalue``
        (Benjamini-Hochberg across every cell of the run).
        """
        return self._long(per_pair=False)

    def _long(self, per_pair: bool) -> Any:
        import numpy as np
        import pandas as pd

        a = self.raw.arrays
        stats = ("mean", "ci_low", "ci_high", "pvalue", "qvalue")
        frames = []
        for c in self.summary.get("components", []):
            if c not in a:
                continue
            v = a[c] if per_pair else a[f"{c}_mean"]
            idx = np.argwhere(np.isfinite(v))
            frame = {"component": c, "layer": idx[:, 0]}
            col = idx[:, 1].astype(float)
            nan = np.full(len(idx), np.nan)
            position = c in ("resid_pre", "attn_out", "mlp_out")
            frame["pos"], frame["head"] = (col, nan) if position else (nan, col)
            if per_pair:
                frame["pair"] = idx[:, 2]
                frame["value"] = v[tuple(idx.T)]
            else:
                for key in stats:
                    frame[key] = a[f"{c}_{key}"][tuple(idx.T)]
            frames.append(pd.DataFrame(frame))
        cols = ["component", "layer", "pos", "head"]
        cols += ["pair", "value"] if per_pair else list(stats)
        if not frames:
            return pd.DataFrame(columns=cols)
        return pd.concat(frames, ignore_index=True)[cols]


class AblateResult(Result):
    """An ablation's result: one row per family x layer x metric, the null, the selection."""

    def to_dataframe(self) -> Any:
        """One row per family x layer x metric.

        Columns: ``family``, ``layer``, ``metric``, ``observed``, ``ci_low``, ``ci_high``,
        ``pvalue``, ``qvalue`` (Benjamini-Hochberg over the rows of one metric), ``null_mean``,
        ``difference`` (second class minus first), its ``difference_ci_low``,
        ``difference_ci_high``, ``difference_pvalue``, and ``observed_<class>`` per class.
        """
        import pandas as pd

        return pd.DataFrame(self.summary["rows"])

    @property
    def null(self) -> Any:
        """The random unit sets' effects: ``family``, ``layer``, ``metric``, ``draw``, ``value``.

        Only the draws made (see ``stop_after``: the draws of a layer and family stop early
        once enough random sets reach the observed effect).
        """
        import pandas as pd

        s, null = self.summary, self.raw.arrays["null"]
        f, lay, m, d = np.meshgrid(*(np.arange(n) for n in null.shape), indexing="ij")
        frame = pd.DataFrame(
            {
                "family": np.asarray(s["families"])[f.ravel()],
                "layer": np.asarray(s["layers"])[lay.ravel()],
                "metric": np.asarray(s["metrics"])[m.ravel()],
                "draw": d.ravel(),
                "value": null.ravel(),
            }
        )
        made = np.isfinite(self.raw.arrays["null"][:, :, :1]).repeat(null.shape[2], 2).ravel()
        return frame[made].reset_index(drop=True)

    @property
    def selected(self) -> Any:
        """The ablated units: ``family``, ``layer``, ``rank``, ``unit``, ``ablation_value``."""
        import pandas as pd

        s, sel = self.summary, self.raw.arrays["selected"]
        f, lay, r = np.meshgrid(*(np.arange(n) for n in sel.shape), indexing="ij")
        return pd.DataFrame(
            {
                "family": np.asarray(s["families"])[f.ravel()],
                "layer": np.asarray(s["layers"])[lay.ravel()],
                "rank": r.ravel(),
                "unit": sel.ravel(),
                "ablation_value": self.raw.arrays["ablation_value"].ravel(),
            }
        )

    @property
    def samples(self) -> Any:
        """The probe's samples: ``position``, ``label``, ``split`` (select, eval or unused)."""
        import pandas as pd

        a = self.raw.arrays
        return pd.DataFrame(
            {
                "doc": a["documents"],
                "position": a["positions"],
                "label": a["labels"].astype(int),
                "fold": a["folds"].astype(int),
                "split": a["split"],
            }
        )


# ------------------------------------------------------------------------------ inputs


def _model(model: Model | str | Path) -> Model:
    """A loaded model: the bridge as given, or ``load_model(name)`` for a name."""
    if isinstance(model, (str, Path)):
        from mechprobe.models import load_model

        return load_model(str(model))
    if not hasattr(model, "tokenizer"):
        raise MechprobeError(f"expected a model name or a loaded model, got {type(model).__name__}")
    return model


def _reference(model: Model, reference: Any) -> Any:
    if reference is not None:
        return reference
    name = getattr(model, "mechprobe_name", None)
    if name is None:
        raise MechprobeError(
            "this experiment compares with the HF reference: pass reference=(hf_model, "
            "tokenizer), or a model loaded by mechprobe.load_model"
        )
    from mechprobe.models import load_reference

    return load_reference(name, placement=getattr(model, "mechprobe_placement", None))


def _texts(text: Any, max_bytes: int) -> list[Any]:
    """Documents from a library value: a str is the text, a Path a file, URLs download."""
    from mechprobe.corpus.text import TextSource, load_text, resolve_source, text_source

    if isinstance(text, (str, Path, TextSource)):
        items: Sequence[Any] = [text]
    elif isinstance(text, Sequence) and text:
        items = text
    else:
        raise MechprobeError(f"text: expected a str, a Path or a list of them, got {text!r}")
    out = []
    for item in items:
        if isinstance(item, TextSource):
            out.append(item)
        elif isinstance(item, Path):
            out.append(load_text(str(item), max_bytes=max_bytes))
        elif isinstance(item, str):
            is_url = resolve_source(item)[0] == "url" if ":" in item[:16] else False
            out.append(load_text(item, max_bytes=max_bytes) if is_url else text_source(item))
        else:
            raise MechprobeError(f"text: expected str or Path items, got {type(item).__name__}")
    return out


def _classes(classes: Any) -> tuple[Any, str, str]:
    """A class set from a mapping or a file path; its sha256 and a description."""
    from mechprobe.corpus.classes import ClassSet, classes_from_dict, load_classes
    from mechprobe.io import sha256_file

    if isinstance(classes, ClassSet):
        return classes, hashlib.sha256(repr(classes).encode()).hexdigest(), classes.source
    if isinstance(classes, (str, Path)):
        return load_classes(classes), sha256_file(classes), str(classes)
    if not isinstance(classes, Mapping):
        raise MechprobeError(
            f"classes: expected a mapping of class names or a class file, got {classes!r}"
        )
    entries = []
    for name, rule in classes.items():
        if isinstance(rule, Mapping):
            entries.append({"name": name, **rule})
        elif isinstance(rule, (list, tuple, set, frozenset)) and not isinstance(rule, str):
            entries.append(
                {
                    "name": name,
                    "words": sorted(rule) if isinstance(rule, (set, frozenset)) else list(rule),
                }
            )
        else:
            raise MechprobeError(
                f"classes: class {name!r} needs a list of words or a rule dict, got {rule!r}"
            )
    raw = json.dumps({"class": entries}, sort_keys=True)
    return (
        classes_from_dict({"class": entries}, "classes"),
        hashlib.sha256(raw.encode()).hexdigest(),
        "classes (dict)",
    )


def _config(spec: Experiment, options: Mapping[str, Any]) -> Any:
    """``spec.config(**options)``, with one line naming any unknown option."""
    names = {f.name for f in dataclasses.fields(spec.config)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise MechprobeError(
            f"{spec.name}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(names))})"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return spec.config(**values)


def _run(
    spec: Experiment, config: Any, model: Model | str, reference: Any = None, data: Any = None
) -> Result:
    """Resolve ``config`` once against the model, run it through the CLI's path, label it."""
    from mechprobe.models import describe, model_shape
    from mechprobe.runner.execute import execute, step_manifest
    from mechprobe.runner.manifest import request

    model = _model(model)
    resolved = spec.resolve(config, model_shape(model))
    if data is None:
        loaded = spec.inputs(config)
        data, sha = loaded.data, loaded.sha256
    else:
        sha = dict(data.sha256)
    ref = _reference(model, reference) if spec.needs_reference else None
    name = getattr(model, "mechprobe_name", None)
    model_id = describe(name) if name else {"model": type(model).__name__, "source": "in memory"}
    device = str(next(model.parameters()).device.type)
    req = request(spec.name, model_id, dataclasses.asdict(config), sha, device)
    run = execute(spec, resolved, model, ref, data)
    manifest = step_manifest(run, req, "mechprobe (library call)")
    return _kind(spec.name)(run.result, manifest)


# ------------------------------------------------------------------------------ experiments


def probe(
    model: Model | str,
    text: Any,
    classes: Any,
    *,
    families: Sequence[str] = ("qkv", "mlp"),
    layers: Sequence[int] | None = None,
    context_pre: int = 90,
    context_post: int = 10,
    folds: int = 5,
    method: str = "ml",
    correction: str = "bonferroni",
    alpha: float = 0.05,
    max_samples: int | None = None,
    seed: int = 0,
    **options: Any,
) -> ProbeResult:
    """Probe every unit at tokens of your own classes, with held-out statistics and controls.

    Args:
        model: A model from `mechprobe.load_model`, or a model name.
        text: The text itself (a ``str``), a file (a ``pathlib.Path``), ``"gutenberg:ID"`` or an
            http(s) URL, or a list of these (several documents; no window crosses one).
        classes: ``{"present": ["is", "are"], "past": ["was", "were"]}`` (name to words), or
            name to a rule dict with the class file's keys (``words``, ``regex``, ``contains``,
            ``next_starts_with_space``, ``next_not``), or a TOML/JSON class file's path.
            Labels follow the order given.
        families: Hook-point families: ``qkv``, ``mlp``, ``resid_post``, ``attn_z``, ``mlp_post``.
        layers: Layer indices (None: every layer).
        context_pre: Tokens of context before each sample.
        context_post: Tokens after each sample.
        folds: Held-out folds (0: none), grouped so overlapping windows stay together.
        method: ``ml`` (the course's) or ``firth`` for every unit.
        correction: ``bonferroni`` or ``fdr`` within each layer and family.
        alpha: Significance level.
        max_samples: Keep the first N samples of each class.
        seed: Seed of the folds, the control task and the shuffle.
        **options: Any other setting of ``mechprobe probe`` (``unit="word"``, ``balance=True``,
            ``no_controls=True``, ...), by its config name.

    Returns:
        A [`ProbeResult`][mechprobe.api.ProbeResult]: ``.samples`` and the per-unit table besides
        what every [`Result`][mechprobe.api.Result] has.

    Example:
        >>> story = "We can go. The keeper walked along the old harbour wall. It is not here. "
        >>> res = probe(model, story * 40,
        ...             {"modal": ["can"], "negation": ["not"]}, families=["mlp"], layers=[1],
        ...             context_pre=6, context_post=2, folds=2)
        >>> len(res.to_dataframe()), sorted(res.samples["class"].unique())
        (256, ['modal', 'negation'])
    """
    from mechprobe.experiments.probe_samples import probe_data

    spec = get("probe")
    config = _config(
        spec,
        {
            "components": tuple(families),
            "layers": None if layers is None else tuple(layers),
            "context_pre": context_pre,
            "context_post": context_post,
            "folds": folds,
            "method": method,
            "correction": correction,
            "alpha": alpha,
            "max_samples": max_samples,
            "seed": seed,
            **options,
        },
    )
    class_set, class_sha, class_source = _classes(classes)
    docs = _texts(text, int(config.max_download_mb * 2**20))
    data = probe_data(docs, class_set, class_sha, class_source)
    result = _run(spec, config, model, data=data)
    assert isinstance(result, ProbeResult)
    return result


def negation(model: Model | str, text: Any = None, **options: Any) -> ProbeResult:
    """E1: the course's negation probe of every Q/K/V and MLP unit.

    Args:
        model: A model or a model name.
        text: As for `probe` (None: ``$MECHPROBE_TEXT``, else *The Variable Man*).
        **options: Settings of ``mechprobe negation`` by config name.

    Example:
        >>> story = "We can go. The keeper walked along the old harbour wall. It is not here. "
        >>> res = negation(model, story * 40, layers=[1],
        ...                context_pre=6, context_post=2, folds=2)
        >>> res.finding.verdict in ("holds", "partly holds", "does not hold")
        True
    """
    spec = get("negation")
    config = _config(spec, options)
    data = None
    if text is not None:
        from mechprobe.corpus.classes import negation_preset
        from mechprobe.corpus.text import text_source
        from mechprobe.experiments.probe_samples import _preset_text, probe_data

        docs = _texts(text, int(config.max_download_mb * 2**20))
        sha = text_source(_preset_text()).sha256
        data = probe_data(docs, negation_preset(), sha, "negation preset")
    result = _run(spec, config, model, data=data)
    assert isinstance(result, ProbeResult)
    return result


def heads(model: Model | str, *, reference: Any = None, **options: Any) -> Result:
    """E2: raw QK scores at every layer, and the course's dissection of one layer.

    Args:
        model: A model or a model name.
        reference: The HF ``(model, tokenizer)`` for the parity checks (default: loaded).
        **options: Settings of ``mechprobe heads`` by config name (``layer``, ``text``, ...).

    Example:
        >>> res = heads(model, n_boot=100)
        >>> res.ds["pattern"].dims
        ('head', 'pos', 'key_pos')
    """
    spec = get("heads")
    return _run(spec, _config(spec, options), model, reference)


def similarity(model: Model | str, **options: Any) -> Result:
    """E3: Q/K/V variance, means and unit-by-unit cosines at every layer.

    Example:
        >>> res = similarity(model, n_boot=0)
        >>> res.ds["hist"].dims
        ('position', 'block', 'layer', 'bin')
    """
    spec = get("similarity")
    return _run(spec, _config(spec, options), model)


def replace(model: Model | str, *, reference: Any = None, **options: Any) -> Result:
    """E4: zero a head, noise MLP units, scale a block; parity with HF hooks.

    Example:
        >>> res = replace(model, n_boot=100)
        >>> res.ds["baseline_values"].dims
        ('hidden_state', 'd_model')
    """
    spec = get("replace")
    return _run(spec, _config(spec, options), model, reference)


def crosscheck(model: Model | str, *, reference: Any = None, **options: Any) -> Result:
    """Every TransformerLens hook against plain HF hooks, every layer.

    Example:
        >>> res = crosscheck(model)
        >>> bool(res.summary["passed"]), res.ds["max_abs_diff"].dims
        (True, ('check', 'layer'))
    """
    spec = get("crosscheck")
    return _run(spec, _config(spec, options), model, reference)


def patch(
    model: Model | str,
    pairs: str | Path | Sequence[Mapping[str, str]] = "ioi",
    *,
    components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "z"),
    reference: Any = None,
    **options: Any,
) -> PatchResult:
    """Activation patching over minimal pairs: clean activations into the corrupted runs.

    Args:
        model: A model or a model name.
        pairs: A built-in set (``"ioi"``, ``"negation"``), a JSONL file, or a list of dicts
            ``{"clean", "corrupt", "answer", "wrong"[, "template"]}``.
        components: Any of ``resid_pre``, ``attn_out``, ``mlp_out``, ``z``, ``q``, ``k``, ``v``.
        reference: The HF ``(model, tokenizer)`` for the check (default: loaded).
        **options: Settings of ``mechprobe patch`` by config name (``layers``, ``n_boot``, ...).

    Returns:
        A [`PatchResult`][mechprobe.api.PatchResult]: ``.cells`` besides what every
        [`Result`][mechprobe.api.Result] has.

    Example:
        >>> res = patch(model, "ioi", components=["resid_pre"], max_pairs=4, n_boot=100)
        >>> list(res.cells.columns)  # doctest: +NORMALIZE_WHITESPACE
        ['component', 'layer', 'pos', 'head', 'mean', 'ci_low', 'ci_high', 'pvalue', 'qvalue']
    """
    from mechprobe.corpus.pairs import load_pairs, pairs_sha256
    from mechprobe.experiments.spec import Inputs

    spec = get("patch")
    named = isinstance(pairs, (str, Path))
    config = _config(
        spec,
        {"pairs": str(pairs) if named else "(given)", "components": tuple(components), **options},
    )
    loaded = load_pairs(pairs if isinstance(pairs, (str, Path)) else list(pairs))
    data = Inputs({"pairs": pairs_sha256(loaded)}, loaded)
    result = _run(spec, config, model, reference, data)
    assert isinstance(result, PatchResult)
    return result


def ablate(
    model: Model | str,
    probe_result: Result | str | Path,
    *,
    k: int = 10,
    draws: int = 200,
    method: str = "mean",
    text: Any = None,
    classes: Any = None,
    reference: Any = None,
    **options: Any,
) -> AblateResult:
    """Do the units that decode the classes matter? Ablate the top-k against random units.

    Args:
        model: The model the probe ran on (a loaded model or its name).
        probe_result: A `ProbeResult` (from `probe` or `negation`) or a probe step directory.
        k: Units ablated per layer and family (the top k on the select samples).
        draws: Random k-unit sets per layer and family (the null distribution).
        method: ``mean`` (the unit's mean over the select samples), ``zero`` or ``resample``.
        text: The probe's text when it was given in memory (a ``str`` or a list of them);
            None: the text its settings name (a file, a URL, ``gutenberg:ID``).
        classes: With ``text``, the probe's classes when they were given in memory (as for
            `probe`); None: its class file, or the negation preset.
        reference: The HF ``(model, tokenizer)`` the ablated passes run on (default: loaded).
        **options: Other settings of ``mechprobe ablate`` (``layers``, ``max_eval``, ...).

    Returns:
        An [`AblateResult`][mechprobe.api.AblateResult].

    Example:
        >>> story = "We can go. The keeper walked along the old harbour wall. It is not here. "
        >>> res = negation(model, story * 40, layers=[1], context_pre=6, context_post=2,
        ...                folds=3, no_controls=True)
        >>> ab = ablate(model, res, k=2, draws=9, text=story * 40)
        >>> list(ab.to_dataframe().columns)[:5]
        ['family', 'layer', 'metric', 'observed', 'ci_low']
    """
    from mechprobe.experiments.ablate import AblateInput, read_probe_step

    spec = get("ablate")
    config = _config(spec, {"k": k, "draws": draws, "method": method, **options})
    if isinstance(probe_result, (str, Path)):
        got = read_probe_step(probe_result)
    else:
        raw = probe_result.raw
        got = AblateInput(
            raw, None, {"probe": hashlib.sha256(repr(raw.summary).encode()).hexdigest()}
        )
    if text is not None:
        from mechprobe.corpus.classes import load_classes, negation_preset
        from mechprobe.experiments.ablate import _probe_config
        from mechprobe.experiments.probe_samples import probe_data

        cfg = _probe_config(got.probe)
        if classes is not None:
            class_set = _classes(classes)[0]
        elif got.probe.name == "negation" or not cfg.classes:
            class_set = negation_preset()
        else:
            class_set = load_classes(cfg.classes)
        docs = _texts(text, int(cfg.max_download_mb * 2**20))
        got.data = probe_data(docs, class_set, "", "")
    got.sha256 = got.sha256 or {}
    result = _run(spec, config, model, reference, data=got)
    assert isinstance(result, AblateResult)
    return result


def load_result(path: str | Path) -> Result:
    """Read a step directory (``OUT/<experiment>/``, from the CLI or `Result.save`) back.

    Example:
        >>> step = similarity(model, n_boot=0).save("lib-out", png=False)
        >>> load_result(step).ds["hist"].dims
        ('position', 'block', 'layer', 'bin')
    """
    from mechprobe.runner.manifest import read_manifest
    from mechprobe.runner.steps import load_result as load_step

    path = Path(path)
    if not (path / "arrays.npz").is_file():
        steps = sorted(p.parent.name for p in path.glob("*/arrays.npz"))
        hint = f" (it holds the steps {', '.join(steps)}: name one)" if steps else ""
        raise MechprobeError(f"{path}: no step directory (arrays.npz missing){hint}")
    manifest = read_manifest(path) or {}
    raw = load_step(path)
    name = manifest.get("step", raw.name)
    raw = ExperimentResult(name, raw.arrays, raw.summary)
    return _kind(name)(raw, manifest)


def _kind(name: str) -> type[Result]:
    """The result class of an experiment."""
    if name in ("probe", "negation"):
        return ProbeResult
    if name == "patch":
        return PatchResult
    return AblateResult if name == "ablate" else Result
