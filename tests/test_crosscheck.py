import json

import pytest

from tests.helpers import run_cli


@pytest.mark.unit
def test_crosscheck_cli_tiny(tmp_path):
    code, out, _ = run_cli("crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert code == 0, out
    data = json.loads((tmp_path / "crosscheck" / "crosscheck.json").read_text())
    assert data["passed"] is True
    checks = {r["check"] for r in data["rows"]}
    assert checks == {
        "hook_q",
        "hook_k",
        "hook_v",
        "mlp.hook_pre",
        "resid_post",
        "pattern",
        "final_norm",
        "logits",
    }
    assert len(data["rows"]) == 6 * 2 + 2
    assert max(r["max_abs_diff"] for r in data["rows"]) <= 1e-4
    assert "PASS" in out


@pytest.mark.unit
def test_crosscheck_fails_when_tolerance_is_impossible(tmp_path):
    code, out, _ = run_cli(
        "crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path), "--tolerance", "-1"
    )
    assert code == 1 and "FAIL" in out


@pytest.mark.integration
def test_crosscheck_cli_smollm2(tmp_path):
    code, out, _ = run_cli("crosscheck", "--model", "smollm2-135m", "--out", str(tmp_path))
    assert code == 0, out
    data = json.loads((tmp_path / "crosscheck" / "crosscheck.json").read_text())
    assert data["passed"] and len(data["rows"]) == 6 * 30 + 2
