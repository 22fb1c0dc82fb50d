"""E1 negation tuning: activations vs HF hooks, fits vs statsmodels, figures vs numpy, CLI."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch

import mechprobe
from mechprobe.corpus.classes import negation_preset
from mechprobe.corpus.targets import decode_pieces, tokenize_text
from mechprobe.experiments import negation as e1
from mechprobe.experiments.negation import NegationConfig
from mechprobe.models.registry import model_shape
from mechprobe.stats.probe import layer_summary, significance_mask
from tests.helpers import assert_close, assert_one_line_error, run_cli


def run_negation(config, model):
    """Resolve the config against the model, then run E1 (as the runner does)."""
    return e1.run(e1.resolve(config, model_shape(model)), model)


PRE, POST = 90, 10
N_PER_CLASS = 20
AFF = {"agree", "always", "allow", "can", "certainly", "could", "definitely", "may", "might"}
AFF |= {"shall", "should"}


@pytest.fixture(scope="module")
def neg_run(tiny_model, shared_text):
    config = NegationConfig(
        text=str(shared_text), max_samples=N_PER_CLASS, folds=3, save_activations=True
    )
    return run_negation(config, tiny_model)


@pytest.fixture(scope="module")
def hf_ids(tiny_reference, shared_text):
    _, tok = tiny_reference
    text = shared_text.read_bytes().decode("utf-8", errors="replace")
    return tok(text, add_special_tokens=False, verbose=False)["input_ids"]


def _statsmodels_fit(x, y):
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm.Logit(y, sm.add_constant(x, has_constant="add")).fit(disp=0)
    p_hat = res.predict(sm.add_constant(x, has_constant="add"))
    return res.params, res.pvalues[1], float(((p_hat > 0.5) == y).mean())


# ------------------------------------------------------------------- samples and activations


@pytest.mark.unit
def test_samples_are_first_per_class_in_text_order(neg_run, tiny_reference, hf_ids):
    _, tok = tiny_reference
    a = neg_run.arrays
    assert a["labels"].dtype == np.int8 and a["positions"].dtype == np.int64
    assert (a["labels"] == 0).sum() == (a["labels"] == 1).sum() == N_PER_CLASS
    assert np.all(np.diff(a["positions"]) > 0)
    # independent: the first 20 of each class from a plain loop
    first = {0: [], 1: []}
    for ti in range(PRE, len(hf_ids) - POST):
        t, nxt = tok.decode(hf_ids[ti]).strip().lower(), tok.decode(hf_ids[ti + 1])
        if not nxt.startswith(" "):
            continue
        if "'t" in t or t in ("not", "cannot", "nor", "never"):
            first[1].append(ti)
        elif t in AFF and nxt != " not":
            first[0].append(ti)
    want = sorted(first[0][:N_PER_CLASS] + first[1][:N_PER_CLASS])
    assert a["positions"].tolist() == want
    for p, label in zip(a["positions"], a["labels"], strict=True):
        assert (p in first[1]) == bool(label)
    s = neg_run.summary
    assert s["n_found"] == {"affirmation": len(first[0]), "negation": len(first[1])}


@pytest.mark.unit
def test_unit_activations_match_hf_c_attn_and_c_fc(neg_run, tiny_reference, hf_ids):
    hf, _ = tiny_reference
    a = neg_run.arrays
    rows = [0, 1, 2, 17, len(a["labels"]) - 1]
    windows = torch.tensor([hf_ids[p - PRE : p + POST + 1] for p in a["positions"][rows]])
    got: dict[str, torch.Tensor] = {}
    handles = []
    for L in range(2):
        blk = hf.transformer.h[L]
        for key, mod in ((f"qkv{L}", blk.attn.c_attn), (f"mlp{L}", blk.mlp.c_fc)):
            handles.append(
                mod.register_forward_hook(lambda m, i, o, key=key: got.__setitem__(key, o))
            )
    try:
        with torch.no_grad():
            hf(windows)
    finally:
        for h in handles:
            h.remove()
    for L in range(2):
        assert_close(a["qkv_acts"][rows, L], got[f"qkv{L}"][:, PRE], atol=1e-4, msg=f"qkv L{L}")
        assert_close(a["mlp_acts"][rows, L], got[f"mlp{L}"][:, PRE], atol=1e-4, msg=f"mlp L{L}")
    assert a["qkv_acts"].dtype == np.float32 and a["qkv_acts"].shape == (40, 2, 192)
    assert a["mlp_acts"].shape == (40, 2, 256)


@pytest.mark.unit
def test_best_unit_heatmap_agrees_with_target_activations(neg_run):
    a, b = neg_run.arrays, neg_run.summary["best_unit"]
    comp, L, unit = b["component"], b["layer"], b["unit"]
    # the course's rule: the largest beta among the significant MLP units of the detail layer
    detail = neg_run.summary["detail_layer"]
    assert (b["rule"], comp, L) == ("course", "mlp", detail)
    sig = a["mlp_significant"][detail]
    assert sig[unit] and a["mlp_beta"][detail, unit] == a["mlp_beta"][detail][sig].max()
    neg_rows = np.flatnonzero(a["labels"] == 1)
    heat = a["best_unit_heatmap"]
    assert heat.shape == (20, 16) and b["heatmap_offsets"] == list(range(-5, 11))
    assert_close(heat[:, 5], a[f"{comp}_acts"][neg_rows[:20], L, unit], atol=1e-4)
    # the course's colouring: min-max over every negation window and position, then squared,
    # so its square root is an increasing affine function of the raw activation within [0, 1]
    root = np.sqrt(a["best_unit_heatmap_scaled"]).ravel()
    slope, offset = np.polyfit(heat.ravel(), root, 1)
    assert slope > 0 and np.allclose(slope * heat.ravel() + offset, root, atol=1e-9)
    assert root.min() >= 0 and root.max() <= 1
    neg_rows = neg_rows[:20]
    assert b["heatmap_positions"] == a["positions"][neg_rows].tolist()
    # the target token sits in column 5 and is a negation
    for row in b["heatmap_tokens"]:
        t = row[5].strip().lower()
        assert "'t" in t or t in ("not", "cannot", "nor", "never")
    prob = 1 / (1 + np.exp(-(b["intercept"] + b["beta"] * a[f"{comp}_acts"][:, L, unit])))
    assert_close(a["best_unit_probability"], prob, atol=1e-5)


# ------------------------------------------------------------------- fits and summaries


@pytest.mark.unit
def test_fits_match_statsmodels_on_real_units(neg_run):
    a = neg_run.arrays
    y = a["labels"].astype(np.float64)
    rng = np.random.default_rng(0)
    checked = 0
    for comp in ("qkv", "mlp"):
        for L in range(2):
            ok = np.flatnonzero(a[f"{comp}_converged"][L])
            units = rng.choice(ok, size=3, replace=False).tolist()
            units.append(int(np.nanargmin(np.where(a[f"{comp}_converged"][L],
                                                   a[f"{comp}_pvalue"][L], np.nan))))  # fmt: skip
            for u in units:
                x = a[f"{comp}_acts"][:, L, u].astype(np.float64)
                params, p, acc = _statsmodels_fit(x, y)
                beta = a[f"{comp}_beta"][L, u]
                assert abs(beta - params[1]) <= 1e-6 * abs(params[1]) + 1e-12, (comp, L, u)
                assert abs(np.log10(a[f"{comp}_pvalue"][L, u]) - np.log10(p)) <= 1e-6
                assert a[f"{comp}_accuracy"][L, u] == acc
                checked += 1
    assert checked == 16


@pytest.mark.unit
def test_nonconverged_units_have_nan_p_and_are_counted(neg_run):
    a, s = neg_run.arrays, neg_run.summary
    for comp in ("qkv", "mlp"):
        conv = a[f"{comp}_converged"]
        assert np.all(np.isnan(a[f"{comp}_pvalue"][~conv]))
        assert np.all(np.isfinite(a[f"{comp}_pvalue"][conv]))
        sep = a[f"{comp}_separated"]
        flags = s["fit_flags"][comp]
        assert flags["n_separated"] == int(sep.sum())
        assert sum(flags.values()) == int((~conv).sum())
        assert not a[f"{comp}_significant"][~conv].any()


@pytest.mark.unit
def test_per_layer_figures_match_hand_computation(neg_run):
    a, s = neg_run.arrays, neg_run.summary
    alpha = s["alpha"]
    groups = {"qkv": slice(0, 192), "q": slice(0, 64), "k": slice(64, 128), "v": slice(128, 192)}
    groups_of = {"qkv": groups, "mlp": {"mlp": slice(0, 256)}}
    for comp, gs in groups_of.items():
        beta, p, acc = a[f"{comp}_beta"], a[f"{comp}_pvalue"], a[f"{comp}_accuracy"]
        n_units = beta.shape[1]
        with np.errstate(invalid="ignore"):
            sig = p < alpha / n_units  # NaN compares False
        assert np.array_equal(sig, a[f"{comp}_significant"])
        assert s["thresholds"][comp] == [[alpha / n_units] * 2]
        for L in range(2):
            row = s["per_layer"][L]
            assert row["layer"] == L
            for g, sl in gs.items():
                m, b, ac = sig[L, sl], beta[L, sl], acc[L, sl]
                f = row[g]
                assert f["percent_significant"] == pytest.approx(100 * m.sum() / m.size)
                assert f["mean_accuracy"] == pytest.approx(ac.mean())
                pos = m & (b > 0)
                if pos.any():
                    assert f["mean_accuracy_sig_pos"] == pytest.approx(ac[pos].mean())
                else:
                    assert np.isnan(f["mean_accuracy_sig_pos"])
                assert f["n_significant"] == m.sum() and f["n_significant_pos"] == pos.sum()
                held = a[f"{comp}_heldout_accuracy"][L, sl]
                assert f["mean_heldout_accuracy"] == pytest.approx(np.nanmean(held))


@pytest.mark.unit
def test_layer_figures_nan_when_no_positive_significant_unit():
    beta = np.array([[1.0, -2.0, 3.0], [-1.0, -1.0, np.nan]])
    acc = np.array([[0.6, 0.9, 0.7], [0.55, 0.8, 0.5]])
    mask = np.array([[True, True, False], [False, True, False]])
    conv = np.array([[True, True, True], [True, True, False]])
    sep = np.zeros_like(mask)
    f = layer_summary(beta, acc, mask, conv, sep)
    assert f["percent_significant"].tolist() == pytest.approx([200 / 3, 100 / 3])
    assert f["mean_accuracy_sig_pos"][0] == pytest.approx(0.6)
    assert np.isnan(f["mean_accuracy_sig_pos"][1])
    assert f["n_constant"].tolist() == [0, 1]


@pytest.mark.unit
def test_fdr_and_bonferroni_masks_vs_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(0, 1e-3, 30), rng.uniform(0, 1, 170)])
    p[[3, 50]] = np.nan  # untested units still count in the family (p treated as 1)
    p1 = np.nan_to_num(p, nan=1.0)
    for method, corr in (("fdr_bh", "fdr"), ("bonferroni", "bonferroni")):
        want = multipletests(p1, alpha=0.05, method=method)[0]
        got = significance_mask(p[None, :], 0.05, corr)[0]
        assert np.array_equal(got, want), method
    assert got.sum() > 0


@pytest.mark.unit
def test_figures_plot_the_summary_without_swapping_groups(neg_run):
    from mechprobe.plots.negation import figures

    figs = figures(neg_run)
    assert set(figs) == {
        "laminar",
        "layer_probes",
        "beta_by_unit",
        "volcano",
        "best_unit_probabilities",
        "best_unit_heatmap",
    }
    if figs["layer_probes"] is not None:  # whole-layer accuracy drawn is the array's column
        whole = [t for t in figs["layer_probes"].data if t.name == "whole layer (all units, L2)"]
        assert list(whole[0].y) == pytest.approx(neg_run.arrays["qkv_lp_accuracy"][:, 2])
    s = neg_run.summary
    names = {"Q": "q", "K": "k", "V": "v", "MLP": "mlp", "Q|K|V": "qkv"}
    seen = set()
    for tr in figs["laminar"].data:
        if tr.name in names and tr.showlegend is not False:
            g = names[tr.name]
            want = [row[g]["percent_significant"] for row in s["per_layer"]]
            assert list(tr.y) == pytest.approx(want), tr.name
            seen.add(g)
    assert seen == {"q", "k", "v", "qkv", "mlp"}
    heat = figs["best_unit_heatmap"].data[0]
    assert np.asarray(heat.z).shape == (20, 16)


def test_finding_uses_every_control_at_every_layer(neg_run):
    """The verdict counts, over every layer, where the classes are decodable and where beyond
    the control task and the token embedding; decodable but no better than those is its own
    verdict; without held-out numbers the key says in-sample and the controls are unavailable."""
    import copy

    from mechprobe.experiments.result import ExperimentResult
    from mechprobe.experiments.spec import WORD_IDENTITY

    def finding_of(summary):
        return e1.finding(ExperimentResult(neg_run.name, neg_run.arrays, summary))

    s = copy.deepcopy(neg_run.summary)
    n = sum(s["n_samples"].values())
    half = 1.96 * (0.25 / n) ** 0.5
    lex = s["lexical_baseline"]["mean_heldout_accuracy"]
    decodable = copy.deepcopy(s)  # every layer decodable: many significant, accurate held out
    for row in decodable["per_layer"]:
        for fam in s["components"]:
            row[fam].update(percent_significant=50.0, mean_heldout_accuracy_sig=0.99)
    lexical, tuned = copy.deepcopy(decodable), copy.deepcopy(decodable)
    for row in lexical["per_layer"]:
        for fam in s["components"]:
            row[fam].update(selectivity=0.0)
    for row in tuned["per_layer"]:
        for fam in s["components"]:
            row[fam].update(selectivity=2 * half, mean_heldout_accuracy=lex + 2 * half)
    _whole_layer_beyond_baselines(tuned, finding_of, WORD_IDENTITY)
    f = finding_of(lexical)
    assert f.verdict == WORD_IDENTITY
    assert "not beyond word identity on every control" in f.this_run
    n_layers = len(s["per_layer"])
    assert f"selectivity above +{half * 2**0.5:.3f} in 0 of those layers" in f.this_run
    assert finding_of(tuned).verdict == "holds"
    assert f"in {n_layers} of those layers" in finding_of(tuned).this_run
    partly = copy.deepcopy(tuned)
    for row in partly["per_layer"]:
        row["mlp"].update(selectivity=0.0)
    assert finding_of(partly).verdict == "partly holds"
    none = copy.deepcopy(s)
    for row in none["per_layer"]:
        for fam in s["components"]:
            row[fam].update(percent_significant=0.0)
    assert finding_of(none).verdict == "does not hold"
    f = finding_of(s)
    assert f.key.startswith("Q|K|V held-out accuracy peak ")
    in_sample = copy.deepcopy(s)  # as a --store run writes it: no held-out statistics
    for row in in_sample["per_layer"]:
        for fam in s["components"]:
            for k in [k for k in row[fam] if "heldout" in k or k == "selectivity"]:
                del row[fam][k]
    f = finding_of(in_sample)
    peak = max(r["qkv"]["mean_accuracy"] for r in in_sample["per_layer"])
    assert f.key == f"Q|K|V in-sample accuracy peak {peak:.2f}"
    assert "controls unavailable" in f.this_run


def _whole_layer_beyond_baselines(tuned, finding_of, word_identity):
    """Make the whole-layer probe beat its three baselines in every layer of ``tuned``; check
    that with its selectivity interval reaching 0 the verdict is word identity, counted."""
    import copy

    lp = tuned.get("layer_probes")
    if not lp or "families" not in lp:
        return
    n_layers = len(tuned["per_layer"])
    emb = lp["embedding"]["whole_layer"]
    for d in lp["families"].values():
        w = d["whole_layer"]
        w["accuracy"] = [1.0] * n_layers
        w["ci_low"], w["ci_high"] = [emb + 0.01] * n_layers, [1.0] * n_layers
        w["selectivity_low"] = [0.01] * n_layers
        d["random_model"] = [emb] * n_layers
    whole_lexical = copy.deepcopy(tuned)
    for d in whole_lexical["layer_probes"]["families"].values():
        d["whole_layer"]["selectivity_low"] = [-0.01] * n_layers
    f = finding_of(whole_lexical)
    assert f.verdict == word_identity
    assert f"selectivity above 0 beyond its interval in 0 of {n_layers} layers" in f.this_run
    assert f"above the random-weights model's in {n_layers}" in f.this_run


@pytest.mark.unit
def test_a_random_weight_model_never_holds(tiny_model, shared_text):
    """tiny-gpt2 has random weights: E1 on the whole text with every control is not "holds"."""
    res = mechprobe.negation(tiny_model, shared_text)
    assert res.finding.verdict != "holds"
    assert res.finding.verdict in ("decodable, explained by word identity", "does not hold")


# ------------------------------------------------------------------- CLI


@pytest.mark.unit
def test_cli_end_to_end(tmp_path, shared_text, tiny_cli):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "negation",
        "--model",
        "tiny-gpt2",
        "--device",
        "cpu",
        "--text",
        str(shared_text),
        "--out",
        str(out),
        "--max-samples",
        "40",
        "--layers",
        "all",
    )
    assert code == 0, err
    assert "samples: 40 affirmation, 40 negation" in stdout
    d = out / "negation"
    with np.load(d / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["labels"].dtype == np.int8 and arrays["labels"].shape == (80,)
    assert arrays["positions"].shape == (80,) and arrays["positions"].dtype.kind == "i"
    for comp, n in (("qkv", 192), ("mlp", 256)):
        for key, kind in (("beta", "f"), ("pvalue", "f"), ("accuracy", "f"), ("converged", "b")):
            arr = arrays[f"{comp}_{key}"]
            assert arr.shape == (2, n) and arr.dtype.kind == kind, (comp, key)
        acc = arrays[f"{comp}_accuracy"]
        assert np.all((acc >= 0) & (acc <= 1))
        assert f"{comp}_acts" not in arrays and f"{comp}_heldout_accuracy" in arrays
    s = json.loads((d / "summary.json").read_text())
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["model"]["model"] == "tiny-gpt2"
    assert s["data"]["source"] == str(shared_text)
    sha = hashlib.sha256(shared_text.read_bytes()).hexdigest()
    assert s["data"]["sha256"] == manifest["inputs"]["text"] == sha
    assert s["n_samples"] == {"affirmation": 40, "negation": 40}
    assert s["alpha"] == 0.05 and s["correction"] == "bonferroni"
    assert s["thresholds"]["qkv"][0][0] == pytest.approx(0.05 / 192)
    assert s["thresholds"]["mlp"][0][0] == pytest.approx(0.05 / 256)
    assert [r["layer"] for r in s["per_layer"]] == [0, 1]
    for r in s["per_layer"]:
        assert set(r) >= {"qkv", "q", "k", "v", "mlp"}
        for g in ("qkv", "q", "k", "v", "mlp"):
            assert set(r[g]) >= {"percent_significant", "mean_accuracy", "mean_accuracy_sig_pos"}
    assert s["timing_s"]["forward"] > 0 and s["timing_s"]["fit"] > 0
    assert manifest["peak_rss_mb"] > 0 and manifest["wall_s"] > 0
    assert s["detail_layer"] == 0  # the course's MLP layer 13 of 36, at the same relative depth
    for name in ("laminar", "beta_by_unit", "volcano", "best_unit_probabilities"):
        assert (d / "figures" / f"{name}.html").is_file()
    assert (d / "figures" / "best_unit_heatmap.html").is_file()


def _neg(tmp_path, *argv):
    return run_cli("negation", "--model", "tiny-gpt2", "--out", str(tmp_path / "o"), *argv)


@pytest.mark.unit
def test_cli_no_sample_of_a_class(tmp_path, tiny_cli):
    text = tmp_path / "neg_only.txt"
    text.write_text("I do not know why it is never there. " * 40)
    code, _, err = _neg(tmp_path, "--text", str(text))
    assert_one_line_error(code, err, "no affirmation targets")
    text.write_text("We can go and we may stay. " * 40)
    code, _, err = _neg(tmp_path, "--text", str(text))
    assert_one_line_error(code, err, "no negation targets")


@pytest.mark.unit
def test_cli_text_too_short(tmp_path, tiny_cli):
    text = tmp_path / "short.txt"
    text.write_text("We can not stay, and we do not go. " * 5)
    code, _, err = _neg(tmp_path, "--text", str(text))
    assert_one_line_error(code, err, "text too short")


@pytest.mark.unit
def test_cli_layer_out_of_range(tmp_path, tiny_cli, shared_text):
    code, _, err = _neg(tmp_path, "--text", str(shared_text), "--layers", "0,5")
    assert_one_line_error(code, err, "layer 5", "out of range")
    code, _, err = _neg(tmp_path, "--text", str(shared_text), "--detail-layer", "7")
    assert_one_line_error(code, err, "--detail-layer: layer 7 is out of range")
    code, _, err = _neg(tmp_path, "--text", str(shared_text), "--layers", "zero")
    assert_one_line_error(code, err, "--layers")


@pytest.mark.unit
def test_cli_missing_file_and_bad_options(tmp_path, tiny_cli):
    code, _, err = _neg(tmp_path, "--text", str(tmp_path / "missing.txt"))
    assert_one_line_error(code, err, "cannot read text file", "missing.txt")
    code, _, err = _neg(tmp_path, "--components", "qkv,attn")
    assert_one_line_error(code, err, "--components")
    code, _, err = _neg(tmp_path, "--correction", "holm")
    assert_one_line_error(code, err, "--correction")
    code, _, err = _neg(tmp_path, "--max-samples", "0")
    assert_one_line_error(code, err, "--max-samples")
    assert not (tmp_path / "o" / "negation" / "summary.json").exists()


# ------------------------------------------------------------------- SmolLM2 (GQA, gated MLP)


@pytest.mark.integration
def test_smollm2_units_match_hf_projections(smol_model, smol_reference, shared_text):
    from mechprobe.reference.arch import hf_arch

    hf, tok = smol_reference
    layers = (0, 17)
    config = NegationConfig(
        text=str(shared_text), layers=layers, max_samples=4, save_activations=True, folds=0
    )
    res = run_negation(config, smol_model)
    a, s = res.arrays, res.summary
    assert a["qkv_beta"].shape == (2, 960) and a["mlp_beta"].shape == (2, 1536)
    assert s["n_units"] == {"qkv": 960, "q": 576, "k": 192, "v": 192, "mlp": 1536}
    text = shared_text.read_bytes().decode("utf-8", errors="replace")
    ids = tokenize_text(tok, text)
    pieces = decode_pieces(tok, ids)
    t = negation_preset().select(pieces)
    assert s["n_found"] == {"affirmation": t.count(0), "negation": t.count(1)}
    windows = torch.tensor([ids[p - PRE : p + POST + 1] for p in a["positions"]])
    arch = hf_arch(hf)
    got: dict[str, torch.Tensor] = {}
    handles = []
    for i, L in enumerate(layers):
        mods = {**arch.qkv_modules(hf, L), "mlp": arch.module(hf, "mlp_in", L)}
        for name, mod in mods.items():
            handles.append(
                mod.register_forward_hook(
                    lambda m, inp, o, key=(i, name): got.__setitem__(key, o[:, PRE])
                )
            )
    try:
        with torch.no_grad():
            hf(windows)
    finally:
        for h in handles:
            h.remove()
    for i in range(len(layers)):
        qkv = torch.cat([got[(i, "q")], got[(i, "k")], got[(i, "v")]], dim=-1)
        assert_close(a["qkv_acts"][:, i], qkv, atol=2e-4, msg=f"qkv layer {layers[i]}")
        assert_close(a["mlp_acts"][:, i], got[(i, "mlp")], atol=2e-4, msg=f"mlp {layers[i]}")
