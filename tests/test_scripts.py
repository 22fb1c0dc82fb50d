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
def test_reproduce_stops_offline_with_one_line(tmp_path):
    res = _script("reproduce.py", "--out", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce: error: the course's models")
    assert "--model smollm2-135m --text" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


@pytest.mark.unit
def test_reproduce_needs_text_with_another_model(tmp_path):
    res = _script("reproduce.py", "--model", "smollm2-135m", "--out", str(tmp_path))
    assert res.returncode == 2 and "negation reads a text: with --model give --text" in res.stderr


@pytest.mark.unit
def test_reproduce_keeps_the_course_layers(tmp_path):
    res = _script("reproduce.py", "--model", "tiny-gpt2", "heads", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "heads.layer: layer 6 is out of range (0..1)" in res.stderr  # no silent remapping


@pytest.mark.integration
def test_reproduce_course_settings_on_smollm2(tmp_path):
    res = _script(
        "reproduce.py", "heads", "replace", "--model", "smollm2-135m", "--out", str(tmp_path),
        env={"MECHPROBE_NO_PNG": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    heads = json.loads((tmp_path / "smollm2-135m" / "heads" / "manifest.json").read_text())
    replace = json.loads((tmp_path / "smollm2-135m" / "replace" / "manifest.json").read_text())
    assert heads["config"]["layer"] == 6
    cfg = replace["config"]
    assert (cfg["head_layer"], cfg["mlp_layer"], cfg["scale_layer"], cfg["head"]) == (3, 5, 8, 2)
    assert "course finding:" in res.stdout


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


@pytest.mark.unit
def test_bench_main_job_runs_both_sides_and_prints_the_ratio():
    res = _script(
        "bench_main_job.py", "--before", "HEAD", "--model", "tiny-gpt2", "--steps", "crosscheck",
        "--no-png",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert any(x.startswith("before") and " s   load " in x for x in lines), res.stdout
    assert any(x.startswith("after") and " s   load " in x for x in lines), res.stdout
    assert "ratio before/after:" in res.stdout and "crosscheck" in res.stdout
    worktrees = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True
    ).stdout
    assert "bench-main-" not in worktrees  # the temporary checkout is gone
