"""Test helpers shared by every test module: tolerances, paths, CLI runner."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_TEXT = Path(
    os.environ.get("MECHPROBE_SHARED_TEXT", REPO.parent / "shared" / "data" / "pg32154.txt")
)


def to_numpy(x: object) -> np.ndarray:
    """Any tensor/array-like as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(
    actual: object, expected: object, *, atol: float, rtol: float = 0.0, msg: str = ""
) -> None:
    """Assert two arrays/tensors agree within explicit tolerances (shapes must match)."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"{msg} shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=msg)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run the mechprobe CLI in-process; return (exit status, stdout, stderr)."""
    from mechprobe.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user error: exit 2 and one line 'mechprobe: error: ...' holding the fragments.

    The error is the last line of stderr; progress lines (``[load] ...``) may come before it, a
    traceback never.
    """
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("mechprobe: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("[") for line in lines[:-1]), err
    for f in fragments:
        assert f in errors[0], (f, errors[0])


def run_tl(model, tokens, interventions, names):
    """Run the bridge with interventions; the recorded activations (after them) and the logits."""
    from mechprobe.activations import LOGITS, collect
    from mechprobe.interventions import intervention_hooks

    hooks = intervention_hooks(model, interventions, int(tokens.shape[1]))
    acts = collect(model, tokens, names, hooks=hooks, logits=True, progress=False)
    return acts, acts.pop(LOGITS)


#: Headless Chromium flags for the browser tests.
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """The Chromium binary, or a skip with the reason (a failure where CI requires a browser)."""
    import pytest

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("MECHPROBE_CI"):
        pytest.fail("chromium is not installed (./quickstart.sh installs it with apt)")
    pytest.skip(os.environ.get("MECHPROBE_NO_BROWSER") or "chromium is not installed")


def render(
    page: Path, profile: Path, *extra: str, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium (``--dump-dom`` unless ``extra`` says otherwise)."""
    args = extra or ("--dump-dom",)
    return subprocess.run(
        [chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=60000",
         *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


#: The course's negation rule's word lists, written out here independently of mechprobe's class
#: file so that the tests compare the implementation against the course, not against itself.
COURSE_NEG_WORDS = ("not", "cannot", "nor", "never")
COURSE_AFF_WORDS = (
    "agree", "always", "allow", "can", "certainly", "could", "definitely", "may", "might",
    "shall", "should",
)  # fmt: skip


def realistic(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Activations with scales 1e-3..1e3, large offsets, mixed effect sizes, ReLU-like units."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.42).astype(np.float64)
    scale = 10.0 ** rng.uniform(-3, 3, m)
    offset = rng.normal(0, 3, m) * scale * rng.uniform(0, 30, m)
    effect = rng.normal(0, 0.6, m)
    strong = rng.random(m) < 0.1
    effect[strong] = rng.choice([-1, 1], strong.sum()) * rng.uniform(1.2, 2.5, strong.sum())
    x = (rng.standard_normal((n, m)) + effect * y[:, None]) * scale + offset
    relu = rng.random(m) < 0.1
    x[:, relu] = np.maximum(x[:, relu], np.median(x[:, relu], axis=0))
    return x, y


def hf_mlp_pre(hf, windows: torch.Tensor, layer: int, pos: int) -> np.ndarray:
    """GPT-2's MLP input units (``c_fc``'s output) at ``pos`` of each window, by a plain HF hook."""
    out = {}
    handle = hf.transformer.h[layer].mlp.c_fc.register_forward_hook(
        lambda m, i, o: out.__setitem__("x", o.detach())
    )
    try:
        with torch.no_grad():
            hf(windows)
    finally:
        handle.remove()
    return out["x"][:, pos].double().numpy()
