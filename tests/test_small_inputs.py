"""Small inputs degrade instead of failing: the course's in-sample statistics are always computed.

A text whose overlapping windows chain into one group cannot be split into grouped folds; the
held-out part (and what depends on it) is then marked unavailable with the reason, and the run
exits 0 with the course's statistics, checked here against statsmodels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mechprobe
from tests.helpers import hf_mlp_pre, run_cli

pytestmark = pytest.mark.unit

WORDS = "the keeper walked along old harbour wall at dawn and saw a ship come in slowly".split()


def _chained() -> str:
    """Varied prose with a negation or an affirmation every few words: the windows chain."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(120):
        parts.append(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))))
        parts.append("can go" if i % 2 else "is not here")
    return "It " + " ".join(parts) + " and the end of it."


CHAINED = _chained()


def _mlp_units(hf, tok, text, positions, layer, pre=90, post=10):
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    windows = torch.stack([ids[p - pre : p + post + 1] for p in positions])
    return hf_mlp_pre(hf, windows, layer, pre)


def test_negation_on_one_chained_group_exits_0_with_the_course_statistics(tmp_path, tiny_reference):
    sm = pytest.importorskip("statsmodels.api")
    text = tmp_path / "story.txt"
    text.write_text(CHAINED, encoding="utf-8")
    code, _, err = run_cli(
        "all", "--model", "tiny-gpt2", "--steps", "negation", "--text", str(text),
        "--out", str(tmp_path / "out"), "--no-png",
    )  # fmt: skip
    assert code == 0, err
    assert "held-out statistics unavailable" in err
    step = tmp_path / "out" / "negation"
    summary = json.loads((step / "summary.json").read_text())
    finding = json.loads((step / "finding.json").read_text())
    assert summary["folds"] == 0
    assert summary["heldout_note"].startswith("held-out statistics unavailable: class")
    assert "held-out statistics unavailable" in finding["sample"]
    assert "held-out statistics unavailable" in (tmp_path / "out" / "index.html").read_text()
    res = mechprobe.load_result(step)
    arrays = res.raw.arrays
    assert "mlp_heldout_accuracy" not in arrays and "folds" not in arrays
    hf, tok = tiny_reference
    x = _mlp_units(hf, tok, CHAINED, arrays["positions"], layer=1)
    y = arrays["labels"].astype(float)
    row = list(arrays["layers"]).index(1)
    ok = np.flatnonzero(arrays["mlp_converged"][row] & ~arrays["mlp_separated"][row])
    assert len(ok) > 20
    for unit in ok[:: len(ok) // 6][:6]:
        fit = sm.Logit(y, sm.add_constant(x[:, unit])).fit(disp=0)
        assert arrays["mlp_beta"][row, unit] == pytest.approx(fit.params[1], rel=1e-5)
        assert arrays["mlp_pvalue"][row, unit] == pytest.approx(fit.pvalues[1], rel=1e-4)


def test_probe_uses_fewer_folds_when_more_cannot_be_made(tmp_path):
    text = tmp_path / "story.txt"
    gap = " The old keeper walked slowly along the harbour wall at dawn," * 8
    text.write_text(("We can go." + gap + " It is not here." + gap) * 3, encoding="utf-8")
    code, out, err = run_cli(
        "probe", "--model", "tiny-gpt2", "--text", str(text), "--components", "mlp",
        "--context-pre", "20", "--context-post", "3", "--out", str(tmp_path / "out"), "--no-png",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "probe" / "summary.json").read_text())
    k = summary["folds"]
    assert 2 <= k < 5  # each class sits in 3 window groups: 5 folds cannot be made
    assert summary["heldout_note"].startswith(f"held-out statistics over {k} folds, not 5")
    folds = np.load(tmp_path / "out" / "probe" / "arrays.npz")["folds"]
    assert sorted(set(folds.tolist())) == list(range(k))
    assert f"note: held-out statistics over {k} folds" in out
