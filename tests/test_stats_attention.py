"""E2 raw scores at every query position: against plain loops, the course's last query, pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from mechprobe.errors import MechprobeError
from mechprobe.stats import attention as att
from mechprobe.stats.attention import (
    pooled_negative_fraction,
    query_position_scores,
    raw_scores,
    split_same_diff,
)
from mechprobe.stats.bootstrap import resample_indices

pytestmark = pytest.mark.unit


def loop_reference(q: np.ndarray, k: np.ndarray) -> dict[str, list]:
    """Every query position p >= 2 against keys 1..p-1, pair by pair, in plain Python."""
    n_pos, n_heads, _ = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    out = {key: [] for key in ("n_same", "neg_same", "median_same", "n_diff", "neg_diff")}
    out["median_diff"] = []
    for p in range(2, n_pos):
        same, diff = [], []
        for h in range(n_heads):
            for g in range(n_kv):
                for j in range(1, p):
                    s = float(np.dot(q[p, h], k[j, g]))
                    (same if g == h // group else diff).append(s)
        for kind, vals in (("same", same), ("diff", diff)):
            out[f"n_{kind}"].append(len(vals))
            out[f"neg_{kind}"].append(sum(v < 0 for v in vals))
            out[f"median_{kind}"].append(float(np.median(vals)) if vals else np.nan)
    return out


@pytest.mark.parametrize(("n_pos", "n_heads", "n_kv"), [(9, 4, 4), (12, 6, 2), (7, 3, 1)])
def test_against_a_plain_loop(n_pos, n_heads, n_kv):
    gen = torch.Generator().manual_seed(n_pos)
    q = torch.randn(n_pos, n_heads, 5, generator=gen) - 0.3
    k = torch.randn(n_pos, n_kv, 5, generator=gen) + 0.2
    got = query_position_scores(q, k)
    ref = loop_reference(q.double().numpy(), k.double().numpy())
    assert_array_equal(got["q_pos"], np.arange(2, n_pos))
    for key, values in ref.items():
        assert_allclose(got[key], values, rtol=1e-12, atol=1e-12, err_msg=key)
    if n_kv == 1:
        assert (got["n_diff"] == 0).all() and np.isnan(got["median_diff"]).all()


def test_last_query_is_the_course_numbers():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(10, 9, 8, generator=gen), torch.randn(10, 3, 8, generator=gen)
    got = query_position_scores(q, k)
    same, diff = split_same_diff(raw_scores(q, k).numpy())
    assert got["n_same"][-1] == same.size and got["n_diff"][-1] == diff.size
    assert got["neg_same"][-1] / got["n_same"][-1] == pytest.approx((same < 0).mean())
    assert got["neg_diff"][-1] / got["n_diff"][-1] == pytest.approx((diff < 0).mean())
    assert got["median_same"][-1] == pytest.approx(np.median(same))
    assert got["median_diff"][-1] == pytest.approx(np.median(diff))


def test_chunking_does_not_change_the_result(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(30, 4, 8, generator=gen), torch.randn(30, 2, 8, generator=gen)
    whole = query_position_scores(q, k)
    monkeypatch.setattr(att, "SCORE_CHUNK_BYTES", 8 * 4 * 2 * 28 * 3)  # 3 positions a chunk
    chunked = query_position_scores(q, k)
    for key in whole:
        assert_array_equal(whole[key], chunked[key], err_msg=key)


def test_too_short_or_mismatched():
    with pytest.raises(MechprobeError):
        query_position_scores(torch.randn(2, 4, 8), torch.randn(2, 2, 8))
    with pytest.raises(ValueError):
        query_position_scores(torch.randn(5, 4, 8), torch.randn(5, 3, 8))


def test_pooled_fraction_and_its_bootstrap():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(20, 4, 8, generator=gen) - 0.5, torch.randn(20, 2, 8, generator=gen) + 0.5
    s = query_position_scores(q, k)
    res = pooled_negative_fraction(s, n_boot=300, seed=4)
    ref = loop_reference(q.double().numpy(), k.double().numpy())
    idx = resample_indices(18, 300, 4)
    for kind in ("same", "diff"):
        neg, n = np.array(ref[f"neg_{kind}"]), np.array(ref[f"n_{kind}"])
        r = res[kind]
        assert r["fraction"] == pytest.approx(neg.sum() / n.sum())
        reps = neg[idx].sum(1) / n[idx].sum(1)
        assert [r["low"], r["high"]] == pytest.approx(np.quantile(reps, [0.025, 0.975]).tolist())
        assert r["n_pairs"] == n.sum() and r["n_positions"] == 18
        assert r["share_negative_median"] == pytest.approx(
            np.mean(np.array(ref[f"median_{kind}"]) < 0)
        )


def test_pooled_over_texts_and_clustered_by_text():
    gen = torch.Generator().manual_seed(5)
    texts = [
        query_position_scores(torch.randn(n, 4, 8, generator=gen), torch.randn(n, 2, 8))
        for n in (6, 9, 12, 7)
    ]
    res = pooled_negative_fraction(texts, n_boot=200, seed=0, cluster=True)
    neg = np.array([t["neg_same"].sum() for t in texts])
    n = np.array([t["n_same"].sum() for t in texts])
    idx = resample_indices(4, 200, 0)
    reps = neg[idx].sum(1) / n[idx].sum(1)
    assert res["same"]["fraction"] == pytest.approx(neg.sum() / n.sum())
    assert res["same"]["low"] == pytest.approx(np.quantile(reps, 0.025))
    assert res["same"]["n_positions"] == 4 + 7 + 10 + 5
    by_position = pooled_negative_fraction(texts, n_boot=200, seed=0)
    assert by_position["same"]["fraction"] == pytest.approx(res["same"]["fraction"])
    assert by_position["same"]["low"] != pytest.approx(res["same"]["low"])
