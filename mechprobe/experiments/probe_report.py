"""What a probe says: its finding (the course's verdict for the negation preset) and its table.

Example:
    >>> LABELS["qkv"]
    'Q|K|V'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import WORD_IDENTITY, Finding, verdict_of

#: The course's claim for the negation preset holds in a family when at least this share of its
#: units is significant in more than half of the layers, and their held-out accuracy is above
#: chance (the majority class's share) by more than its binomial 95% half-width there.
SIGNIFICANT_SHARE = 10.0


def family_keys(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(family, key in per_layer rows)`` of the families, first contrast for several.

    Example:
        >>> family_keys({"components": ["mlp"], "contrasts": ["b", "c"],
        ...              "per_layer": [{"layer": 0, "mlp:b": {}, "mlp:c": {}}]})
        [('mlp', 'mlp:b')]
    """
    row = summary["per_layer"][0]
    out = []
    for fam in summary["components"]:
        key = fam if fam in row else f"{fam}:{summary['contrasts'][0]}"
        out.append((fam, key))
    return out


LABELS = {
    "qkv": "Q|K|V",
    "mlp": "MLP",
    "resid_post": "residual",
    "attn_z": "attn z",
    "mlp_post": "MLP out",
}


def chance_of(summary: dict[str, Any]) -> float:
    """Chance accuracy of a two-class probe (its majority class's share); 0.5 for one-vs-rest.

    Example:
        >>> chance_of({"classes": ["a", "b"], "chance_accuracy": 0.8})
        0.8
    """
    if len(summary.get("classes", ())) == 2:
        return float(summary.get("chance_accuracy", 0.5))
    return 0.5


def text_of(data: dict[str, Any]) -> str:
    """The text a probe read, saying so when the built-in sample replaced a failed download.

    Example:
        >>> text_of({"source": "gutenberg:32154", "origin": "mechprobe/data/s.txt",
        ...          "fallback": True})
        'the built-in sample text mechprobe/data/s.txt (gutenberg:32154 could not be downloaded)'
    """
    if data.get("fallback"):
        return (
            f"the built-in sample text {data['origin']} ({data['source']} could not be downloaded)"
        )
    return str(data.get("source", data.get("labels")))


@dataclass(frozen=True)
class FamilyTest:
    """What one family's per-layer numbers say, counted over every layer.

    Attributes:
        family: The family.
        n_layers: Layers analysed.
        decodable: Layers where at least `SIGNIFICANT_SHARE` % of units are significant and
            (with held-out folds) the significant units' held-out accuracy beats chance by more
            than the binomial half-width.
        selective: Decodable layers whose selectivity (held-out minus control-task accuracy)
            is above 0 by more than its half-width (None: no control task).
        above_embedding: Decodable layers whose mean held-out accuracy beats the token
            embedding's by more than the half-width (None: no lexical baseline).
        text: The family's sentence for the finding.
        whole_layer: Decodable layers where the whole-layer probe (`mechprobe.stats.
            layer_probe`) is beyond word identity: its selectivity above 0 beyond its interval
            (the interval's low end above 0), and its held-out accuracy's interval above both
            the token embedding's whole-layer probe and the random-weights model's (None: no
            whole-layer probes; a baseline that was not computed is not required).
    """

    family: str
    n_layers: int
    decodable: int
    selective: int | None
    above_embedding: int | None
    text: str
    whole_layer: int | None = None

    @property
    def is_decodable(self) -> bool:
        """Decodable in more than half of the layers."""
        return self.decodable > self.n_layers / 2

    @property
    def beyond_word_identity(self) -> bool | None:
        """In most decodable layers, better than both the control task and the embedding."""
        if self.selective is None or self.above_embedding is None:
            return None
        need = self.decodable / 2
        whole = self.whole_layer is None or self.whole_layer > need
        return self.selective > need and self.above_embedding > need and whole


def _family_test(s: dict[str, Any], fam: str, key: str, half: float) -> FamilyTest:
    """Count, over every layer, where the family is decodable and beyond its controls."""
    rows, chance = s["per_layer"], chance_of(s)
    pct = np.array([r[key]["percent_significant"] for r in rows])
    decodable = pct >= SIGNIFICANT_SHARE
    text = (
        f"{LABELS.get(fam, fam)}: >= {SIGNIFICANT_SHARE:g}% of units significant in "
        f"{int(decodable.sum())} of {len(rows)} layers"
    )
    selective = above = None
    if "mean_heldout_accuracy" in rows[0][key]:
        held = np.array([r[key]["mean_heldout_accuracy"] for r in rows])
        sig_held = np.array([r[key].get("mean_heldout_accuracy_sig", np.nan) for r in rows])
        decodable &= np.nan_to_num(sig_held, nan=0.0) > chance + half
        i = int(np.nanargmax(held))
        sel = rows[i][key].get("selectivity")
        shuffled = rows[i][key].get("percent_significant_shuffled")
        text += (
            f" ({int(decodable.sum())} above chance held out); held-out accuracy of all units "
            f"peaks at {held[i]:.2f} at layer {rows[i]['layer']} ({pct[i]:.0f}% significant"
            + (f", {shuffled:.1f}% with shuffled labels" if shuffled is not None else "")
            + (f"; selectivity {sel:+.2f} over the control task" if sel is not None else "")
            + ")"
        )
        sels = [r[key].get("selectivity") for r in rows]
        lex = (s.get("lexical_baseline") or {}).get("mean_heldout_accuracy")
        if all(v is not None for v in sels):
            selective = int((decodable & (np.array(sels, dtype=float) > half * 2**0.5)).sum())
            text += f"; selectivity above +{half * 2**0.5:.3f} in {selective} of those layers"
        if lex is not None:
            above = int((decodable & (held > lex + half)).sum())
            text += f", above the token embedding ({lex:.2f}) in {above}"
    whole, whole_text = _whole_layer_test(s, fam, decodable)
    text += whole_text
    return FamilyTest(fam, len(rows), int(decodable.sum()), selective, above, text, whole)


def _whole_layer_test(s: dict[str, Any], fam: str, decodable: np.ndarray) -> tuple[int | None, str]:
    """The whole-layer probe's conditions, counted over every layer, and its numbers.

    Returns the decodable layers meeting all three conditions (None: no whole-layer probes)
    and the sentence that gives, over all layers, how many meet each condition, and the
    numbers at the layer where the whole-layer probe peaks.

    Example:
        >>> s = {"per_layer": [{"layer": 0}, {"layer": 1}], "layer_probes": {
        ...     "embedding": {"whole_layer": 0.7}, "families": {"mlp": {"whole_layer": {
        ...     "accuracy": [0.9, 0.95], "ci_low": [0.85, 0.9], "ci_high": [0.93, 0.97],
        ...     "selectivity": [0.1, 0.0], "selectivity_low": [0.05, -0.02],
        ...     "selectivity_high": [0.15, 0.02]}, "random_model": [0.8, 0.8]}}}}
        >>> n, text = _whole_layer_test(s, "mlp", np.array([True, True]))
        >>> n, text[:70]
        (1, '; whole-layer probe (all units, L2, nested): selectivity above 0 beyon')
    """
    lp = (s.get("layer_probes") or {}).get("families", {}).get(fam)
    if not lp or "whole_layer" not in lp:
        return None, ""
    w = lp["whole_layer"]

    def arr(v: list[float | None] | None) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in (v or [])], dtype=float)

    acc, low, sel_low = arr(w["accuracy"]), arr(w["ci_low"]), arr(w.get("selectivity_low"))
    n = len(acc)
    sel_ok = np.nan_to_num(sel_low, nan=-1.0) > 0 if sel_low.size else np.ones(n, bool)
    emb = (s["layer_probes"].get("embedding") or {}).get("whole_layer")
    emb_ok = np.nan_to_num(low, nan=-1.0) > emb if emb is not None else np.ones(n, bool)
    rnd = arr(lp.get("random_model")) if lp.get("random_model") else None
    rnd_ok = np.nan_to_num(low, nan=-1.0) > rnd if rnd is not None else np.ones(n, bool)
    every = decodable & sel_ok & emb_ok & rnd_ok
    i = int(np.nanargmax(acc))
    layer = s["per_layer"][i]["layer"]
    sel = arr(w.get("selectivity"))
    text = (
        "; whole-layer probe (all units, L2, nested): selectivity above 0 beyond its interval "
        f"in {int(sel_ok.sum())} of {n} layers"
        + (f", accuracy above the token embedding's ({emb:.2f}) in {int(emb_ok.sum())}"
           if emb is not None else ", no embedding baseline")
        + (f", above the random-weights model's in {int(rnd_ok.sum())}"
           if rnd is not None else ", no random-weights model")
        + f", all three in {int(every.sum())} decodable layers; it peaks at {acc[i]:.2f} "
        f"[{low[i]:.2f}, {arr(w['ci_high'])[i]:.2f}] at layer {layer}"
        + (f", selectivity {sel[i]:+.3f} [{sel_low[i]:+.3f}, {arr(w['selectivity_high'])[i]:+.3f}]"
           if sel.size else "")
        + (f", random-weights model {rnd[i]:.2f}" if rnd is not None else "")
    )  # fmt: skip
    return int(every.sum()), text


def probe_finding(result: ExperimentResult, claim: str | None) -> Finding:
    """The finding of a probe, on one rule for the course's claim and for any classes.

    Per family and over every layer: where the classes are decodable (at least
    `SIGNIFICANT_SHARE` % of units significant and, held out, the significant units beat chance
    (`chance_of`) by more than the binomial 95% half-width ``h = 1.96 * sqrt(0.25 / n)``), and
    in how many of those layers the decoding is beyond the words' identity: selectivity (held-out
    minus control-task accuracy) above ``sqrt(2) * h`` and mean held-out accuracy above the
    token embedding's by more than ``h``; and, where the whole-layer probes ran, the whole-layer
    probe's selectivity above 0 beyond its interval and its accuracy's interval above the token
    embedding's whole-layer probe and the random-weights model (`_whole_layer_test`). A family
    holds when it is decodable in more than half the layers and beyond word identity, on every
    one of these conditions, in most of those. The verdict: ``holds`` when every
    family holds, ``partly holds`` when some do, `WORD_IDENTITY` when the classes are decodable
    but no family is beyond word identity (a random-weights model reaches that too), else
    ``does not hold``. Without held-out folds or controls the rule falls back to decodability
    alone, and says so.
    """
    s = result.summary
    n = sum(s["n_samples"].values())
    half = 1.96 * (0.25 / n) ** 0.5
    tests = [_family_test(s, fam, key, half) for fam, key in family_keys(s)]
    parts = [t.text for t in tests]
    lex = s.get("lexical_baseline") or {}
    if "mean_heldout_accuracy" in lex:
        parts.append(
            f"the token embedding alone: held-out accuracy {lex['mean_heldout_accuracy']:.2f} "
            f"(mean), {lex['max_heldout_accuracy']:.2f} (best unit, optimistic: the maximum "
            "over held-out scores)"
            + "".join(
                f", {v:.2f} ({'nested best unit' if k == 'best_unit' else 'whole layer'})"
                for k, v in ((s.get("layer_probes") or {}).get("embedding") or {}).items()
                if k in ("best_unit", "whole_layer")
            )
        )
    verdict = _verdict(tests)
    if verdict == WORD_IDENTITY:
        parts.append(
            "so the classes are decoded, but in most decodable layers not beyond word "
            "identity on every control (the counts above say which of a random labelling of the "
            "same words, the token embedding and the random-weights model the probes do not "
            "beat): these accuracies show the words' identity, not tuning to the classes as such"
        )
    elif any(t.beyond_word_identity is None for t in tests):
        parts.append("controls unavailable (no held-out folds or control task): decodability only")
    counts = ", ".join(f"{v} {k}" for k, v in s["n_samples"].items())
    this_run = f"{counts}. " + "; ".join(parts) + "."
    sample = (
        f"{n} samples, {s['folds']}-fold held-out (grouped by overlapping windows), "
        f"binomial 95% half-width of an accuracy {half:.3f}"
        if s["folds"]
        else f"{n} samples, in-sample tests only"
    )
    if s.get("heldout_note"):
        sample = f"{sample}; {s['heldout_note']}"
    lp_note = (s.get("layer_probes") or {}).get("note")
    if lp_note and lp_note not in sample:
        sample = f"{sample}; {lp_note}"
    if s["data"].get("fallback"):
        sample = f"{text_of(s['data'])}; {sample}"
    fam, key = family_keys(s)[0]
    rows = s["per_layer"]
    held_out = "mean_heldout_accuracy" in rows[0][key]  # not in --store runs (in-sample only)
    peak = max(r[key]["mean_heldout_accuracy" if held_out else "mean_accuracy"] for r in rows)
    kind = "held-out" if held_out else "in-sample"
    return Finding(
        claim=claim or "(no course claim: the classes given are tested on the same rule)",
        this_run=this_run,
        verdict=verdict,
        key=f"{LABELS.get(fam, fam)} {kind} accuracy peak {peak:.2f}",
        sample=sample,
    )


def _verdict(tests: list[FamilyTest]) -> str:
    """The verdict of the family tests (see `probe_finding`).

    Example:
        >>> t = FamilyTest("mlp", 30, 30, 0, 2, "")
        >>> _verdict([t]), _verdict([FamilyTest("mlp", 30, 30, 29, 29, "")])
        ('decodable, explained by word identity', 'holds')
    """
    holds = [t.is_decodable and (t.beyond_word_identity is not False) for t in tests]
    if all(holds):
        return "holds"
    if any(holds):
        return "partly holds"
    if any(t.is_decodable for t in tests):
        return WORD_IDENTITY
    return verdict_of(False)


def _fmt(x: Any, spec: str) -> str:
    return "  -  " if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _layer_probe_lines(s: dict[str, Any]) -> list[str]:
    """The per-layer probes' lines of the table: each family's whole layer at its peak.

    Example:
        >>> _layer_probe_lines({"layer_probes": {"note": "unavailable: no folds"}})
        ['per-layer probes: unavailable: no folds']
    """
    lp = s.get("layer_probes") or {}
    if "note" in lp:
        return [f"per-layer probes: {lp['note']}"]
    lines = []
    emb = (lp.get("embedding") or {}).get("whole_layer")
    for fam, d in (lp.get("families") or {}).items():
        w, b = d["whole_layer"], d["best_unit"]
        acc = np.array([np.nan if v is None else v for v in w["accuracy"]])
        if not np.isfinite(acc).any():
            continue
        i = int(np.nanargmax(acc))
        rnd = d.get("random_model")
        layer = s["per_layer"][i]["layer"]
        lines.append(
            f"{LABELS.get(fam, fam)} whole layer: peak {acc[i]:.3f} [{w['ci_low'][i]:.3f}, "
            f"{w['ci_high'][i]:.3f}] at layer {layer}, selectivity "
            f"{_fmt(w['selectivity'][i], '+.3f')} [{_fmt(w['selectivity_low'][i], '+.3f')}, "
            f"{_fmt(w['selectivity_high'][i], '+.3f')}], nested best unit "
            f"{_fmt(b['accuracy'][i], '.3f')}"
            + (f", embedding {emb:.3f}" if emb is not None else "")
            + (f", random-weights model {rnd[i]:.3f}" if rnd else "")
        )
    return lines


def probe_table(result: ExperimentResult) -> str:
    """Per layer and family: % significant, held-out and control accuracy, selectivity."""
    s = result.summary
    d = s["data"]
    head = ", ".join(f"{v} {k}" for k, v in s["n_samples"].items())
    lines = [
        f"data {text_of(d)} ({d.get('classes', 'labelled positions')}), "
        f"{s['n_tokens']} tokens; samples: {head}",
        f"{s['correction']}, alpha {s['alpha']:g}, method {s['method']}; chance accuracy "
        f"{chance_of(s):.3f}; columns per family: % significant (shuffled labels), held-out "
        "accuracy, control accuracy, selectivity",
    ]
    if s.get("heldout_note"):
        lines.append(f"note: {s['heldout_note']}")
    keys = family_keys(s)
    lines.append("layer " + "".join(f"| {LABELS.get(f, f):^31}" for f, _ in keys))
    for row in s["per_layer"]:
        cells = ""
        for _, key in keys:
            r = row[key]
            shuffled = _fmt(r.get("percent_significant_shuffled"), "4.1f")
            held = _fmt(r.get("mean_heldout_accuracy"), ".3f")
            control = _fmt(r.get("mean_control_accuracy"), ".3f")
            cells += (
                f"| {_fmt(r['percent_significant'], '5.1f')} ({shuffled}) {held} {control} "
                f"{_fmt(r.get('selectivity'), '+.3f')} "
            )
        lines.append(f"{row['layer']:>5} {cells}")
    for fam, fl in s["fit_flags"].items():
        lines.append(
            f"{fam}: {fl['n_separated']} separated (Firth fit), {fl['n_constant']} constant, "
            f"{fl['n_not_converged']} not converged"
        )
    lex = s.get("lexical_baseline") or {}
    if lex:
        lines.append(
            f"token embedding alone: {lex.get('percent_significant', 0):.1f}% significant, "
            f"held-out accuracy {lex.get('mean_heldout_accuracy', float('nan')):.3f}"
        )
    b = s["best_unit"]
    if b:
        lines.append(
            f"best unit ({b['rule']} rule): {b['component']} layer {b['layer']} unit "
            f"{b['unit']} ({b['group']}), accuracy {b['accuracy']:.3f}, beta {b['beta']:.3g}"
        )
    lines += _layer_probe_lines(s)
    t = s["timing_s"]
    lines.append(
        f"time: forward {t['forward']:.1f} s, statistics {t['fit']:.1f} s, "
        + "".join(
            f"{name} {t[key]:.1f} s, "
            for key, name in (("layer_probes", "layer probes"), ("random_model", "random model"))
            if key in t
        )
        + f"total {t.get('total', 0):.1f} s"
    )
    return "\n".join(lines)
