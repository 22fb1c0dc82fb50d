"""Activation patching (`mechprobe patch`): values against TransformerLens and HF hooks,
statistics recomputed from the stored per-pair values, errors, the table and the CLI."""

import itertools
import json

import numpy as np
import pytest
import torch

from mechprobe.corpus.pairs import load_pairs, tokenise_pairs
from mechprobe.experiments import patch as ep
from mechprobe.models.registry import model_shape
from mechprobe.stats.patching import bh_qvalues, cell_statistics, sign_flip_pvalue
from tests.helpers import assert_one_line_error, run_cli

#: Six IOI pairs of one length written by the test, two templates (the cluster bootstrap).
PAIRS = [
    {"clean": f"When {a} and {b} went to the store, {b} gave a drink to",
     "corrupt": f"When {a} and {b} went to the store, {a} gave a drink to",
     "answer": f" {a}", "wrong": f" {b}", "template": t}
    for (a, b), t in zip(
        [("Mary", "John"), ("Anna", "Tom"), ("Kate", "Paul"), ("Lisa", "Mark"),
         ("Emma", "David"), ("Sarah", "Peter")], "aabbab", strict=True)
]  # fmt: skip


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


@pytest.fixture(scope="module")
def tiny_patch(tiny_model, tiny_reference):
    config = ep.resolve(
        ep.PatchConfig(components=("resid_pre", "attn_out", "mlp_out", "z", "k"), n_boot=200),
        model_shape(tiny_model),
    )
    return ep.run(config, tiny_model, tiny_reference, PAIRS)


def tl_sweep(model, pairs, fn):
    """TransformerLens's own sweep with reduce='none': [layer, index, pair]."""
    from transformer_lens import patching

    tp = tokenise_pairs(model, pairs)
    clean, corrupt = torch.tensor(tp.clean), torch.tensor(tp.corrupt)
    ans, wrong = torch.tensor(tp.answer), torch.tensor(tp.wrong)
    _, cache = model.run_with_cache(clean)

    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return logits[rows, -1, ans] - logits[rows, -1, wrong]

    res = getattr(patching, fn)(model, corrupt, cache, metric, reduce="none")
    return res.values.double().numpy()


@pytest.mark.parametrize(
    ("component", "fn"),
    [("resid_pre", "get_act_patch_resid_pre"), ("attn_out", "get_act_patch_attn_out"),
     ("mlp_out", "get_act_patch_mlp_out"), ("z", "get_act_patch_attn_head_out_all_pos"),
     ("k", "get_act_patch_attn_head_k_all_pos")],
)  # fmt: skip
def test_values_equal_transformer_lens(tiny_patch, tiny_model, component, fn):
    expected = tl_sweep(tiny_model, PAIRS, fn)
    got = tiny_patch.arrays[component]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_resid_pre_equals_plain_hf_pre_hook(tiny_patch, tiny_model, tiny_reference):
    """Every resid_pre cell, patched here with a hand-written pre-hook on the HF block."""
    hf, _ = tiny_reference
    tp = tokenise_pairs(tiny_model, PAIRS)
    clean, corrupt = torch.tensor(tp.clean), torch.tensor(tp.corrupt)
    rows = torch.arange(len(PAIRS))
    got = tiny_patch.arrays["resid_pre"]
    for layer, pos in itertools.product(range(2), range(clean.shape[1])):
        block = hf.transformer.h[layer]
        seen = {}
        h = block.register_forward_pre_hook(lambda m, a, s=seen: s.setdefault("x", a[0].clone()))
        with torch.inference_mode():
            hf(clean)
        h.remove()

        def put(m, a, pos=pos, seen=seen):
            x = a[0].clone()
            x[:, pos] = seen["x"][:, pos]
            return (x, *a[1:])

        h = block.register_forward_pre_hook(put)
        with torch.inference_mode():
            logits = hf(corrupt).logits[:, -1]
        h.remove()
        ref = (logits[rows, tp.answer] - logits[rows, tp.wrong]).double().numpy()
        np.testing.assert_allclose(got[layer, pos], ref, atol=1e-5, rtol=0)
    ref = tiny_patch.summary["reference"]
    assert ref["passed"] and ref["cells"] == tiny_patch.summary["n_cells"]
    assert np.isfinite(ref["max_abs_diff"]) and ref["max_abs_diff"] <= 1e-5


def _stored_cells(res):
    a = res.arrays
    effects, keys = [], []
    for c in res.summary["components"]:
        for layer, i in itertools.product(range(a[c].shape[0]), range(a[c].shape[1])):
            if np.isfinite(a[c][layer, i]).any():
                effects.append(a[c][layer, i] - a["corrupt"])
                keys.append((c, layer, i))
    return np.array(effects), keys


def test_pvalues_recomputed_by_exhaustive_sign_flips(tiny_patch):
    """Six pairs: the exact test over all 64 sign patterns, computed here by hand."""
    effects, keys = _stored_cells(tiny_patch)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=6)))
    for e, (c, layer, i) in zip(effects, keys, strict=True):
        observed = abs(e.mean())
        null = np.abs((signs * e).mean(1))
        expected = np.mean(null >= observed * (1 - 1e-9))
        assert tiny_patch.arrays[f"{c}_pvalue"][layer, i] == pytest.approx(expected, abs=1e-12)


def test_qvalues_are_statsmodels_bh(tiny_patch):
    from statsmodels.stats.multitest import multipletests

    _, keys = _stored_cells(tiny_patch)
    a = tiny_patch.arrays
    p = np.array([a[f"{c}_pvalue"][layer, i] for c, layer, i in keys])
    q = np.array([a[f"{c}_qvalue"][layer, i] for c, layer, i in keys])
    np.testing.assert_allclose(q, multipletests(p, method="fdr_bh")[1], atol=1e-12)


def test_means_are_ratio_of_means_and_cluster_bootstrap(tiny_patch):
    a = tiny_patch.arrays
    denom = (a["clean"] - a["corrupt"]).mean()
    effects, keys = _stored_cells(tiny_patch)
    for e, (c, layer, i) in zip(effects, keys, strict=True):
        assert a[f"{c}_mean"][layer, i] == pytest.approx(e.mean() / denom, rel=1e-9, abs=1e-12)
    # the bootstrap resamples the two templates: recompute one cell's interval by hand
    e, (c, layer, i) = effects[-1], keys[-1]
    d = a["clean"] - a["corrupt"]
    templates = a["template"]
    draws = np.random.default_rng(0).integers(0, 2, (200, 2))
    reps = []
    for row in draws:
        idx = np.concatenate([np.flatnonzero(templates == t) for t in row])
        reps.append(e[idx].sum() / d[idx].sum())
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert a[f"{c}_ci_low"][layer, i] == pytest.approx(lo)
    assert a[f"{c}_ci_high"][layer, i] == pytest.approx(hi)


def test_monte_carlo_pvalue_from_stored_seed():
    """Above 12 pairs the sign patterns are default_rng(seed).choice([-1, 1], (n_perm, n))."""
    e = np.random.default_rng(3).normal(0.3, 1.0, size=(2, 20))
    signs = np.random.default_rng(7).choice([-1.0, 1.0], (500, 20))
    null = np.abs(e @ signs.T) / 20
    expected = (1 + (null >= np.abs(e.mean(1))[:, None] * (1 - 1e-9)).sum(1)) / 501
    np.testing.assert_allclose(sign_flip_pvalue(e, 500, seed=7), expected)
    st = cell_statistics(e, np.ones(20), n_boot=100, n_perm=500, seed=7)
    np.testing.assert_allclose(st.pvalue, expected)


def test_bh_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).uniform(size=50) ** 3
    np.testing.assert_allclose(bh_qvalues(p), multipletests(p, method="fdr_bh")[1])


def test_dataframe_and_cells(tiny_model, tiny_reference):
    import mechprobe

    res = mechprobe.patch(
        tiny_model, PAIRS, components=["resid_pre", "z"], reference=tiny_reference, n_boot=100
    )
    df = res.to_dataframe()
    assert list(df.columns) == ["component", "layer", "pos", "head", "pair", "value"]
    n_pos = len(tokenise_pairs(tiny_model, PAIRS).clean[0])
    assert len(df) == 2 * (n_pos + 4) * len(PAIRS)
    z = df[df.component == "z"]
    assert z["pos"].isna().all() and not z["head"].isna().any()
    assert df[df.component == "resid_pre"]["head"].isna().all()
    assert sorted(df.pair.unique()) == list(range(len(PAIRS)))
    row = df[(df.component == "resid_pre") & (df.layer == 1) & (df.pos == 3) & (df.pair == 2)]
    assert row["value"].item() == res.ds["resid_pre"].values[1, 3, 2]
    cells = res.cells
    assert list(cells.columns) == [
        "component", "layer", "pos", "head", "mean", "ci_low", "ci_high", "pvalue", "qvalue"
    ]  # fmt: skip
    assert len(cells) == 2 * (n_pos + 4)
    assert res.ds["resid_pre"].dims == ("layer", "pos", "pair")
    assert res.ds["z_qvalue"].dims == ("layer", "head")
    figs = res.figures()
    assert set(figs) == {"positions", "heads", "spread"}


def test_unequal_lengths_exit_2(tmp_path, tiny_cli):
    bad = dict(PAIRS[0], corrupt="When Mary and John went to the big store, Mary gave a drink to")
    path = write_pairs(tmp_path / "pairs.jsonl", [PAIRS[1], bad])
    code, _, err = run_cli("patch", "--model", "tiny-gpt2", "--out", str(tmp_path / "o"),
                           "--pairs", str(path))  # fmt: skip
    assert_one_line_error(code, err, "pair 1", "different lengths", "15 vs 16")
    assert not (tmp_path / "o" / "patch").exists()


def test_multi_token_answer_exit_2(tmp_path, tiny_cli):
    bad = dict(PAIRS[0], answer=" Marygold-Smith")
    path = write_pairs(tmp_path / "pairs.jsonl", [bad])
    code, _, err = run_cli("patch", "--model", "tiny-gpt2", "--out", str(tmp_path / "o"),
                           "--pairs", str(path))  # fmt: skip
    assert_one_line_error(code, err, "pair 0", "answer", "exactly one")


def test_builtin_sets_tokenise_on_gpt2(tiny_model):
    for name in ("ioi", "negation"):
        pairs = load_pairs(name)
        assert len(pairs) >= 100 and len({p["template"] for p in pairs}) >= 4
        tp = tokenise_pairs(tiny_model, pairs)  # raises on any unequal pair
        assert len(tp.answer) == len(pairs)


def test_failed_set_is_not_patched(tiny_model, tiny_reference):
    """Pairs whose answer the model never prefers: reported as failed, no cells."""
    flipped = [dict(p, answer=p["wrong"], wrong=p["answer"]) for p in PAIRS]
    tp = tokenise_pairs(tiny_model, PAIRS)
    with torch.inference_mode():
        logits = tiny_model(torch.tensor(tp.clean))[:, -1]
    rows = torch.arange(len(PAIRS))
    mean = (logits[rows, tp.answer] - logits[rows, tp.wrong]).mean().item()
    pairs = flipped if mean > 0 else PAIRS  # whichever direction the random model gets wrong
    res = ep.run(ep.resolve(ep.PatchConfig(), model_shape(tiny_model)), tiny_model,
                 tiny_reference, pairs)  # fmt: skip
    assert res.summary["failed"] and "resid_pre" not in res.arrays
    f = ep.finding(res)
    assert f.verdict == "not tested" and "fails this pair set" in f.this_run
    assert "not patched" in ep.table(res)


def test_cli_defaults_write_a_step(tmp_path, tiny_cli):
    code, out, err = run_cli("patch", "--model", "tiny-gpt2", "--out", str(tmp_path),
                             "--max-pairs", "12", "--n-boot", "100")  # fmt: skip
    assert code == 0, (out, err)
    dest = tmp_path / "patch"
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["pairs"] == "ioi" and summary["n_pairs"] == 12
    assert summary["components"] == ["resid_pre", "attn_out", "mlp_out", "z"]
    for fig in ("positions", "heads", "spread"):
        assert (dest / "figures" / f"{fig}.html").is_file()
    assert "TL vs HF hooks" in out
    check_patching_table(dest, summary)


def check_patching_table(dest, summary):
    """The README's patching table, read back from the step: its numbers recomputed here."""
    from mechprobe.report.markdown import patch_figures_markdown, patch_markdown

    table = patch_markdown({"tiny-gpt2": {"ioi": dest}})
    cell = table.splitlines()[-1]
    assert cell.startswith("| indirect-object identification (`ioi`) | **")
    assert f"clean logit diff {summary['clean_mean']:.2f}" in cell
    a = np.load(dest / "arrays.npz")
    effect = (a["z"] - a["corrupt"]).mean(-1) / (a["clean"] - a["corrupt"]).mean()
    layer, head = np.unravel_index(int(np.nanargmax(effect)), effect.shape)
    assert f"strongest head L{layer}H{head} {effect[layer, head]:.2f}" in cell
    assert f"{summary['n_significant']} of {summary['n_cells']} cells survive" in cell
    failed = dest.parent / "failed"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({**summary, "failed": True}))
    (failed / "finding.json").write_text((dest / "finding.json").read_text())
    row = patch_markdown({"m": {"negation": failed}}).splitlines()[-1]
    assert "**fails the set**" in row and "not patched" in row
    figs = dest.parent / "figs"
    figs.mkdir()
    (figs / "patch_ioi_tiny-gpt2_heads.png").write_bytes(b"png")
    grid = patch_figures_markdown(figs, ["tiny-gpt2", "other"])
    assert "![tiny-gpt2: ioi, heads](figures/patch_ioi_tiny-gpt2_heads.png) | - |" in grid
    assert "positions" not in grid.split("| --- |")[-1]


def test_mixed_lengths_are_aligned_at_the_end(tiny_model, tiny_reference):
    """Pairs of two lengths: each group equals TransformerLens on that group alone, shifted so
    the last tokens share the last column; every cell some pair has gets a finite interval."""
    longer = [
        dict(p, clean=p["clean"].replace("the store", "the big old store"),
             corrupt=p["corrupt"].replace("the store", "the big old store"), template="c")
        for p in PAIRS[:4]
    ]  # fmt: skip
    pairs = PAIRS + longer
    config = ep.resolve(
        ep.PatchConfig(components=("resid_pre", "z"), n_boot=200), model_shape(tiny_model)
    )
    res = ep.run(config, tiny_model, tiny_reference, pairs)
    short_n, long_n = (len(tokenise_pairs(tiny_model, g).clean[0]) for g in (PAIRS, longer))
    shift = long_n - short_n
    assert shift > 0
    got = res.arrays["resid_pre"]
    short_tl = tl_sweep(tiny_model, PAIRS, "get_act_patch_resid_pre")
    long_tl = tl_sweep(tiny_model, longer, "get_act_patch_resid_pre")
    np.testing.assert_allclose(got[:, shift:, : len(PAIRS)], short_tl, atol=1e-5)
    assert np.isnan(got[:, :shift, : len(PAIRS)]).all()
    np.testing.assert_allclose(got[:, :, len(PAIRS) :], long_tl, atol=1e-5)
    has = ~np.isnan(res.arrays["resid_pre_mean"])
    assert has.all()
    assert np.isfinite(res.arrays["resid_pre_ci_low"][has]).all()
    assert res.summary["reference"]["passed"], res.summary["reference"]
    assert len(res.summary["position_tokens"]) == long_n
