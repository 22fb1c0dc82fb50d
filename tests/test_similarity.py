"""E3 Q/K/V similarities: checked against HF ``attn.c_attn`` outputs and numpy cosine matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechprobe.corpus.sentences import encode_sentences
from mechprobe.data import read_data_text
from mechprobe.errors import MechprobeError
from mechprobe.experiments import similarity as e3
from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.similarity import SimilarityConfig
from mechprobe.models.registry import model_shape
from mechprobe.stats.cosine import (
    BLOCKS,
    HIST_EDGES,
    cosine_block_stats,
    depth_profile,
    stream_similarity,
)
from mechprobe.units import QKVLayout
from tests.helpers import assert_close, assert_one_line_error, run_cli

SENTENCES = [s for s in read_data_text("sentences_her.txt").splitlines() if s.strip()]
TINY = QKVLayout(4, 4, 16)


def run_similarity(config, model):
    """Resolve the config against the model, then run E3 (as the runner does)."""
    return e3.run(e3.resolve(config, model_shape(model)), model)


# ----------------------------------------------------------------------------------------------
# Independent computation: HF forward hooks on c_attn / q,k,v_proj, numpy cosine matrices.


def reference_inputs(tok, sentences, target=" her"):
    """Right-padded ids (eos padding) and target / non-target index, found by hand."""
    tid = tok(target, add_special_tokens=False).input_ids
    assert len(tid) == 1
    ids = [tok(s, add_special_tokens=False).input_ids for s in sentences]
    t_idx = np.array([row.index(tid[0]) for row in ids])
    width = max(map(len, ids))
    tokens = torch.tensor([row + [tok.eos_token_id] * (width - len(row)) for row in ids])
    return tokens, t_idx, t_idx - 1


def hf_qkv_units(hf, tokens, positions, layers):
    """{layer: [2, n, units]} from HF projection outputs (GPT-2 c_attn; Llama q|k|v_proj)."""
    outs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for L in layers:
        if hasattr(hf, "transformer"):  # GPT-2: fused c_attn, columns q|k|v head-major
            mods = {"qkv": hf.transformer.h[L].attn.c_attn}
        else:
            attn = hf.model.layers[L].self_attn
            mods = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
        for key, mod in mods.items():
            handles.append(
                mod.register_forward_hook(
                    lambda m, i, o, L=L, key=key: outs.__setitem__((L, key), o.detach())
                )
            )
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(tokens.shape[0])
    result = {}
    for L in layers:
        keys = ["qkv"] if (L, "qkv") in outs else ["q", "k", "v"]
        full = torch.cat([outs[(L, k)] for k in keys], dim=-1)
        result[L] = np.stack([full[rows, torch.as_tensor(p)].double().numpy() for p in positions])
    return result


def numpy_cosines(x, layout, centre=False):
    """{block: 1-D cosines} from the full unit x unit matrix; zero-norm units give NaN."""
    x = np.asarray(x, dtype=np.float64)
    if centre:
        const = np.ptp(x, axis=0) == 0
        x = x - x.mean(axis=0)
        x[:, const] = 0.0
    norms = np.linalg.norm(x, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (x.T @ x) / np.outer(norms, norms)
    sl = {c.upper(): layout.slice(c) for c in "qkv"}
    out = {}
    for b in BLOCKS:
        sub = cos[sl[b[0]], sl[b[1]]]
        vals = sub[np.triu_indices(sub.shape[0], k=1)] if b[0] == b[1] else sub.ravel()
        vals = vals[~np.isnan(vals)]
        out[b] = np.clip(vals, -1.0, 1.0)
    return out


def numpy_summary(units_by_layer, layout, centre=False):
    """Expected arrays, computed from scratch with numpy: variance, mean, hist, moments."""
    layers = sorted(units_by_layer)
    var = np.zeros((2, len(layers), 3))
    mean = np.zeros((2, len(layers), 3))
    hist = np.zeros((2, 6, len(layers), 100), dtype=np.int64)
    mom = np.zeros((3, 2, 6, len(layers)))  # mean, std, mean |cos|
    cosines = {}
    for li, L in enumerate(layers):
        for p in range(2):
            x = units_by_layer[L][p]
            for ci, c in enumerate("qkv"):
                xs = x[:, layout.slice(c)]
                var[p, li, ci] = np.var(xs, axis=0, ddof=0).mean()
                mean[p, li, ci] = np.mean(xs, axis=0).mean()
            cos = numpy_cosines(x, layout, centre)
            for bi, b in enumerate(BLOCKS):
                hist[p, bi, li] = np.histogram(cos[b], bins=HIST_EDGES)[0]
                mom[:, p, bi, li] = cos[b].mean(), cos[b].std(), np.abs(cos[b]).mean()
                cosines[(p, bi, li)] = cos[b]
    return {"variance": var, "mean": mean, "hist": hist, "moments": mom, "cosines": cosines}


def edge_margin(values):
    """Smallest distance of any value to an interior bin edge."""
    return float(np.min(np.abs(values[:, None] - HIST_EDGES[None, 1:-1])))


# ----------------------------------------------------------------------------------------------
# Unit tier (tiny-gpt2).


@pytest.mark.unit
@pytest.mark.parametrize("centre", [False, True])
def test_streaming_core_counts_exactly_on_hf_c_attn(tiny_reference, centre):
    """Core reduction on HF c_attn activations: every histogram count equals numpy's."""
    hf, tok = tiny_reference
    tokens, t_idx, n_idx = reference_inputs(tok, SENTENCES)
    units = hf_qkv_units(hf, tokens, [t_idx, n_idx], [0, 1])
    got = stream_similarity(
        (units[L] for L in (0, 1)), TINY.slices(), centre=centre, block_rows=37
    )  # an odd block size: blocks straddle nothing but split rows unevenly
    want = numpy_summary(units, TINY, centre=centre)
    sfx = "_centred" if centre else ""
    if centre:  # the Pearson variant equals numpy's correlation coefficients
        r = np.corrcoef(units[0][0].T)[TINY.slice("q"), TINY.slice("k")].ravel()
        assert_close(np.sort(r), np.sort(want["cosines"][(0, 3, 0)]), atol=1e-12)
    for values in want["cosines"].values():  # float64 noise (~1e-15) cannot move a count
        assert edge_margin(values) > 1e-10
    np.testing.assert_array_equal(got["hist" + sfx], want["hist"])
    assert_close(got["variance"], want["variance"], atol=0, rtol=1e-12)
    assert_close(got["mean"], want["mean"], atol=1e-12, rtol=1e-12)
    assert_close(got["cos_mean" + sfx], want["moments"][0], atol=1e-12)
    assert_close(got["cos_std" + sfx], want["moments"][1], atol=1e-12)
    assert_close(got["cos_mean_abs" + sfx], want["moments"][2], atol=1e-12)
    n = (64 * 63) // 2
    assert got["n_pairs" + sfx][0, :, 0].tolist() == [n, n, n, 4096, 4096, 4096]


@pytest.mark.unit
def test_run_similarity_matches_hf_reference(tiny_model, tiny_reference):
    """End to end through TransformerLens hooks vs the HF c_attn output (float32 noise only)."""
    hf, tok = tiny_reference
    tokens, t_idx, n_idx = reference_inputs(tok, SENTENCES)
    res = run_similarity(SimilarityConfig(), tiny_model)
    a = res.arrays
    np.testing.assert_array_equal(a["target_index"], t_idx)
    np.testing.assert_array_equal(a["nontarget_index"], n_idx)
    np.testing.assert_array_equal(a["layers"], [0, 1])
    np.testing.assert_array_equal(a["hist_edges"], np.linspace(-1, 1, 101))
    assert a["hist"].shape == (2, 6, 2, 100) and a["variance"].shape == (2, 2, 3)
    want = numpy_summary(hf_qkv_units(hf, tokens, [t_idx, n_idx], [0, 1]), TINY)
    assert_close(a["variance"], want["variance"], atol=1e-6, rtol=1e-5)
    assert_close(a["mean"], want["mean"], atol=1e-6, rtol=1e-5)
    assert_close(a["cos_mean"], want["moments"][0], atol=1e-6)
    assert_close(a["cos_std"], want["moments"][1], atol=1e-6)
    # Every count: TL and HF activations differ by float32 rounding (~1e-7), so a cosine within
    # 1e-5 of a bin edge may land on either side of it; every other value must be in its bin.
    delta = 1e-5
    for (p, bi, li), cos in want["cosines"].items():
        near = np.abs(cos[:, None] - HIST_EDGES[None, 1:-1]) < delta
        ambiguous = near.any(axis=1)
        lo = np.histogram(cos[~ambiguous], bins=HIST_EDGES)[0]
        slack = np.zeros(100, dtype=np.int64)
        for e in np.nonzero(near)[1]:  # edge e+1 separates bins e and e+1
            slack[e] += 1
            slack[e + 1] += 1
        got = a["hist"][p, bi, li]
        assert got.sum() == cos.size
        assert np.all(got >= lo) and np.all(got <= lo + slack), (BLOCKS[bi], p, li)
        if not ambiguous.any():
            np.testing.assert_array_equal(got, want["hist"][p, bi, li])
    per_layer = res.summary["per_layer"]
    assert [e["layer"] for e in per_layer] == [0, 1]
    assert per_layer[1]["nontarget"]["KV"]["std"] == pytest.approx(a["cos_std"][1, 5, 1])
    assert res.summary["n_sentences"] == len(SENTENCES) == 54


@pytest.mark.unit
@pytest.mark.parametrize("block_rows", [1, 5, 1000])
def test_zero_norm_and_constant_units_are_excluded(block_rows):
    rng = np.random.default_rng(0)
    layout = QKVLayout(2, 1, 4)  # 8 Q units, 4 K, 4 V
    x = rng.standard_normal((9, layout.n_units))
    x[:, 1] = 0.0  # zero column: no cosine
    x[:, 9] = 3.5  # constant column: cosine defined, Pearson correlation not
    x[:, 13] = x[:, 2] * 2  # cosine exactly +1 with unit 2 (last bin, closed)
    for centre in (False, True):
        got = cosine_block_stats(x, layout.slices(), centre=centre, block_rows=block_rows)
        cos = numpy_cosines(x, layout, centre)
        for bi, b in enumerate(BLOCKS):
            np.testing.assert_array_equal(got["hist"][bi], np.histogram(cos[b], HIST_EDGES)[0])
            assert got["n_pairs"][bi] == cos[b].size
            assert got["cos_std"][bi] == pytest.approx(cos[b].std(), abs=1e-12)
        assert int(got["n_zero_units"]) == (2 if centre else 1)
    n_q_valid = 7
    assert got["n_pairs"][0] == n_q_valid * (n_q_valid - 1) // 2


@pytest.mark.unit
def test_depth_finding_on_synthetic_layers():
    rng = np.random.default_rng(1)
    shared = rng.standard_normal((1, TINY.n_units))
    scale = rng.standard_normal((54, 1))  # rank one: every cosine is exactly +-1
    early = np.stack([scale * shared] * 2)
    late = rng.standard_normal((2, 54, TINY.n_units))  # cosines spread around 0
    layers = [early, early, late, late]

    def verdict(stack):
        arrays = stream_similarity(iter(stack), TINY.slices())
        mean_abs, far = depth_profile(
            arrays["n_pairs"][0], arrays["cos_mean_abs"][0], arrays["hist"][0]
        )
        arrays.update(depth_mean_abs=mean_abs, depth_far_share=far)
        summary = {"layers": [0, 1, 2, 3], "n_sentences": 54, "target": " her"}
        return arrays, e3.finding(ExperimentResult("similarity", arrays, summary))

    arrays, finding = verdict(layers)
    assert np.all(arrays["cos_mean_abs"][:, :, :2] > 1 - 1e-9)
    assert arrays["depth_far_share"][0] == 1.0 and arrays["depth_mean_abs"][0] > 1 - 1e-9
    assert finding.verdict == "holds" and "1.00 at layer 0" in finding.this_run
    assert verdict(layers[::-1])[1].verdict == "does not hold"


@pytest.mark.unit
def test_target_rules_multi_token_and_character_fallback(tiny_reference):
    _, tok = tiny_reference
    sents = ["We met Margarethe at noon.", "Later Margarethe and Margarethe left."]
    enc = encode_sentences(tok, sents, " Margarethe")
    tid = tok(" Margarethe", add_special_tokens=False).input_ids
    assert len(tid) == 3
    for n, s in enumerate(sents):
        ids = tok(s, add_special_tokens=False).input_ids
        first = next(i for i in range(len(ids)) if ids[i : i + 3] == tid)
        assert enc.target_index[n] == first + 2  # last token of the first occurrence
        assert enc.nontarget_index[n] == first - 1
    # "her" alone tokenises differently from " her" in context: found by character offsets.
    enc = encode_sentences(tok, ["She told her sister."], "her")
    ids = tok("She told her sister.", add_special_tokens=False).input_ids
    assert enc.target_index[0] == ids.index(tok(" her").input_ids[0]) and enc.fallback_rows == [0]
    assert enc.tokens.shape == (1, len(ids))
    enc = encode_sentences(tok, ["a her", "one two three four her"], " her")
    assert enc.tokens[0, 2:].tolist() == [tok.eos_token_id] * 3  # right padding, no BOS
    with pytest.raises(MechprobeError, match=r"sentence 2 .*no token comes before"):
        encode_sentences(tok, ["a her", "her own"], "her")


@pytest.mark.unit
def test_cli_missing_target_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")
    f = tmp_path / "s.txt"
    f.write_text("He handed her the map.\nThe river was cold that morning.\n", encoding="utf-8")
    code, _, err = run_cli(
        "similarity", "--model", "tiny-gpt2", "--out", str(tmp_path), "--sentences", str(f)
    )
    assert_one_line_error(code, err, "sentence 2", "The river was cold", "' her'")
    assert not (tmp_path / "similarity").exists()
    code, _, err = run_cli(
        "similarity", "--model", "tiny-gpt2", "--out", str(tmp_path), "--layers", "0,7"
    )
    assert_one_line_error(code, err, "layer 7")


@pytest.mark.unit
def test_cli_writes_outputs(tmp_path, monkeypatch, tiny_reference):
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")
    f = tmp_path / "s.txt"
    f.write_text("\n".join(SENTENCES[:12]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "similarity", "--model", "tiny-gpt2", "--out", str(out), "--sentences", str(f),
        "--layers", "1", "--centre",
    )  # fmt: skip
    assert code == 0, err
    assert "QQ std" in stdout
    d = out / "similarity"
    arrays = np.load(d / "arrays.npz")
    summary = json.loads((d / "summary.json").read_text())
    assert arrays["hist"].shape == arrays["hist_centred"].shape == (2, 6, 1, 100)
    assert arrays["variance"].shape == arrays["mean"].shape == (2, 1, 3)
    assert summary["n_sentences"] == 12 and summary["layers"] == [1] and summary["centre"]
    assert set(summary["per_layer"][0]["target"]) == set(BLOCKS)
    hf, tok = tiny_reference
    tokens, t_idx, n_idx = reference_inputs(tok, SENTENCES[:12])
    units = hf_qkv_units(hf, tokens, [t_idx, n_idx], [1])
    want = numpy_summary(units, TINY, centre=True)
    assert_close(arrays["cos_std_centred"], want["moments"][1], atol=1e-6)
    for name in ("histograms_by_depth", "heatmap_target", "moments", "cosine_spread"):
        assert (d / "figures" / f"{name}.html").is_file()


# ----------------------------------------------------------------------------------------------
# Integration tier (smollm2-135m, grouped-query attention).


@pytest.mark.integration
def test_grouped_query_shapes_smollm2(smol_model, smol_reference, tmp_path):
    hf, tok = smol_reference
    layers = (0, 2)
    sents = SENTENCES[:16]
    f = tmp_path / "sentences.txt"
    f.write_text("\n".join(sents), encoding="utf-8")
    res = run_similarity(SimilarityConfig(sentences=str(f), layers=layers), smol_model)
    a = res.arrays
    assert res.summary["n_units"] == {"q": 576, "k": 192, "v": 192}
    nq, nk = 576, 192
    expected_pairs = [nq * (nq - 1) // 2, nk * (nk - 1) // 2, nk * (nk - 1) // 2]
    expected_pairs += [nq * nk, nq * nk, nk * nk]
    excluded = a["n_zero_units"].sum()
    if excluded == 0:
        assert a["n_pairs"][0, :, 0].tolist() == expected_pairs
    np.testing.assert_array_equal(a["hist"].sum(-1), a["n_pairs"])
    tokens, t_idx, n_idx = reference_inputs(tok, sents)
    np.testing.assert_array_equal(a["target_index"], t_idx)
    units = hf_qkv_units(hf, tokens, [t_idx, n_idx], layers)
    assert units[0].shape == (2, 16, 960)
    want = numpy_summary(units, QKVLayout(9, 3, 64))
    assert_close(a["variance"], want["variance"], atol=1e-4, rtol=1e-4)
    assert_close(a["mean"], want["mean"], atol=1e-4, rtol=1e-4)
    assert_close(a["cos_std"], want["moments"][1], atol=1e-4)


@pytest.mark.unit
def test_bootstrap_over_sentences_matches_a_direct_computation(tiny_model, tiny_reference):
    """depth_boot[layer, b]: the mean |cos| over all unit pairs on resample b of the sentences."""
    from mechprobe.stats.bootstrap import resample_indices

    hf, tok = tiny_reference
    res = run_similarity(SimilarityConfig(n_boot=60, seed=3), tiny_model)
    boot = res.arrays["depth_boot"]
    assert boot.shape == (2, 60)
    tokens, t_idx, n_idx = reference_inputs(tok, SENTENCES)
    units = hf_qkv_units(hf, tokens, [t_idx, n_idx], [0, 1])
    rows = resample_indices(len(SENTENCES), 60, 3)
    for layer in (0, 1):
        for b in (0, 17, 59):
            x = units[layer][0][rows[b]]
            xn = x / np.linalg.norm(x, axis=0)
            cos = xn.T @ xn
            want = np.abs(cos[np.triu_indices(cos.shape[0], k=1)]).mean()
            assert boot[layer, b] == pytest.approx(want, abs=2e-5)
    finding = e3.finding(res)
    assert (
        "95% CI" in finding.this_run and "bootstrap over sentences (60 resamples" in finding.sample
    )


def test_bootstrap_beside_the_stream_equals_the_serial_loop():
    """The resamples are computed on worker threads while the layers stream on: every layer
    passes through unchanged and in order, and the replicates equal the serial loop's."""
    from mechprobe.stats.cosine_bootstrap import resampled_mean_abs_cos

    rng = np.random.default_rng(2)
    slices = {"q": slice(0, 8), "k": slice(8, 12), "v": slice(12, 16)}
    layers = [rng.normal(size=(2, 20, 16)) + i * rng.normal(size=16) for i in range(7)]
    rows = np.random.default_rng(0).integers(0, 20, size=(60, 20))
    out: list = []
    passed = list(e3._bootstrapped(iter(layers), slices, rows, out))
    assert all(a is b for a, b in zip(passed, layers, strict=True))
    want = [resampled_mean_abs_cos(x[0], slices, rows) for x in layers]
    assert len(out) == len(want)
    for got, exp in zip(out, want, strict=True):
        np.testing.assert_array_equal(got, exp)
