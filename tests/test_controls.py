"""Probe controls: control-task labels, label shuffle, selectivity on synthetic activations."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy import stats

from mechprobe.errors import MechprobeError
from mechprobe.stats.controls import (
    control_task_labels,
    probe_selectivity,
    selectivity,
    shuffled_labels,
)
from mechprobe.stats.heldout import grouped_folds

pytestmark = pytest.mark.unit


def _words(n_types: int, per_type: int, n_positive_types: int):
    """Word types ``w0..`` with ``per_type`` samples each; label 1 for the first types (as E1)."""
    types = np.repeat(np.arange(n_types), per_type)
    return types, np.array([f"w{t}" for t in types]), (types < n_positive_types).astype(np.int64)


# ----------------------------------------------------------------------------- control labels


def test_one_label_per_type_and_sizes_within_the_largest_type():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n_types = int(rng.integers(1, 30))
        sizes = rng.geometric(0.15, size=n_types)  # skewed type frequencies
        types = np.repeat(np.array([f"t{i}" for i in range(n_types)]), sizes)
        perm = rng.permutation(types.size)
        types = types[perm]
        n_classes = int(rng.integers(2, 5))
        labels = rng.integers(0, n_classes, size=types.size)
        control = control_task_labels(types, labels, seed=trial)
        assert control.shape == labels.shape and control.dtype == labels.dtype
        for t in np.unique(types):
            assert np.unique(control[types == t]).size == 1
        real = Counter(labels.tolist())
        ctrl = Counter(control.tolist())
        assert set(ctrl) <= set(real)
        for cls, size in real.items():
            assert abs(ctrl[cls] - size) < sizes.max(), (trial, cls, ctrl, real)


def test_equal_types_give_exact_sizes_and_a_uniform_random_partition():
    # 6 types of 10 samples, 3 types per class: every 3/3 split of the types is a possible
    # control task, and over seeds each of the 20 should be about equally likely.
    types, words, y = _words(6, 10, 3)
    seen = Counter()
    n = 2000
    for seed in range(n):
        control = control_task_labels(words, y, seed=seed)
        assert np.bincount(control).tolist() == [30, 30]
        seen[tuple(np.unique(types[control == 1]).tolist())] += 1
    assert set(seen) == {c for c in combinations(range(6), 3)}
    counts = np.array(list(seen.values()))
    assert stats.chisquare(counts).pvalue > 1e-3  # 19 df; fails for a biased assignment


def test_seeded_and_string_labels():
    words = np.array(["not", "never", "can", "may", "not", "can", "might", "no"] * 3)
    labels = np.array(["neg", "neg", "aff", "aff", "neg", "aff", "aff", "neg"] * 3)
    a = control_task_labels(words, labels, seed=5)
    assert_array_equal(a, control_task_labels(list(words), labels, seed=5))
    assert set(a.tolist()) <= {"neg", "aff"}
    outcomes = {tuple(control_task_labels(words, labels, seed=s).tolist()) for s in range(20)}
    assert len(outcomes) > 1


def test_control_validation():
    with pytest.raises(ValueError):
        control_task_labels(["a", "b"], np.array([0, 1, 1]), 0)
    with pytest.raises(MechprobeError):
        control_task_labels([], np.array([], dtype=int), 0)
    with pytest.raises(MechprobeError):
        control_task_labels(["a"], np.array([0]), -1)


def test_shuffled_labels():
    y = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1])
    s = shuffled_labels(y, seed=4)
    assert_array_equal(s, np.random.default_rng(4).permutation(y))
    assert sorted(s.tolist()) == sorted(y.tolist())
    assert_array_equal(s, shuffled_labels(y, seed=4))
    assert {tuple(shuffled_labels(y, k).tolist()) for k in range(10)} != {tuple(s.tolist())}


def test_selectivity_values_and_nan():
    out = selectivity(np.array([[0.9, np.nan], [0.5, 0.7]]), np.array([[0.6, 0.5], [0.5, 0.8]]))
    assert np.isnan(out[0, 1])
    np.testing.assert_allclose(out[[0, 1, 1], [0, 0, 1]], [0.3, 0.0, -0.1])
    assert selectivity(0.8, 0.55) == pytest.approx(0.25)


# ------------------------------------------------------------------- selectivity on synthetic data


def test_random_units_have_zero_selectivity():
    # Units independent of everything: every held-out accuracy is chance. A unit's held-out
    # accuracy over 400 samples has an SD of about 0.03 (binomial 0.025 plus the fold fits'), so
    # the mean over 200 independent units of real minus control has an SD of about
    # 0.03 * sqrt(2 / 200) = 0.003: 0.015 is 5 SD.
    _, words, y = _words(20, 20, 10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(y.size, 200))
    folds = grouped_folds(y, np.arange(y.size), 5, seed=0)
    res = probe_selectivity(x, y, words, folds, seed=1)
    assert abs(res["real"].mean() - 0.5) < 0.02
    assert abs(res["control"].mean() - 0.5) < 0.02
    assert abs(res["selectivity"].mean()) < 0.015


def test_units_encoding_only_the_word_type_have_zero_selectivity():
    # Each of 6 word types is its own activation cluster on every unit (random centre per unit
    # and type, noise 0.1); the real label is a 3/3 split of the types, as negation is a
    # function of the word in E1. To a unit the real split is just another split of the types,
    # so real and control accuracies have the same distribution over units: both well above
    # chance (the best units perfect) and their mean difference within 4 standard errors.
    types, words, y = _words(6, 50, 3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 300))[types] + 0.1 * rng.normal(size=(y.size, 300))
    folds = grouped_folds(y, np.arange(y.size), 5, seed=0)
    res = probe_selectivity(x, y, words, folds, seed=0)
    control = res["control_labels"]
    assert not ((control == y).all() or (control != y).all())  # a different split of the types
    for key in ("real", "control"):
        assert res[key].mean() > 0.6 and res[key].max() > 0.95
    assert abs(res["shuffled"].mean() - 0.5) < 0.05
    sel = res["selectivity"]
    se = sel.std(ddof=1) / np.sqrt(sel.size)
    assert se < 0.02
    assert abs(sel.mean()) < 4 * se


def test_units_encoding_the_label_not_the_type_are_selective():
    # Units shift by 2 SD with the label, whatever the word: real accuracy about
    # Phi(1) = 0.84; the control classes mix real classes (20 types, 10 per class), so the
    # control accuracy is near chance and the selectivity large.
    _, words, y = _words(20, 20, 10)
    rng = np.random.default_rng(2)
    x = 2.0 * y[:, None] + rng.normal(size=(y.size, 100))
    folds = grouped_folds(y, np.arange(y.size), 5, seed=0)
    res = probe_selectivity(x, y, words, folds, seed=1)
    assert abs(res["real"].mean() - stats.norm.cdf(1.0)) < 0.02
    sel = res["selectivity"]
    assert sel.mean() > 0.2
    assert sel.mean() > 20 * sel.std(ddof=1) / np.sqrt(sel.size)
