"""The replacement experiment (E4): arrays, summary, finding, figures and the CLI."""

import json

import numpy as np
import pytest
import torch

import mechprobe.models
from mechprobe.experiments.replace import (
    ReplaceConfig,
    build_interventions,
    condition_names,
    default_text,
    run_replace,
    scaling_finding,
)
from mechprobe.interventions import MLPNoise, ScaleOutput, ZeroHead
from mechprobe.plots.replace import figures
from mechprobe.reference.arch import hf_arch
from tests.helpers import assert_close, assert_one_line_error, run_cli

TINY = {"head_layer": 1, "mlp_layer": 0, "scale_layer": 0}
TINY_ARGS = ("--head-layer", "1", "--mlp-layer", "0", "--scale-layer", "0")


@pytest.fixture(scope="module")
def tiny_result(tiny_model, tiny_reference):
    config = ReplaceConfig(model="tiny-gpt2", **TINY)
    return run_replace(config, model=tiny_model, reference=tiny_reference)


@pytest.fixture
def fixture_models(monkeypatch, tiny_model, tiny_reference):
    """Make the CLI reuse the session's tiny-gpt2 instead of loading it again."""
    monkeypatch.setattr(mechprobe.models, "load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(mechprobe.models, "load_reference", lambda *a, **k: tiny_reference)
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")


def hf_hidden_at(hf, tokens, pos, hook=None):
    """Hidden states at ``pos`` from HF, optionally with one plain forward hook (module, fn)."""
    handle = hook[0].register_forward_hook(hook[1], prepend=True) if hook else None
    try:
        with torch.inference_mode():
            out = hf(tokens, output_hidden_states=True)
    finally:
        if handle:
            handle.remove()
    return torch.stack([h[0, pos] for h in out.hidden_states]).double().numpy(), out.logits[0, -1]


@pytest.mark.unit
def test_conditions_and_plan(tiny_model):
    assert condition_names((0.1, 10.0)) == [
        "baseline",
        "zero_head",
        "mlp_noise",
        "scale_0.1",
        "scale_10",
    ]
    plan = build_interventions(ReplaceConfig(**TINY), tiny_model, n_tokens=11)
    assert plan["zero_head"] == [ZeroHead(1, 2, "k")]
    noise = plan["mlp_noise"][0]
    assert isinstance(noise, MLPNoise) and noise.positions == (4,)
    assert noise.units == slice(None, None, 2)
    assert plan["scale_10"] == [ScaleOutput(0, 10.0)]


@pytest.mark.unit
def test_arrays_against_hf(tiny_result, tiny_reference):
    hf, tok = tiny_reference
    a, s = tiny_result.arrays, tiny_result.summary
    text = default_text()
    ids = tok(text, add_special_tokens=False).input_ids
    tokens = torch.tensor([ids])
    assert s["position_token"] == " bicycle" and s["text"] == text
    # baseline values and norms = HF's own hidden states at position 4
    base, base_logits = hf_hidden_at(hf, tokens, 4)
    assert a["baseline_values"].shape == (3, 64)
    assert_close(a["baseline_values"], base, atol=1e-5)
    assert_close(a["baseline_norm"], np.linalg.norm(base, axis=1), atol=1e-5)
    assert_close(a["baseline_std"], np.std(base, axis=1, ddof=1), atol=1e-5)
    # scale_10: a researcher's own hook on the HF block
    block = hf_arch(hf).blocks[0]
    scaled, scaled_logits = hf_hidden_at(hf, tokens, 4, (block, lambda m, i, o: o * 10.0))
    assert_close(a["scale_10_values"], scaled, atol=1e-4)
    assert_close(a["scale_10_norm"][1], 10 * np.linalg.norm(base[1]), atol=1e-4, rtol=1e-6)
    # KL and top-5 from HF's logits
    p = torch.log_softmax(base_logits.double(), -1)
    q = torch.log_softmax(scaled_logits.double(), -1)
    kl = float((p.exp() * (p - q)).sum())
    c = s["conditions"]
    assert c["scale_10"]["kl_from_baseline"] == pytest.approx(kl, rel=1e-3, abs=1e-8)
    assert c["baseline"]["kl_from_baseline"] == 0.0
    top = torch.softmax(base_logits.double(), -1).topk(5)
    assert [t["id"] for t in c["baseline"]["top5_next_tokens"]] == top.indices.tolist()
    # parity recorded for every condition
    assert set(c) == {"baseline", "zero_head", "mlp_noise", "scale_0.1", "scale_10"}
    assert all(x["tl_vs_hf_max_abs_diff"] <= 1e-4 for x in c.values())
    assert s["parity"]["passed"] is True


@pytest.mark.unit
def test_intervened_activations_for_check_plots(tiny_result):
    a, s = tiny_result.arrays, tiny_result.summary
    start, stop = s["zeroed_qkv_units"]
    assert (start, stop) == (64 + 2 * 16, 64 + 3 * 16)  # K head 2 among Q|K|V units
    assert np.all(a["zero_head_qkv"][start:stop] == 0)
    assert np.abs(a["baseline_qkv"][start:stop]).max() > 0
    keep = np.r_[0:start, stop:192]
    assert np.array_equal(a["zero_head_qkv"][keep], a["baseline_qkv"][keep])
    units = a["noise_units"]
    assert np.array_equal(units, np.arange(0, 256, 2))
    g = torch.Generator().manual_seed(0)
    expected = (torch.randn(1, 128, generator=g) + 10.0)[0].double().numpy()
    assert_close(a["mlp_noise_mlp_pre"][units], expected, atol=0)
    assert_close(a["noise_draws"], expected, atol=0)
    for c in tiny_result.summary["conditions"]:
        assert a[f"{c}_values"].shape == (3, 64) and a[f"{c}_resid_norm"].shape == (3,)
    odd = np.arange(1, 256, 2)
    assert np.array_equal(a["mlp_noise_mlp_pre"][odd], a["baseline_mlp_pre"][odd])


@pytest.mark.unit
def test_scaling_finding_logic():
    base = np.array([1.0, 2.0, 3.0, 4.0])
    yes = scaling_finding(base, base * [1, 0.1, 0.2, 0.5], 1.0, 0.95, 0, 0.1)
    assert yes["holds"] and yes["ratio_at_block"] == pytest.approx(0.1)
    assert yes["ratio_last_block_output"] == pytest.approx(0.5)
    no = scaling_finding(base, base * [1, 0.1, 0.05, 0.05], 1.0, 0.95, 0, 0.1)
    assert not no["holds"]
    up = scaling_finding(base, base * [1, 10, 8, 6], 1.0, 1.1, 0, 10.0)
    assert up["holds"] and up["ratio_after_final_norm"] == pytest.approx(1.1)
    flat = scaling_finding(base, base * [1, 10, 8, 6], 1.0, 9.0, 0, 10.0)
    assert not flat["holds"]


@pytest.mark.unit
def test_figures(tiny_result):
    figs = figures(tiny_result)
    assert set(figs) == {"check_qkv", "check_mlp", "scale_0.1", "scale_10", "norms"}
    a = tiny_result.arrays
    qkv = figs["check_qkv"]
    assert np.array_equal(np.asarray(qkv.data[0].y), a["baseline_qkv"])
    assert sum(len(t.y) for t in qkv.data[1:]) == 192
    scale = figs["scale_10"]
    assert np.array_equal(np.asarray(scale.data[3].y), a["scale_10_norm"])
    assert np.array_equal(np.asarray(scale.data[2].y), a["baseline_norm"])


@pytest.mark.unit
def test_cli_writes_outputs(tmp_path, fixture_models):
    code, out, err = run_cli(
        "replace", "--model", "tiny-gpt2", "--out", str(tmp_path), *TINY_ARGS, "--scales", "0.5,4"
    )
    assert code == 0, (out, err)
    dest = tmp_path / "replace"
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["parity"]["passed"] and summary["config"]["scales"] == [0.5, 4.0]
    with np.load(dest / "arrays.npz") as npz:
        for c in ("baseline", "zero_head", "mlp_noise", "scale_0.5", "scale_4"):
            assert npz[f"{c}_norm"].shape == (3,) and npz[f"{c}_std"].shape == (3,)
            assert npz[f"{c}_values"].shape == (3, 64)
    for fig in ("check_qkv", "check_mlp", "scale_0.5", "scale_4", "norms"):
        assert (dest / "figures" / f"{fig}.html").is_file()
    assert "PASS" in out and "forward hook on GPT2Block" in out
    assert summary["block_output_explanation"] in out


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "--head-layer 3"),
        (("--head-layer", "1", "--mlp-layer", "5", "--scale-layer", "0"), "--mlp-layer 5"),
        (("--head-layer", "1", "--mlp-layer", "0"), "--scale-layer 8"),
        ((*TINY_ARGS, "--head", "4"), "--head 4"),
        ((*TINY_ARGS, "--position", "11"), "--position 11"),
        ((*TINY_ARGS, "--mlp-units", "abc"), "--mlp-units"),
        ((*TINY_ARGS, "--mlp-units", "300:400"), "--mlp-units"),
        ((*TINY_ARGS, "--scales", "0.1,x"), "--scales"),
        ((*TINY_ARGS, "--scales", "nan"), "--scales must be finite"),
        ((*TINY_ARGS, "--noise-std", "-1"), "--noise-std"),
        ((*TINY_ARGS, "--component", "z"), "--component"),
    ],
)
def test_cli_bad_arguments(tmp_path, fixture_models, args, fragment):
    code, _, err = run_cli("replace", "--model", "tiny-gpt2", "--out", str(tmp_path), *args)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "replace").exists()


@pytest.mark.integration
def test_replace_smollm2_defaults(smol_model, smol_reference):
    res = run_replace(ReplaceConfig(), model=smol_model, reference=smol_reference)
    s, a = res.summary, res.arrays
    assert s["parity"]["passed"], s["parity"]
    assert a["baseline_norm"].shape == (31,)
    for name, f in (("scale_0.1", 0.1), ("scale_10", 10.0)):
        ratio = a[f"{name}_resid_norm"][9] / a["baseline_resid_norm"][9]
        assert ratio == pytest.approx(f, rel=1e-5)
        assert s["scaling_finding"][name]["ratio_at_block"] == pytest.approx(f, rel=1e-5)
    for name in ("zero_head", "mlp_noise", "scale_0.1", "scale_10"):
        assert s["conditions"][name]["kl_from_baseline"] > 0
