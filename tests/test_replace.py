"""The replacement experiment (E4): arrays, summary, finding, figures and the CLI."""

import json

import numpy as np
import pytest
import torch

from mechprobe.experiments import replace as e4
from mechprobe.experiments.replace import ReplaceConfig
from mechprobe.experiments.replace_course import build_interventions, condition_names, default_text
from mechprobe.interventions import MLPNoise, ScaleOutput, ZeroHead
from mechprobe.models.registry import model_shape
from mechprobe.plots.replace import figures
from mechprobe.reference.arch import hf_arch
from mechprobe.stats.logits import scaling_verdict
from tests.helpers import assert_close, assert_one_line_error, run_cli

TINY = {"head_layer": 1, "mlp_layer": 0, "scale_layer": 0}
TINY_ARGS = ("--head-layer", "1", "--mlp-layer", "0", "--scale-layer", "0")


def run_replace(config, model, reference):
    """Resolve the config against the model, then run E4 (as the runner does)."""
    return e4.run(e4.resolve(config, model_shape(model)), model, reference)


@pytest.fixture(scope="module")
def tiny_result(tiny_model, tiny_reference):
    return run_replace(ReplaceConfig(**TINY), tiny_model, tiny_reference)


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
    plan = build_interventions(e4.resolve(ReplaceConfig(**TINY), model_shape(tiny_model)))
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
    assert s["position_token"] == " bicycle" and s["settings"]["text"] == text
    # baseline values and norms = HF's own hidden states at position 4
    base, base_logits = hf_hidden_at(hf, tokens, 4)
    assert a["baseline_values"].shape == (3, 64)
    assert_close(a["baseline_values"], base, atol=1e-5)
    assert_close(a["baseline_norm"], np.linalg.norm(base, axis=1), atol=1e-5)
    assert_close(a["baseline_std"], np.std(base, axis=1, ddof=1), atol=1e-5)
    # scale_10: a researcher's own hook on the HF block
    block = hf_arch(hf).module(hf, "block", 0)
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
def test_scaling_verdict_logic():
    yes = scaling_verdict(np.array([1, 0.1, 0.2, 0.5]), 0.95, 0, 0.1)
    assert yes["holds"] and yes["ratio_at_block"] == pytest.approx(0.1)
    assert not scaling_verdict(np.array([1, 0.1, 0.05, 0.05]), 0.95, 0, 0.1)["holds"]
    overshoot = scaling_verdict(np.array([1, 0.1, 2.0, 1.5]), 0.95, 0, 0.1)
    assert not overshoot["holds"] and "overshoot" in overshoot["text"]
    assert scaling_verdict(np.array([1, 10, 8, 6]), 1.1, 0, 10.0)["holds"]
    assert not scaling_verdict(np.array([1, 10, 8, 6]), 9.0, 0, 10.0)["holds"]


@pytest.mark.unit
def test_many_samples_against_hf(tiny_result, tiny_reference):
    """Median ratio curves over every sentence and position, recomputed with HF's own blocks."""
    from mechprobe.experiments.replace_many import load_sentences

    hf, tok = tiny_reference
    a, s = tiny_result.arrays, tiny_result.summary
    block = hf_arch(hf).module(hf, "block", 0)
    ratios = []
    for sentence in load_sentences(None):
        ids = torch.tensor([tok(sentence, add_special_tokens=False).input_ids])
        every = slice(1, ids.shape[1])  # positions 1 .. len-1
        base = hf_hidden_at(hf, ids, every)[0]  # [hidden state, position, d_model]
        scaled = hf_hidden_at(hf, ids, every, (block, lambda m, i, o: o * 10.0))[0]
        ratio = np.linalg.norm(scaled, axis=-1) / np.linalg.norm(base, axis=-1)
        ratios += list(ratio.T)
    ratios = np.array(ratios)  # [samples, hidden states] (HF: the last is after the final norm)
    assert s["many"]["scale_10"]["n_samples"] == len(ratios)
    # TL's curves hold the pre-norm residual of the last block instead of HF's final-norm one
    assert_close(a["scale_10_many_median"][:-1], np.median(ratios[:, :-1], axis=0), atol=1e-4)
    holds = (ratios[:, 1] > 2) & (
        np.abs(np.log(ratios[:, -1])) < 0.5 * np.abs(np.log(ratios[:, 1]))
    )
    assert a["scale_10_many_holds"].sum() == holds.sum()
    finding = e4.finding(tiny_result)
    fractions = [s["many"][n]["fraction_low"] > 0.5 for n in s["scales"]]
    want = "holds" if all(fractions) else "partly holds" if any(fractions) else "does not hold"
    assert finding.verdict == want and "54 sentences x every position" in finding.sample


@pytest.mark.unit
def test_figures(tiny_result):
    figs = figures(tiny_result)
    assert set(figs) == {"many", "check_qkv", "check_mlp", "scaling", "norms"}
    assert set(figs) == {f.name for f in e4.SPEC.figures}
    a = tiny_result.arrays
    qkv = figs["check_qkv"]
    assert np.array_equal(np.asarray(qkv.data[0].y), a["baseline_qkv"])
    assert sum(len(t.y) for t in qkv.data[1:]) == 192
    norms = [t for t in figs["scaling"].data if t.name == "scaled norm"]  # one per factor
    assert np.array_equal(np.asarray(norms[1].y), a["scale_10_norm"])
    base = [t for t in figs["scaling"].data if t.name == "baseline norm"]
    assert np.array_equal(np.asarray(base[0].y), a["baseline_norm"])


@pytest.mark.unit
def test_cli_writes_outputs(tmp_path, tiny_cli):
    code, out, err = run_cli(
        "replace", "--model", "tiny-gpt2", "--out", str(tmp_path), *TINY_ARGS, "--scales", "0.5,4"
    )
    assert code == 0, (out, err)
    dest = tmp_path / "replace"
    summary = json.loads((dest / "summary.json").read_text())
    manifest = json.loads((dest / "manifest.json").read_text())
    assert summary["parity"]["passed"] and manifest["config"]["scales"] == [0.5, 4.0]
    with np.load(dest / "arrays.npz") as npz:
        for c in ("baseline", "zero_head", "mlp_noise", "scale_0.5", "scale_4"):
            assert npz[f"{c}_norm"].shape == (3,) and npz[f"{c}_std"].shape == (3,)
            assert npz[f"{c}_values"].shape == (3, 64)
    for fig in ("many", "check_qkv", "check_mlp", "scaling", "norms"):
        assert (dest / "figures" / f"{fig}.html").is_file()
    assert "PASS" in out and "forward hook on GPT2Block" in out
    assert summary["block_output_explanation"] in out


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--head-layer", "3"), "--head-layer: layer 3 is out of range (0..1)"),
        (("--mlp-layer", "5", "--scale-layer", "-1"), "--mlp-layer: layer 5"),
        (("--mlp-layer", "5", "--scale-layer", "-1"), "--scale-layer: layer -1"),
        ((*TINY_ARGS, "--head", "4"), "--head: K head 4 is out of range (0..3)"),
        ((*TINY_ARGS, "--position", "11"), "--position: position 11 is out of range"),
        ((*TINY_ARGS, "--mlp-units", "abc"), "--mlp-units"),
        ((*TINY_ARGS, "--mlp-units", "300:400"), "--mlp-units"),
        ((*TINY_ARGS, "--scales", "0.1,x"), "--scales"),
        ((*TINY_ARGS, "--scales", "nan"), "--scales: scale factor must be a finite number"),
        ((*TINY_ARGS, "--noise-std", "-1"), "--noise-std"),
        ((*TINY_ARGS, "--seed", "99999999999999999999999"), "--seed: seed"),
        ((*TINY_ARGS, "--component", "z"), "--component"),
    ],
)
def test_cli_bad_arguments(tmp_path, tiny_cli, args, fragment):
    code, _, err = run_cli("replace", "--model", "tiny-gpt2", "--out", str(tmp_path), *args)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "replace").exists()


@pytest.mark.integration
def test_replace_smollm2_defaults(smol_model, smol_reference):
    res = run_replace(ReplaceConfig(), smol_model, smol_reference)
    s, a = res.summary, res.arrays
    assert s["parity"]["passed"], s["parity"]
    assert a["baseline_norm"].shape == (31,)
    layer = s["settings"]["scale_layer"]
    assert (s["settings"]["head_layer"], s["settings"]["mlp_layer"], layer) == (8, 13, 21)
    for name, f in (("scale_0.1", 0.1), ("scale_10", 10.0)):
        ratio = a[f"{name}_resid_norm"][layer + 1] / a["baseline_resid_norm"][layer + 1]
        assert ratio == pytest.approx(f, rel=1e-5)
        assert a[f"{name}_ratio"][layer + 1] == pytest.approx(f, rel=1e-5)
    for name in ("zero_head", "mlp_noise", "scale_0.1", "scale_10"):
        assert s["conditions"][name]["kl_from_baseline"] > 0
