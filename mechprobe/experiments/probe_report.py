"""What a probe says: its finding (the course's verdict for the negation preset) and its table.

Example:
    >>> LABELS["qkv"]
    'Q|K|V'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Finding, verdict_of

#: The course's claim for the negation preset holds in a family when at least this share of its
#: units is significant in more than half of the layers, and their held-out accuracy is above
#: chance (the majority class's share) by more than its binomial 95% half-width there.
SIGNIFICANT_SHARE = 10.0


def _family_keys(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(family, key in per_layer rows)`` of the families, first contrast for several."""
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


def probe_finding(result: ExperimentResult, claim: str | None) -> Finding:
    """The finding of a probe; with ``claim`` (the negation preset) the course's verdict.

    Per family: the layer where the held-out accuracy of all units peaks, its selectivity (held
    out minus the control task) and the share of significant units there beside the
    label-shuffle baseline, and the token embedding's held-out accuracy (the lexical baseline).
    The course's claim holds in a family when at least `SIGNIFICANT_SHARE` % of its units are
    significant in more than half of the layers and, in most of those layers, the significant
    units' held-out accuracy exceeds chance (`chance_of`: the majority class's share) by more
    than the binomial 95% half-width ``1.96 * sqrt(0.25 / n)``; it holds when so in every
    family, partly in some. The verdict is on the claim as the course states it; when the
    selectivity at every family's peak is within that half-width of 0, the text adds that the
    accuracies show word identity (the control task, a random labelling of the words, is
    decoded as well), not class tuning.
    """
    s = result.summary
    n = sum(s["n_samples"].values())
    half = 1.96 * (0.25 / n) ** 0.5
    chance = chance_of(s)
    rows, parts, holds, selectivities = s["per_layer"], [], [], []
    for fam, key in _family_keys(s):
        pct = np.array([r[key]["percent_significant"] for r in rows])
        many = pct >= SIGNIFICANT_SHARE
        text = (
            f"{LABELS.get(fam, fam)}: >= {SIGNIFICANT_SHARE:g}% of units significant in "
            f"{int(many.sum())} of {len(rows)} layers"
        )
        if "mean_heldout_accuracy" in rows[0][key]:
            held = np.array([r[key]["mean_heldout_accuracy"] for r in rows])
            sig_held = np.array([r[key].get("mean_heldout_accuracy_sig", np.nan) for r in rows])
            general = many & (np.nan_to_num(sig_held, nan=0.0) > chance + half)
            holds.append(many.sum() > len(rows) / 2 and general.sum() > many.sum() / 2)
            i = int(np.nanargmax(held))
            sel = rows[i][key].get("selectivity")
            selectivities.append(sel)
            shuffled = rows[i][key].get("percent_significant_shuffled")
            text += (
                f"; held-out accuracy of all units peaks at {held[i]:.2f} at layer "
                f"{rows[i]['layer']} ({pct[i]:.0f}% significant"
                + (f", {shuffled:.1f}% with shuffled labels" if shuffled is not None else "")
                + (f"; selectivity {sel:+.2f} over the control task" if sel is not None else "")
                + ")"
            )
        else:
            holds.append(bool(many.sum() > len(rows) / 2))
        parts.append(text)
    lex = s.get("lexical_baseline") or {}
    if "mean_heldout_accuracy" in lex:
        parts.append(
            f"the token embedding alone: held-out accuracy {lex['mean_heldout_accuracy']:.2f} "
            f"(mean), {lex['max_heldout_accuracy']:.2f} (best unit)"
        )
    if selectivities and all(v is not None and abs(v) <= half for v in selectivities):
        parts.append(
            f"caveat: the selectivity is within +-{half:.3f} of 0 in every family, so a random "
            "labelling of the same words (the control task) is decoded as well: these "
            "accuracies show the words' identity, not tuning to the classes as such"
        )
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
    if s["data"].get("fallback"):
        sample = f"{text_of(s['data'])}; {sample}"
    fam, key = _family_keys(s)[0]
    held_out = "mean_heldout_accuracy" in rows[0][key]  # not in --store runs (in-sample only)
    peak = max(r[key]["mean_heldout_accuracy" if held_out else "mean_accuracy"] for r in rows)
    kind = "held-out" if held_out else "in-sample"
    return Finding(
        claim=claim or "(no course claim: a probe of the classes given)",
        this_run=this_run,
        verdict=verdict_of(all(holds), partly=any(holds)) if claim else "not tested",
        key=f"{LABELS.get(fam, fam)} {kind} accuracy peak {peak:.2f}",
        sample=sample,
    )


def _fmt(x: Any, spec: str) -> str:
    return "  -  " if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


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
    keys = _family_keys(s)
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
    t = s["timing_s"]
    lines.append(
        f"time: forward {t['forward']:.1f} s, statistics {t['fit']:.1f} s, total "
        f"{t.get('total', 0):.1f} s"
    )
    return "\n".join(lines)
