"""Grouped stratified folds and held-out accuracy and AUC (brute force, sklearn, statsmodels)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy import special, stats
from sklearn.metrics import roc_auc_score

from mechprobe.errors import MechprobeError
from mechprobe.stats.heldout import (
    HeldoutResult,
    grouped_folds,
    heldout_eval,
    roc_auc,
    window_groups,
)

pytestmark = pytest.mark.unit


def brute_force_groups(pos: np.ndarray, pre: int, post: int, seq: np.ndarray) -> np.ndarray:
    """Connected components of 'windows share a token', by union-find over all pairs."""
    n = len(pos)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            tokens_i = set(range(pos[i] - pre, pos[i] + post + 1))
            if seq[i] == seq[j] and tokens_i & set(range(pos[j] - pre, pos[j] + post + 1)):
                parent[find(i)] = find(j)
    return np.array([find(i) for i in range(n)])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings define the same partition of the samples."""
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize(("pre", "post"), [(0, 0), (3, 0), (2, 5), (7, 1)])
def test_window_groups_match_brute_force(pre, post):
    rng = np.random.default_rng(pre * 10 + post)
    pos = rng.integers(0, 150, size=80)  # duplicates included
    seq = rng.integers(0, 3, size=80)
    groups = window_groups(pos, pre, post, sequences=seq)
    assert same_partition(groups, brute_force_groups(pos, pre, post, seq))
    assert set(groups.tolist()) == set(range(groups.max() + 1))
    one_stream = window_groups(pos, pre, post)
    assert same_partition(one_stream, brute_force_groups(pos, pre, post, np.zeros(80)))


def positions_and_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered positions (many multi-sample groups) and exactly balanced random labels."""
    rng = np.random.default_rng(seed)
    pos = np.cumsum(rng.choice([1, 2, 3, 40], size=n, p=[0.3, 0.2, 0.2, 0.3]))
    y = np.zeros(n, dtype=np.int64)
    y[rng.permutation(n)[: n // 2]] = 1
    return pos, y, window_groups(pos, pre=4, post=0)


def test_no_group_straddles_a_split():
    _pos, y, groups = positions_and_labels(500, seed=0)
    assert np.bincount(groups).max() >= 5  # the grouping matters
    for seed in (0, 1):
        fold = grouped_folds(y, groups, 5, seed=seed)
        assert set(fold.tolist()) == set(range(5))
        for g in np.unique(groups):
            assert np.unique(fold[groups == g]).size == 1
        # stratified: every test fold has roughly the overall share of positives
        shares = np.array([y[fold == f].mean() for f in range(5)])
        assert np.abs(shares - 0.5).max() < 0.1
    assert_array_equal(grouped_folds(y, groups, 5, seed=3), grouped_folds(y, groups, 5, seed=3))
    assert not np.array_equal(grouped_folds(y, groups, 5, seed=3), grouped_folds(y, groups, 5))


def test_too_few_groups_is_a_clear_error():
    y = np.array([0] * 20 + [1] * 6)
    groups = np.r_[np.arange(20), [20, 20, 21, 21, 22, 22]]  # class 1 in only 3 groups
    with pytest.raises(MechprobeError, match="class 1 occurs in only 3 group"):
        grouped_folds(y, groups, 5)
    assert np.unique(grouped_folds(y, groups, 3)).size == 3


def test_roc_auc_matches_sklearn():
    rng = np.random.default_rng(4)
    n = 97
    y = (rng.random(n) < 0.3).astype(int)
    scores = np.column_stack(
        [
            rng.normal(size=n) + y,
            rng.integers(0, 4, size=n).astype(float),  # many ties
            np.where(rng.random(n) < 0.4, np.inf, rng.normal(size=n)) * np.where(y, 1, -1),
            np.full(n, 2.0),
            -(rng.normal(size=n) + 2 * y),
        ]
    )
    ours = roc_auc(scores, y)
    for j in range(scores.shape[1]):
        col = np.nan_to_num(scores[:, j], posinf=1e300, neginf=-1e300)  # sklearn needs finite
        assert ours[j] == pytest.approx(roc_auc_score(y, col), abs=1e-14)
    scores[3, 0] = np.nan
    assert np.isnan(roc_auc(scores, y)[0]) and not np.isnan(roc_auc(scores, y)[1:]).any()


def sm_reference(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> dict[str, np.ndarray]:
    """Per fold statsmodels fits on the training split; pooled held-out predictions."""
    k, m = fold.max() + 1, x.shape[1]
    beta, intercept, dec = np.full((k, m), np.nan), np.full((k, m), np.nan), np.empty(x.shape)
    for f in range(k):
        tr, te = fold != f, fold == f
        for j in range(m):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sm.Logit(y[tr], sm.add_constant(x[tr, j])).fit(disp=0, tol=1e-12)
            intercept[f, j], beta[f, j] = res.params
            dec[te, j] = res.params[0] + res.params[1] * x[te, j]
    acc = np.mean((dec > 0) == (y[:, None] == 1), axis=0)
    auc = np.array([roc_auc_score(y, dec[:, j]) for j in range(m)])
    return {"beta": beta, "intercept": intercept, "accuracy": acc, "auc": auc}


def test_fold_fits_and_scores_match_statsmodels():
    _pos, y, groups = positions_and_labels(240, seed=5)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(240, 12)) * rng.uniform(0.1, 10, 12) + rng.normal(0, 0.7, 12) * y[:, None]
    fold = grouped_folds(y, groups, 4, seed=2)
    res = heldout_eval(x, y, fold)
    assert isinstance(res, HeldoutResult) and res.n_folds == 4
    assert_array_equal(res.fold, fold)
    assert not res.separated.any()
    ref = sm_reference(x, y, fold)
    assert_allclose(res.beta, ref["beta"], rtol=1e-6)
    assert_allclose(res.intercept, ref["intercept"], rtol=1e-6, atol=1e-9)
    assert_array_equal(res.accuracy, ref["accuracy"])
    assert_allclose(res.auc, ref["auc"], rtol=0, atol=1e-12)


def test_random_labels_score_at_chance():
    """Null units: held-out accuracy and AUC average 0.5 (in-sample fits would not)."""
    _pos, y, groups = positions_and_labels(400, seed=7)
    m = 300
    x = np.random.default_rng(8).normal(size=(400, m))
    res = heldout_eval(x, y, grouped_folds(y, groups, 5, seed=0))
    # Per unit, the held-out accuracy has sd ~ sqrt(0.25 / 400) = 0.025 and the AUC
    # sd ~ sqrt((n + 1) / (12 n0 n1)) = 0.029; means over 300 independent units have sd
    # ~0.0015 and ~0.0017. Pooled cross-validated scores are known to be slightly
    # pessimistic under the null (fold-wise intercepts are anti-correlated with the
    # held-out class shares; about -0.007 for the AUC here), so the bounds are 0.01 on the
    # mean accuracy (6 sd) and 0.015 on the mean AUC. An in-sample fit scores about 0.516
    # (accuracy) and 0.523 (AUC) on this data.
    assert abs(res.accuracy.mean() - 0.5) < 0.01
    assert abs(res.auc.mean() - 0.5) < 0.015
    assert np.mean(np.abs(res.accuracy - 0.5) > 3 * 0.025) < 0.05
    assert np.mean(np.abs(res.auc - 0.5) > 3 * 0.029) < 0.05


def test_real_effect_scores_high():
    """x ~ N(2 y, 1): Bayes accuracy Phi(1) = 0.841, AUC Phi(2 / sqrt 2) = 0.921."""
    _pos, y, groups = positions_and_labels(400, seed=9)
    x = np.random.default_rng(10).normal(size=(400, 30)) + 2.0 * y[:, None]
    res = heldout_eval(x, y, grouped_folds(y, groups, 5, seed=1))
    acc, auc = stats.norm.cdf(1.0), stats.norm.cdf(np.sqrt(2.0))
    # per unit sd ~ sqrt(0.84 * 0.16 / 400) = 0.018 (accuracy), ~0.013 (AUC)
    assert np.abs(res.accuracy - acc).max() < 0.07
    assert np.abs(res.auc - auc).max() < 0.05
    assert abs(res.accuracy.mean() - acc) < 0.015 and abs(res.auc.mean() - auc) < 0.01


def test_separated_quasi_separated_and_constant_units():
    rng = np.random.default_rng(11)
    n = 200
    y = np.zeros(n, dtype=np.int64)
    y[rng.permutation(n)[:80]] = 1
    relu = np.where(y == 1, np.maximum(rng.normal(0.6, 1.0, n), 0.0), 0.0)  # quasi-separated
    x = np.column_stack([y + 0.1 * rng.random(n), -(y + 0.1 * rng.random(n)), relu, np.ones(n)])
    fold = grouped_folds(y, np.arange(n), 5, seed=4)
    res = heldout_eval(x, y, fold)
    assert res.separated[:, :3].all() and not res.separated[:, 3].any()
    assert_array_equal(res.accuracy[:2], [1.0, 1.0])
    assert_array_equal(res.auc[:2], [1.0, 1.0])
    # ReLU unit: under the limit fit, x = 0 is predicted negative as long as most training
    # samples at 0 are negative, x > 0 positive; so the errors are the positives at 0
    for f in range(5):
        at0 = (relu == 0) & (fold != f)
        assert y[at0].mean() < 0.5
    assert res.accuracy[2] == pytest.approx(1.0 - np.mean((y == 1) & (relu == 0)))
    # the AUC of the pooled limit predictions: ranks +inf (x > 0), logit share at 0 per fold
    dec = np.where(relu > 0, np.inf, 0.0)
    for f in range(5):
        tr0 = (relu == 0) & (fold != f)
        dec[(fold == f) & (relu == 0)] = special.logit(y[tr0].mean())
    assert res.auc[2] == pytest.approx(roc_auc_score(y, np.nan_to_num(dec, posinf=1e300)))
    # constant unit: the training majority (negative here) everywhere; AUC 0.5 by convention
    assert res.accuracy[3] == pytest.approx(np.mean(y == 0)) and res.auc[3] == 0.5


def test_chunks_and_torch_input():
    _pos, y, groups = positions_and_labels(150, seed=12)
    x = np.random.default_rng(13).normal(size=(150, 9)) + np.linspace(0, 1.5, 9) * y[:, None]
    fold = grouped_folds(y, groups, 3)
    ref = heldout_eval(x, y, fold)
    for got in (
        heldout_eval(x, y, fold, chunk_size=2),
        heldout_eval(torch.from_numpy(x), torch.from_numpy(y), fold),
    ):
        assert_allclose(got.accuracy, ref.accuracy, rtol=0, atol=0)
        assert_allclose(got.auc, ref.auc, rtol=0, atol=1e-15)
        assert_allclose(got.beta, ref.beta, rtol=1e-12)


def test_heldout_errors():
    y = np.array([0, 1, 0, 1, 1, 1])
    with pytest.raises(MechprobeError, match="without fold 0 lacks class 0"):
        heldout_eval(np.zeros((6, 1)), y, np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="two folds"):
        heldout_eval(np.zeros((6, 1)), y, np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="shape"):
        heldout_eval(np.zeros((5, 1)), y, np.arange(6) % 2)


def test_layers_on_the_thread_pool_equal_the_serial_loop():
    """`heldout_layers` spreads layers over one-thread workers: the numbers are exactly those
    of `heldout_eval` layer by layer, and the process's torch threads are restored."""
    from mechprobe.stats.layerwise import heldout_layers

    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 40)
    x = torch.from_numpy(rng.normal(size=(80, 4, 30)) + 0.4 * y[:, None, None] * rng.random(30))
    folds = np.arange(80) % 4
    before = torch.get_num_threads()
    got = heldout_layers(x, y, folds, progress=False)
    assert torch.get_num_threads() == before
    for i in range(4):
        want = heldout_eval(x[:, i, :], y, folds)
        assert_array_equal(got["accuracy"][i], want.accuracy)
        assert_array_equal(got["auc"][i], want.auc)
        assert_array_equal(got["best_unit"][i], want.best_unit)
        assert_array_equal(got["best_correct"][i], want.best_correct)
