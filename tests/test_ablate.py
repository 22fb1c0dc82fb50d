"""ablate: the stored selection, values, samples and null, recomputed independently.

The observed effect is recomputed with plain HuggingFace forward hooks on whole windows (no
cache, no skipped blocks), the p-values from the stored null by hand, the q-values with
statsmodels, and the selection's inputs are checked to be the select samples' activations only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechprobe
from mechprobe.experiments import ablate as ab
from tests.helpers import assert_one_line_error, hf_mlp_pre, run_cli

PRE, POST = 12, 3
K, R = 4, 19


@pytest.fixture(scope="module")
def neg(tiny_model, shared_text):
    return mechprobe.negation(
        tiny_model,
        shared_text,
        max_samples=24,
        folds=3,
        context_pre=PRE,
        context_post=POST,
        no_controls=True,
    )


@pytest.fixture(scope="module")
def hf_ids(tiny_reference, shared_text):
    _, tok = tiny_reference
    text = shared_text.read_bytes().decode("utf-8", errors="replace")
    return tok(text, add_special_tokens=False, verbose=False)["input_ids"]


@pytest.fixture(scope="module")
def seen():
    return []


@pytest.fixture(scope="module")
def res(tiny_model, tiny_reference, neg, shared_text, seen):
    import mechprobe.stats.heldout as heldout

    real = heldout.heldout_eval

    def spy(x, y, folds, **kw):
        seen.append((np.asarray(x).copy(), np.asarray(y).copy()))
        return real(x, y, folds, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(heldout, "heldout_eval", spy)
    try:
        out = mechprobe.ablate(
            tiny_model,
            neg,
            k=K,
            draws=R,
            layers=[0, 1],
            max_eval=8,
            n_boot=200,
            stop_after=3,  # draws stop early where 3 random sets reach the observed effect
            batch_rows=40,  # 5 unit sets per forward
            text=shared_text,
            reference=tiny_reference,
        )
    finally:
        mp.undo()
    return out


def _windows(hf_ids, positions):
    return torch.tensor([hf_ids[p - PRE : p + POST + 1] for p in positions])


def _hf_effect(hf, windows, module, cols, values):
    """Mean KL and loss increase over the window from the target, by a plain forward hook."""

    def hook(m, args, output):
        output = output.clone()
        output[:, PRE, cols] = values
        return output

    with torch.no_grad():
        clean = torch.log_softmax(hf(windows).logits.double(), -1)[:, PRE:]
        h = module.register_forward_hook(hook)
        try:
            abl = torch.log_softmax(hf(windows).logits.double(), -1)[:, PRE:]
        finally:
            h.remove()
    kl = (clean.exp() * (clean - abl)).sum(-1).mean(-1)
    nxt = windows[:, PRE + 1 :, None]
    loss = (clean[:, :-1].gather(-1, nxt) - abl[:, :-1].gather(-1, nxt))[..., 0].mean(-1)
    return kl.numpy(), loss.numpy()


@pytest.mark.unit
def test_result_stores_selection_values_samples_and_null(res, neg):
    a, s = res.raw.arrays, res.summary
    assert s["families"] == ["qkv", "mlp"] and s["layers"] == [0, 1]
    assert a["selected"].shape == (2, 2, K) and a["ablation_value"].shape == (2, 2, K)
    assert a["null"].shape == (2, 2, 2, R) and a["null_units"].shape == (2, 2, R, K)
    sel = res.selected
    assert list(sel.columns) == ["family", "layer", "rank", "unit", "ablation_value"]
    assert len(sel) == 2 * 2 * K
    null = res.null
    assert list(null.columns) == ["family", "layer", "metric", "draw", "value"]
    made = np.isfinite(a["null"][:, :, 0]).sum()
    assert len(null) == 2 * made and null["value"].notna().all()
    assert made >= 2 * 2 * 5  # at least the first forward's draws
    samples = res.samples
    assert {"position", "label", "split"} <= set(samples.columns)
    assert samples["position"].tolist() == neg.samples["position"].tolist()
    assert (samples["split"] == "eval").sum() == 8
    df = res.to_dataframe()
    cols = ["family", "layer", "metric", "observed", "ci_low", "ci_high", "pvalue", "qvalue"]
    assert list(df.columns[: len(cols)]) == cols and len(df) == 2 * 2 * 2
    assert {"difference", "observed_affirmation", "observed_negation"} <= set(df.columns)


@pytest.mark.unit
def test_selection_never_uses_eval_samples(res, seen, tiny_reference, hf_ids):
    a = res.raw.arrays
    split, folds = a["split"], a["folds"]
    assert set(np.flatnonzero(split == "eval")) <= set(np.flatnonzero(folds == 0))
    assert np.array_equal(split == "select", folds != 0)
    # every selection fit saw exactly the select samples' activations (HF hooks), none else
    hf, _ = tiny_reference
    select = np.flatnonzero(split == "select")
    windows = _windows(hf_ids, a["positions"][select])
    assert len(seen) == 4
    for (x, y), layer in zip(seen[2:], [0, 1], strict=True):  # the mlp fits
        want = hf_mlp_pre(hf, windows, layer, PRE)
        np.testing.assert_allclose(x, want, atol=1e-4)
        assert np.array_equal(y, a["labels"][select])
    # the mean ablation values are the select samples' means (mlp, layer 1)
    want = hf_mlp_pre(hf, windows, 1, PRE).mean(0)[a["selected"][1, 1]]
    np.testing.assert_allclose(a["ablation_value"][1, 1], want, atol=1e-5)


@pytest.mark.unit
def test_observed_effect_matches_plain_hf_hooks(res, tiny_reference, hf_ids):
    hf, _ = tiny_reference
    a = res.raw.arrays
    ev = a["eval_index"]
    windows = _windows(hf_ids, a["positions"][ev])
    for fi, module in ((1, hf.transformer.h[1].mlp.c_fc), (0, hf.transformer.h[1].attn.c_attn)):
        cols = torch.as_tensor(a["selected"][fi, 1])
        vals = torch.as_tensor(a["ablation_value"][fi, 1], dtype=torch.float32)
        kl, loss = _hf_effect(hf, windows, module, cols, vals)
        np.testing.assert_allclose(a["eval_effect"][fi, 1, 0], kl, atol=1e-5)
        np.testing.assert_allclose(a["eval_effect"][fi, 1, 1], loss, atol=1e-5)
        assert abs(a["observed"][fi, 1, 0] - kl.mean()) < 1e-5
        assert abs(a["observed"][fi, 1, 1] - loss.mean()) < 1e-5
        labels = a["labels"][ev]
        diff = kl[labels == 1].mean() - kl[labels == 0].mean()
        assert abs(a["difference"][fi, 1, 0] - diff) < 1e-5


@pytest.mark.unit
def test_pvalues_and_qvalues_from_the_stored_null(res):
    from statsmodels.stats.multitest import multipletests

    a = res.raw.arrays
    obs, null = a["observed"], a["null"]
    drawn = np.isfinite(null).sum(-1)  # R, or fewer where the draws stopped early
    assert drawn.max() <= R
    want = (1 + (null >= obs[..., None]).sum(-1)) / (drawn + 1)
    np.testing.assert_array_equal(a["pvalue"], want)
    # where the draws stopped early, at least 3 random sets reached the observed effect
    for at in zip(*np.nonzero(drawn < R), strict=True):
        assert (null[at] >= obs[at]).sum() >= 3
    for mi in range(2):
        p = a["pvalue"][:, :, mi].ravel()
        q = multipletests(p, method="fdr_bh")[1]
        np.testing.assert_allclose(a["qvalue"][:, :, mi].ravel(), q, rtol=1e-12)
    df = res.to_dataframe()
    row = df[(df.family == "mlp") & (df.layer == 1) & (df.metric == "kl")].iloc[0]
    assert row["pvalue"] == a["pvalue"][1, 1, 0] and row["qvalue"] == a["qvalue"][1, 1, 0]


@pytest.mark.unit
def test_bh_qvalues_match_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(3).uniform(size=37) ** 2
    np.testing.assert_allclose(ab.bh_qvalues(p), multipletests(p, method="fdr_bh")[1])


@pytest.mark.unit
def test_cli_ablate_from_a_negation_step(tmp_path, tiny_cli, shared_text):
    out = tmp_path / "o"
    code, _, err = run_cli(
        "negation",
        "--model",
        "tiny-gpt2",
        "--text",
        str(shared_text),
        "--max-samples",
        "30",
        "--context-pre",
        "20",
        "--context-post",
        "4",
        "--out",
        str(out),
    )
    assert code == 0, err
    code, text, err = run_cli("ablate", "--from", str(out / "negation"))
    assert code == 0, err
    assert (out / "ablate" / "manifest.json").is_file()
    got = mechprobe.load_result(out / "ablate")
    assert isinstance(got, mechprobe.AblateResult)
    assert got.summary["draws"] == 200 and got.summary["method"] == "mean"
    assert "observed" in text


@pytest.mark.unit
def test_bad_from_is_one_line_error(tmp_path, tiny_cli):
    code, _, err = run_cli("ablate", "--from", str(tmp_path / "missing"))
    assert_one_line_error(code, err, "--from", "no such directory")
    (tmp_path / "heads").mkdir()
    code, _, err = run_cli("ablate", "--from", str(tmp_path / "heads"))
    assert_one_line_error(code, err, "--from", "not a probe step")


@pytest.mark.unit
def test_e1_finding_gains_the_causal_line_and_keeps_its_caveat(tmp_path):
    import json

    from mechprobe.report.markdown import read_findings

    (tmp_path / "negation").mkdir()
    (tmp_path / "ablate").mkdir()
    e1 = {"claim": "c", "this_run": "Decodable; word identity explains it.", "verdict": "holds"}
    (tmp_path / "negation" / "finding.json").write_text(json.dumps(e1))
    line = "Ablation (causal): mlp top-10 units matter (layer 15: KL 1e-3 vs random 1e-4, p 0.005)."
    summary = {"probe": "negation", "causal_line": line}
    (tmp_path / "ablate" / "summary.json").write_text(json.dumps(summary))
    got = read_findings(tmp_path)["negation"]
    assert got["this_run"] == f"{e1['this_run']} {line}" and got["verdict"] == "holds"
    summary["probe"] = "probe"  # an ablation of another probe says nothing about E1
    (tmp_path / "ablate" / "summary.json").write_text(json.dumps(summary))
    assert read_findings(tmp_path)["negation"]["this_run"] == e1["this_run"]
