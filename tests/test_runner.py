"""Runs as first-class objects: manifests, exact resume, one writer per OUT, whole steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mechprobe.runner.lock import out_lock
from mechprobe.runner.manifest import mismatch
from tests.helpers import REPO, assert_one_line_error, run_cli

TINY = ("--model", "tiny-gpt2", "--no-png")


def arrays(step_dir):
    with np.load(step_dir / "arrays.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def manifest(step_dir):
    return json.loads((step_dir / "manifest.json").read_text())


def tree(path):
    """Every file under ``path`` with its bytes: equal trees mean an untouched directory."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def mechprobe(*argv, env=None, timeout=300):
    """The real command in a subprocess (for kills and concurrent runs)."""
    return subprocess.run(
        [sys.executable, "-m", "mechprobe", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "MECHPROBE_NO_PNG": "1", **(env or {})},
    )


@pytest.mark.unit
def test_manifest_records_the_run(tmp_path, tiny_cli):
    code, _, err = run_cli("heads", *TINY, "--out", str(tmp_path))
    assert code == 0, err
    m = manifest(tmp_path / "heads")
    assert m["step"] == "heads" and m["model"]["model"] == "tiny-gpt2"
    assert m["config"]["layer"] == 1 and m["request"]["config"]["layer"] is None
    assert set(m["inputs"]) == {"text"} and len(m["inputs"]["text"]) == 64
    for key in ("mechprobe", "torch", "transformers", "transformer-lens", "numpy"):
        assert key in m["versions"]
    assert m["wall_s"] > 0 and m["peak_rss_mb"] > 0 and m["started"] <= m["finished"]
    assert set(m["files"]) >= {"arrays.npz", "summary.json", "finding.json", "figures/index.json"}


@pytest.mark.unit
def test_resume_reuses_only_an_exact_match(tmp_path, tiny_cli, shared_text):
    out = str(tmp_path)
    args = ("negation", *TINY, "--out", out, "--text", str(shared_text), "--max-samples", "20")
    assert run_cli(*args)[0] == 0
    first = tree(tmp_path / "negation")
    code, _, err = run_cli(*args, "--resume")
    assert code == 0 and "[reuse] negation" in err and tree(tmp_path / "negation") == first
    # the same text named by another path: compared by content, reused
    (tmp_path / "link.txt").symlink_to(shared_text.resolve())
    other = ("--text", str(tmp_path / "link.txt"))
    code, _, err = run_cli(*args, *other, "--resume")
    assert code == 0 and "[reuse] negation" in err and tree(tmp_path / "negation") == first
    # any config value
    code, _, err = run_cli(*args, "--resume", "--alpha", "0.01")
    assert code == 0 and "[rerun] negation: config.alpha changed (0.05 -> 0.01)" in err
    assert manifest(tmp_path / "negation")["config"]["alpha"] == 0.01
    # the text's content (same path, other bytes)
    text = tmp_path / "story.txt"
    text.write_bytes(shared_text.read_bytes())
    base = ("negation", *TINY, "--out", out, "--text", str(text), "--max-samples", "20")
    assert run_cli(*base)[0] == 0
    text.write_bytes(shared_text.read_bytes().replace(b"never", b"NEVER", 1))
    code, _, err = run_cli(*base, "--resume")
    assert code == 0 and "[rerun] negation: inputs.text changed" in err


@pytest.mark.unit
def test_resume_after_a_change_of_model_reruns(tmp_path):
    out = str(tmp_path)
    assert mechprobe("heads", *TINY, "--out", out).returncode == 0
    fake = dict(manifest(tmp_path / "heads"))
    fake["request"] = {
        **fake["request"],
        "model": {**fake["request"]["model"], "model": "smollm2-135m"},
    }
    (tmp_path / "heads" / "manifest.json").write_text(json.dumps(fake))
    res = mechprobe("heads", *TINY, "--out", out, "--resume")
    assert res.returncode == 0
    assert "[rerun] heads: model.model changed (smollm2-135m -> tiny-gpt2)" in res.stderr


@pytest.mark.unit
def test_mismatch_names_the_first_difference():
    old = {"request": {"model": {"model": "a"}, "config": {"x": [1, 2]}, "inputs": {"t": "s1"}}}
    assert (
        mismatch(old, {"model": {"model": "a"}, "config": {"x": (1, 2)}, "inputs": {"t": "s1"}})
        is None
    )
    assert mismatch(old, {"model": {"model": "b"}, "config": {"x": [1, 2]}, "inputs": {"t": "s1"}})
    assert "config.x" in mismatch(
        old, {"model": {"model": "a"}, "config": {"x": [1]}, "inputs": {"t": "s1"}}
    )
    assert mismatch(None, {}) == "no complete earlier result"


@pytest.mark.unit
def test_a_damaged_step_is_not_reused(tmp_path, tiny_cli):
    out = str(tmp_path)
    assert run_cli("heads", *TINY, "--out", out)[0] == 0
    (tmp_path / "heads" / "arrays.npz").write_bytes(b"damaged")
    code, _, err = run_cli("heads", *TINY, "--out", out, "--resume")
    assert code == 0 and "[rerun] heads: arrays.npz differs from what its manifest recorded" in err
    assert "q_mean" in arrays(tmp_path / "heads")


@pytest.mark.unit
def test_a_second_run_into_the_same_out_exits_2_at_once(tmp_path, tiny_cli):
    with out_lock(tmp_path, "mechprobe all --model smollm2-135m"):
        code, _, err = run_cli("heads", *TINY, "--out", str(tmp_path))
        res = mechprobe("crosscheck", *TINY, "--out", str(tmp_path), timeout=60)
    assert_one_line_error(code, err, "in use by another mechprobe run", "mechprobe all")
    assert_one_line_error(res.returncode, res.stderr, f"pid {os.getpid()}")
    assert not (tmp_path / "heads").exists()
    assert run_cli("heads", *TINY, "--out", str(tmp_path))[0] == 0  # the lock is released


@pytest.mark.unit
@pytest.mark.parametrize("out", ["", "   "])
def test_empty_out_is_an_error(out, tiny_cli):
    code, _, err = run_cli("heads", *TINY, "--out", out)
    assert_one_line_error(code, err, "--out", "empty")


@pytest.mark.unit
def test_unwritable_out_fails_before_computing(tmp_path, tiny_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli("heads", *TINY, "--out", str(blocker / "sub"))
    assert_one_line_error(code, err, "cannot create the output directory")
    code, _, err = run_cli("heads", *TINY, "--out", str(blocker))
    assert_one_line_error(code, err, "is not a directory")


@pytest.mark.unit
@pytest.mark.parametrize("point", ["heads:computed", "heads:written", "heads:swapping"])
def test_a_step_killed_midway_leaves_the_previous_one_whole(tmp_path, point):
    out = str(tmp_path)
    assert mechprobe("heads", *TINY, "--out", out).returncode == 0
    before = tree(tmp_path / "heads")
    res = mechprobe(
        "heads", *TINY, "--out", out, "--layer", "0", env={"MECHPROBE_FAILPOINT": point}
    )
    assert res.returncode == -9, res.stderr  # SIGKILL
    if point != "heads:swapping":
        assert tree(tmp_path / "heads") == before  # untouched
    # the next run cleans up, puts a set-aside directory back, and the results are whole
    res = mechprobe("heads", *TINY, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr
    assert "[reuse] heads" in res.stderr and tree(tmp_path / "heads") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mechprobe.lock", "heads", "index.html"]


@pytest.mark.unit
def test_the_step_before_is_whole_when_the_next_one_is_killed_computed(tmp_path):
    """Steps are written in the background while the next computes; a kill at the next
    step's ``computed`` point still finds the step before complete and verified."""
    from mechprobe.runner.steps import read_manifest, verify_step

    out = tmp_path / "out"
    res = mechprobe(
        "all", *TINY, "--out", str(out), "--steps", "crosscheck,heads",
        env={"MECHPROBE_FAILPOINT": "heads:computed"},
    )  # fmt: skip
    assert res.returncode == -9, res.stderr
    assert verify_step(out / "crosscheck", read_manifest(out / "crosscheck")) is None
    assert not (out / "heads").exists()


@pytest.mark.unit
def test_step_writer_order_errors_and_exit():
    """`StepWriter`: one write at a time, its error raised by wait, and leaving the context
    on an error still finishes the write in flight."""
    import threading
    import time

    from mechprobe.runner.run import StepWriter

    done = []
    with StepWriter() as writer:
        writer.start(lambda: (time.sleep(0.2), done.append("first")))
        with pytest.raises(RuntimeError, match="still being written"):
            writer.start(lambda: done.append("second"))
        writer.wait()
        assert done == ["first"]
        writer.start(lambda: threading.current_thread().name)
    with pytest.raises(OSError, match="disk full"), StepWriter() as writer:
        writer.start(lambda: (_ for _ in ()).throw(OSError("disk full")))
        writer.wait()
    with pytest.raises(KeyError), StepWriter() as writer:
        writer.start(lambda: (time.sleep(0.2), done.append("kept")))
        raise KeyError("the next step failed")
    assert done == ["first", "kept"]  # the failed run still wrote what it had computed
