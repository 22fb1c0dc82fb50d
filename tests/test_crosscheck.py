"""TransformerLens vs HuggingFace parity: every check, every layer; NaN is never a pass."""

import json
import math

import pytest
import torch

from mechprobe.experiments import crosscheck
from mechprobe.models.registry import model_shape
from tests.helpers import assert_one_line_error, run_cli

PER_LAYER = ["hook_q", "hook_k", "hook_v", "mlp.hook_pre", "resid_post", "pattern"]


@pytest.mark.unit
def test_crosscheck_cli_tiny(tmp_path):
    code, out, err = run_cli(
        "crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path), "--no-png"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "crosscheck" / "summary.json").read_text())
    assert summary["passed"] is True
    assert summary["checks"] == [*PER_LAYER, "final_norm", "logits"]
    rows = summary["rows"]
    assert len(rows) == len(PER_LAYER) * 2 + 2
    assert all(0 <= r["max_abs_diff"] <= 1e-4 for r in rows)
    checks = json.loads((tmp_path / "crosscheck" / "checks.json").read_text())
    assert [c["check"] for c in checks] == summary["checks"]
    assert all(c["passed"] for c in checks)
    assert "PASS" in out


@pytest.mark.unit
def test_differences_are_real_max_abs_differences(tiny_model, tiny_reference):
    """The reported q difference of layer 1 is recomputed from both models' own hooks."""
    res = crosscheck.run(crosscheck.CrosscheckConfig(), tiny_model, tiny_reference)
    hf, tok = tiny_reference
    ids = torch.tensor([tok(crosscheck.DEFAULT_TEXT, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        _, cache = tiny_model.run_with_cache(ids)
        c_attn = []
        h = hf.transformer.h[1].attn.c_attn.register_forward_hook(lambda m, a, o: c_attn.append(o))
        try:
            hf(ids)
        finally:
            h.remove()
    hf_q = c_attn[0][..., :64].reshape(1, ids.shape[1], 4, 16)
    want = (cache["blocks.1.attn.hook_q"].double() - hf_q.double()).abs().max().item()
    assert res.arrays["max_abs_diff"][0, 1] == pytest.approx(want, abs=0)
    assert res.arrays["max_abs_diff"].shape == (len(PER_LAYER), model_shape(tiny_model).n_layers)


@pytest.mark.unit
def test_tolerance_below_the_differences_fails(tmp_path):
    code, out, _ = run_cli(
        "crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path), "--tolerance", "1e-12",
        "--no-png",
    )  # fmt: skip
    assert code == 1 and "FAIL" in out


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["inf", "nan", "-1", "x"])
def test_tolerance_must_be_finite_and_non_negative(tmp_path, bad):
    code, _, err = run_cli(
        "crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path), "--tolerance", bad
    )
    assert_one_line_error(code, err, "--tolerance")
    assert not (tmp_path / "crosscheck").exists()


@pytest.mark.unit
def test_nan_in_the_model_is_a_failure_not_a_pass(tiny_model, tiny_reference):
    hf, tok = tiny_reference
    weight = hf.transformer.h[0].mlp.c_fc.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = math.nan
        res = crosscheck.run(crosscheck.CrosscheckConfig(), tiny_model, (hf, tok))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert crosscheck.passed(res) is False
    bad = [r for r in res.summary["rows"] if math.isnan(r["max_abs_diff"])]
    assert bad and all(not c["passed"] for c in crosscheck.checks(res) if c["check"] == "logits")
    assert (
        crosscheck.within(math.nan, 1.0) is False and crosscheck.within(math.inf, math.inf) is False
    )


@pytest.mark.unit
def test_empty_text_is_a_one_line_error(tmp_path):
    code, _, err = run_cli(
        "crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path), "--text", ""
    )
    assert_one_line_error(code, err, "--text", "empty")


@pytest.mark.integration
def test_crosscheck_cli_smollm2(tmp_path):
    code, _out, err = run_cli(
        "crosscheck", "--model", "smollm2-135m", "--out", str(tmp_path), "--no-png"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "crosscheck" / "summary.json").read_text())
    rotary = ["hook_rot_q", "hook_rot_k"]
    assert summary["checks"] == [*PER_LAYER[:3], *rotary, *PER_LAYER[3:], "final_norm", "logits"]
    assert summary["passed"] and len(summary["rows"]) == (len(PER_LAYER) + 2) * 30 + 2


@pytest.mark.integration
def test_crosscheck_gemma3_qk_norm_and_rotary(tmp_path):
    code, _out, err = run_cli(
        "crosscheck", "--model", "gemma3-270m", "--out", str(tmp_path), "--no-png"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "crosscheck" / "summary.json").read_text())
    assert {"hook_q_normed", "hook_k_normed", "hook_rot_q", "hook_rot_k"} <= set(summary["checks"])
    assert summary["passed"] and all(r["max_abs_diff"] <= 1e-4 for r in summary["rows"])
    assert len(summary["rows"]) == (len(PER_LAYER) + 4) * 18 + 2
