"""E2 attention heads: every array against an independent HF + numpy/scipy computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde

from mechprobe.errors import MechprobeError
from mechprobe.experiments import heads as heads_mod
from mechprobe.experiments.heads import HeadsConfig, default_text
from mechprobe.models.registry import model_shape
from mechprobe.validate import relative_layer
from tests.helpers import assert_close, assert_one_line_error, run_cli


def run_heads(config, model, reference):
    """Resolve the config against the model, then run E2 (as the runner does)."""
    return heads_mod.run(heads_mod.resolve(config, model_shape(model)), model, reference)


ISSUE_ARRAYS = (
    "q_mean",
    "q_std",
    "k_mean",
    "k_std",
    "raw_same",
    "raw_diff",
    "attn_final_to_prev",
    "attn_self",
    "kde_grid",
    "kde_final_to_prev",
    "kde_self",
)


def _tokens(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok(text, add_special_tokens=False).input_ids])


def _hf_gpt2_qk(hf, tokens: torch.Tensor, layer: int):
    """Q, K as numpy [pos, head, d_head] from a hook on c_attn, plus HF's eager attentions."""
    got = {}
    handle = hf.transformer.h[layer].attn.c_attn.register_forward_hook(
        lambda m, a, out: got.__setitem__("qkv", out.detach().double().numpy()[0])
    )
    try:
        with torch.inference_mode():
            res = hf(tokens, output_attentions=True)
    finally:
        handle.remove()
    qkv = got["qkv"]
    d_model = qkv.shape[1] // 3
    n_heads = hf.config.n_head
    d_head = d_model // n_heads
    q = qkv[:, :d_model].reshape(-1, n_heads, d_head)
    k = qkv[:, d_model : 2 * d_model].reshape(-1, n_heads, d_head)
    return q, k, res.attentions[layer][0].double().numpy()


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rest = x[1:].transpose(1, 0, 2).reshape(x.shape[1], -1)  # head, (pos d_head)
    return rest.mean(axis=1), rest.std(axis=1, ddof=1)


def _softmax(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    n, _, d = q.shape
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _kde(values: np.ndarray, grid: np.ndarray, bw="scott") -> np.ndarray:
    density = gaussian_kde(values, bw_method=bw)(grid)
    return density / density.max()


# ---------------------------------------------------------------- tiny-gpt2 (unit)


@pytest.fixture(scope="module")
def tiny_expected(tiny_model, tiny_reference):
    """An independent computation of every array from HF's c_attn output at layer 1."""
    hf, tok = tiny_reference
    layer = 1
    tokens = _tokens(tok, default_text())
    q, k, hf_attn = _hf_gpt2_qk(hf, tokens, layer)
    n, n_heads, _ = q.shape
    same, diff = [], []
    for h in range(n_heads):
        for h2 in range(n_heads):
            vals = [q[-1, h] @ k[t, h2] for t in range(1, n - 1)]
            (same if h2 == h else diff).extend(vals)
    p = _softmax(q, k)
    final = np.concatenate([p[h, -1, : n - 1] for h in range(n_heads)])
    selfw = np.concatenate([[p[h, t, t] for t in range(1, n)] for h in range(n_heads)])
    q_mean, q_std = _stats(q)
    k_mean, k_std = _stats(k)
    raw_same, raw_diff = np.array(same), np.array(diff)
    grid = np.linspace(0, 1, 300)
    raw_grid = np.linspace(
        min(raw_same.min(), raw_diff.min()), max(raw_same.max(), raw_diff.max()), 300
    )
    return {
        "n_tokens": n,
        "hf_attn": hf_attn,
        "pattern": p,
        "q_mean": q_mean,
        "q_std": q_std,
        "k_mean": k_mean,
        "k_std": k_std,
        "raw_same": raw_same,
        "raw_diff": raw_diff,
        "attn_final_to_prev": final,
        "attn_self": selfw,
        "kde_grid": grid,
        "kde_final_to_prev": _kde(final, grid),
        "kde_self": _kde(selfw, grid),
        "raw_kde_grid": raw_grid,
        "kde_raw_same": _kde(raw_same, raw_grid),
        "kde_raw_diff": _kde(raw_diff, raw_grid),
    }


@pytest.fixture(scope="module")
def tiny_result(tiny_model, tiny_reference):
    return run_heads(HeadsConfig(), tiny_model, tiny_reference)


@pytest.mark.unit
def test_defaults_course_layer_and_text(tiny_result, tiny_expected, tiny_model):
    s = tiny_result.summary
    assert s["layer"] == 1 and s["n_layers"] == 2  # the course's layer 6 of 12 -> 1 of 2
    config = heads_mod.resolve(HeadsConfig(), model_shape(tiny_model))
    assert config.text == default_text() and not config.text.endswith("\n")
    assert s["n_tokens"] == tiny_expected["n_tokens"] == len(s["tokens"])
    assert s["hooks"]["rotary"] is False


@pytest.mark.unit
@pytest.mark.parametrize("name", ["q_mean", "q_std", "k_mean", "k_std"])
def test_qk_stats_match_c_attn(tiny_result, tiny_expected, name):
    assert_close(tiny_result.arrays[name], tiny_expected[name], atol=1e-6, msg=name)


@pytest.mark.unit
def test_k_stats_per_kv_head_equal_per_head_without_gqa(tiny_result):
    a = tiny_result.arrays
    assert_close(a["k_mean_kv"], a["k_mean"], atol=0)
    assert_close(a["k_std_kv"], a["k_std"], atol=0)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["raw_same", "raw_diff"])
def test_raw_scores_match_c_attn(tiny_result, tiny_expected, name):
    n, h = tiny_expected["n_tokens"], 4
    expected_size = h * (n - 2) if name == "raw_same" else h * (h - 1) * (n - 2)
    assert tiny_result.arrays[name].shape == (expected_size,)
    assert_close(tiny_result.arrays[name], tiny_expected[name], atol=1e-5, msg=name)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["attn_final_to_prev", "attn_self", "pattern"])
def test_softmax_groups_match_c_attn(tiny_result, tiny_expected, name):
    assert_close(tiny_result.arrays[name], tiny_expected[name], atol=1e-6, msg=name)


@pytest.mark.unit
def test_softmax_matches_hf_attentions_and_first_token(tiny_result, tiny_expected):
    assert_close(tiny_result.arrays["pattern"], tiny_expected["hf_attn"], atol=1e-6)
    assert_close(tiny_result.arrays["attn_first_self"], np.ones(4), atol=0)
    assert tiny_result.summary["first_token_self_attention_max_dev"] == 0.0


@pytest.mark.unit
@pytest.mark.parametrize(
    "name",
    ["kde_grid", "kde_final_to_prev", "kde_self", "raw_kde_grid", "kde_raw_same", "kde_raw_diff"],
)
def test_kdes_match_scipy(tiny_result, tiny_expected, name):
    assert tiny_result.arrays[name].shape == (300,)
    # KDE inputs carry float32 rounding; the curves are smooth, so this is a tight check.
    assert_close(tiny_result.arrays[name], tiny_expected[name], atol=1e-4, msg=name)


@pytest.mark.unit
def test_summary_statistics_match(tiny_result, tiny_expected):
    s = tiny_result.summary
    for key in ("same", "diff"):
        raw = tiny_expected[f"raw_{key}"]
        assert s["negative_fraction"][key] == pytest.approx((raw < 0).mean(), abs=1e-12)
        assert s["median"][key] == pytest.approx(np.median(raw), abs=1e-5)
        assert s["n_pairs"][key] == raw.size


@pytest.mark.unit
def test_parity_checks_reported_and_pass(tiny_result, tiny_expected):
    parity = tiny_result.summary["parity"]
    for key in (
        "scores_vs_hook_attn_scores",
        "softmax_vs_hook_pattern",
        "softmax_vs_hf_attentions",
        "hook_pattern_vs_hf_attentions",
    ):
        assert 0 <= parity[key] <= 1e-5, key
    assert parity["passed"] is True and parity["tolerance"] == 1e-5
    # The reported HF difference is the real one (independent numpy recomputation).
    diff = np.abs(tiny_result.arrays["pattern"] - tiny_expected["hf_attn"]).max()
    assert parity["softmax_vs_hf_attentions"] == pytest.approx(diff, abs=1e-9)


@pytest.mark.unit
def test_custom_text_layer_and_bandwidth(tiny_model, tiny_reference):
    hf, tok = tiny_reference
    text = "The cat sat on the warm mat near the door."
    res = run_heads(HeadsConfig(layer=0, text=text, bandwidth=0.3), tiny_model, tiny_reference)
    q, k, _ = _hf_gpt2_qk(hf, _tokens(tok, text), 0)
    p = _softmax(q, k)
    n = q.shape[0]
    final = np.concatenate([p[h, -1, : n - 1] for h in range(4)])
    assert res.summary["layer"] == 0 and res.summary["n_tokens"] == n
    assert_close(res.arrays["q_mean"], _stats(q)[0], atol=1e-6)
    assert_close(
        res.arrays["kde_final_to_prev"], _kde(final, np.linspace(0, 1, 300), 0.3), atol=1e-4
    )
    assert res.summary["bandwidth"] == 0.3


@pytest.mark.unit
def test_three_token_text_is_enough(tiny_model, tiny_reference):
    tok = tiny_reference[1]
    text = "The cat sat"
    assert _tokens(tok, text).shape[1] == 3
    res = run_heads(HeadsConfig(text=text), tiny_model, tiny_reference)
    assert res.arrays["raw_same"].shape == (4,) and res.arrays["raw_diff"].shape == (12,)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (HeadsConfig(layer=2), "layer 2 is out of range"),
        (HeadsConfig(layer=-3), "layer -3 is out of range"),
        (HeadsConfig(text="Hello world"), "at least 3"),
        (HeadsConfig(text=" "), "the text is empty"),
        (HeadsConfig(bandwidth=-1.0), "bandwidth"),
        (HeadsConfig(bandwidth=1e-300), "no finite density"),
        (HeadsConfig(tolerance=float("nan")), "tolerance"),
        (HeadsConfig(text="word " * 300), "more than the model's context of 256"),
    ],
)
def test_bad_input_raises(tiny_model, tiny_reference, config, fragment):
    with pytest.raises(MechprobeError, match=fragment):
        run_heads(config, tiny_model, tiny_reference)


# ---------------------------------------------------------------- CLI (unit)


@pytest.mark.unit
def test_cli_end_to_end(tmp_path, monkeypatch, tiny_expected):
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")
    code, out, err = run_cli("heads", "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert code == 0, err
    assert "parity" in out and "same head" in out
    dest = tmp_path / "heads"
    with np.load(dest / "arrays.npz") as npz:
        arrays = dict(npz)
    for name in ISSUE_ARRAYS:
        assert name in arrays, name
    for name in ("q_mean", "q_std", "k_mean", "k_std"):
        assert arrays[name].shape == (4,)
    assert_close(arrays["raw_same"], tiny_expected["raw_same"], atol=1e-5)
    assert_close(arrays["attn_self"], tiny_expected["attn_self"], atol=1e-6)
    summary = json.loads((dest / "summary.json").read_text())
    for key in ("layer", "n_tokens", "negative_fraction", "median", "parity"):
        assert key in summary, key
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["model"]["model"] == "tiny-gpt2" and summary["parity"]["passed"] is True
    assert manifest["config"]["text"] == default_text() and manifest["config"]["layer"] == 1
    figs = {p.stem for p in (dest / "figures").glob("*.html")}
    assert figs >= {"qk_means", "qk_scatter", "raw_strip", "raw_hist", "attn_kde", "patterns"}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (("--layer", "7"), ("layer 7", "out of range")),
        (("--text", "Hi"), ("at least 3",)),
        (("--bandwidth", "wide"), ("--bandwidth",)),
        (("--layer", "7", "--bandwidth", "0"), ("--layer", "--bandwidth")),
    ],
)
def test_cli_bad_input_one_line_error(tmp_path, monkeypatch, argv, fragments):
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")
    code, _, err = run_cli("heads", "--model", "tiny-gpt2", "--out", str(tmp_path), *argv)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "heads").exists()


@pytest.mark.unit
def test_cli_parity_failure_exits_nonzero(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")
    from mechprobe.stats import attention

    real = attention.masked_softmax
    monkeypatch.setattr(attention, "masked_softmax", lambda s, m: real(s, m) + 1e-3)
    code, _, err = run_cli("heads", "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert code == 1
    assert "FAIL" in err and "softmax_vs_hook_pattern" in err
    summary = json.loads((tmp_path / "heads" / "summary.json").read_text())
    assert summary["parity"]["passed"] is False


# ---------------------------------------------------------------- smollm2-135m (integration)


def _hf_llama_rot_qk(hf, tokens: torch.Tensor, layer: int):
    """Pre- and post-rotary Q, K [pos, head, d_head] from q_proj/k_proj hooks + HF's rotary."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = hf.model.layers[layer].self_attn
    got = {}
    handles = [
        attn.q_proj.register_forward_hook(lambda m, a, o: got.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, a, o: got.__setitem__("k", o.detach())),
    ]
    try:
        with torch.inference_mode():
            res = hf(tokens, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    d_head = hf.config.head_dim
    n = tokens.shape[1]
    q = got["q"][0].reshape(n, -1, d_head)
    k = got["k"][0].reshape(n, -1, d_head)
    with torch.inference_mode():
        cos, sin = hf.model.rotary_emb(q, torch.arange(n)[None])
        # apply_rotary_pos_emb wants [batch, head, pos, d_head]
        rq, rk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    rq, rk = rq[0].transpose(0, 1), rk[0].transpose(0, 1)
    as_np = lambda t: t.double().numpy()  # noqa: E731
    return as_np(q), as_np(k), as_np(rq), as_np(rk), res.attentions[layer][0].double().numpy()


@pytest.fixture(scope="module")
def smol_result(smol_model, smol_reference):
    return run_heads(HeadsConfig(), smol_model, smol_reference)


@pytest.mark.integration
def test_smol_grouped_query_pairing(smol_result, smol_reference):
    hf, tok = smol_reference
    s, a = smol_result.summary, smol_result.arrays
    layer, n = s["layer"], s["n_tokens"]
    assert layer == relative_layer(6, 30) == 16 and s["n_heads"] == 9 and s["n_kv_heads"] == 3
    assert s["hooks"]["rotary"] is True
    assert a["raw_same"].shape == (9 * (n - 2),)
    assert a["raw_diff"].shape == (9 * 2 * (n - 2),)
    q, k, rq, rk, _ = _hf_llama_rot_qk(hf, _tokens(tok, default_text()), layer)
    group = 9 // 3
    same, diff = [], []
    for h in range(9):
        for kv in range(3):
            vals = [rq[-1, h] @ rk[t, kv] for t in range(1, n - 1)]
            (same if kv == h // group else diff).extend(vals)
    assert_close(a["raw_same"], np.array(same), atol=1e-3, rtol=1e-5)
    assert_close(a["raw_diff"], np.array(diff), atol=1e-3, rtol=1e-5)
    # Q/K stats come from the pre-rotary projections; K per query head via its kv head.
    k_mean_kv, k_std_kv = _stats(k)
    kv_of = np.arange(9) // group
    assert_close(a["q_mean"], _stats(q)[0], atol=1e-5)
    assert_close(a["q_std"], _stats(q)[1], atol=1e-5)
    assert_close(a["k_mean_kv"], k_mean_kv, atol=1e-5)
    assert_close(a["k_std_kv"], k_std_kv, atol=1e-5)
    assert_close(a["k_mean"], k_mean_kv[kv_of], atol=1e-5)
    assert_close(a["k_std"], k_std_kv[kv_of], atol=1e-5)


@pytest.mark.integration
def test_smol_parity_and_softmax(smol_result, smol_reference):
    hf, tok = smol_reference
    s, a = smol_result.summary, smol_result.arrays
    parity = s["parity"]
    assert parity["passed"] is True
    for key in (
        "scores_vs_hook_attn_scores",
        "softmax_vs_hook_pattern",
        "softmax_vs_hf_attentions",
        "hook_pattern_vs_hf_attentions",
    ):
        assert parity[key] <= 1e-5, key
    *_, rq, rk, hf_attn = _hf_llama_rot_qk(hf, _tokens(tok, default_text()), s["layer"])
    p = _softmax(rq, np.repeat(rk, 3, axis=1))
    assert_close(a["pattern"], p, atol=1e-5)
    assert_close(a["pattern"], hf_attn, atol=1e-5)
    n = s["n_tokens"]
    assert_close(
        a["attn_self"], np.concatenate([np.diagonal(p[h])[1:] for h in range(9)]), atol=1e-5
    )
    assert a["attn_final_to_prev"].shape == (9 * (n - 1),)


@pytest.mark.unit
def test_every_layer_every_query_position_matches_a_plain_loop(tiny_result, tiny_reference):
    """Per layer, the pooled share of negative scores over every query position (from HF)."""
    hf, tok = tiny_reference
    a = tiny_result.arrays
    assert a["layers"].tolist() == [0, 1] and a["layer_holds"].dtype == bool
    for layer in (0, 1):
        q, k, _ = _hf_gpt2_qk(hf, _tokens(tok, default_text()), layer)
        n = q.shape[0]
        same = [q[p, h] @ k[t, h] for p in range(2, n) for h in range(4) for t in range(1, p)]
        diff = [q[p, h] @ k[t, g] for p in range(2, n) for h in range(4) for g in range(4)
                if g != h for t in range(1, p)]  # fmt: skip
        assert a["layer_frac_same"][layer] == pytest.approx(np.mean(np.array(same) < 0), abs=1e-12)
        assert a["layer_frac_diff"][layer] == pytest.approx(np.mean(np.array(diff) < 0), abs=1e-12)
        assert a["layer_frac_same_low"][layer] <= a["layer_frac_same"][layer]
        assert a["layer_frac_same"][layer] <= a["layer_frac_same_high"][layer]
        holds = a["layer_frac_same_low"][layer] > 0.5 and a["layer_frac_diff_low"][layer] > 0.5
        assert a["layer_holds"][layer] == holds
    finding = heads_mod.finding(tiny_result)
    n_hold = int(a["layer_holds"].sum())
    want = "holds" if n_hold > 1 else "partly holds" if n_hold else "does not hold"
    assert finding.verdict == want and f"holds at {n_hold}/2 layers" == finding.key
