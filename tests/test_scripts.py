"""The reproduce and benchmark scripts run end to end (small settings)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _script(name, *args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.unit
def test_reproduce_heads_on_tiny_gpt2(tmp_path):
    res = _script("reproduce_heads.py", "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "heads" / "summary.json").read_text())
    assert summary["model"] == "tiny-gpt2" and summary["layer"] == 1


@pytest.mark.integration
def test_reproduce_falls_back_to_smollm2_offline(tmp_path):
    res = _script("reproduce_heads.py", "--out", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "falling back to the offline model smollm2-135m" in res.stderr
    summary = json.loads((tmp_path / "heads" / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m" and summary["layer"] == 15


@pytest.mark.unit
def test_bench_probe_small_prints_ratio():
    res = _script(
        "bench_probe.py",
        "--samples",
        "120",
        "--units",
        "300",
        "--statsmodels-units",
        "40",
        "--repeats",
        "1",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.lower()
    assert "statsmodels" in out and "fit_logistic" in out and "ratio" in out, res.stdout


@pytest.mark.unit
def test_bench_similarity_small():
    res = _script(
        "bench_similarity.py",
        "--layers",
        "1",
        "2",
        "--sentences",
        "8",
        "--heads",
        "2",
        "--d-head",
        "8",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ratio 2-layer / 1-layer" in res.stdout, res.stdout
