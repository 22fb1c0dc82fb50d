"""Whole-layer and k-sparse probes (`mechprobe.stats.layer_probe`) and `ProbeResult.layers`.

Every expected value is computed independently: scikit-learn's ``LogisticRegression`` for the
solver and the nested cross-validation, statsmodels' Wilson interval, TransformerLens's
``sweep_sparse_probe`` for the sparse and whole-layer probes on one split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import mechprobe
from mechprobe.stats.heldout import grouped_folds, heldout_eval, window_groups
from mechprobe.stats.layer_probe import (
    C_GRID,
    _orthogonal,
    fit_l2_logistic,
    nested_probes,
    paired_interval,
    split_probe,
    wilson_interval,
)

#: Decision values of the solver and scikit-learn (tol 1e-10) agree to this, absolutely.
SOLVER_TOL = 1e-5


def _sk_decision(x: np.ndarray, y: np.ndarray, rows: np.ndarray, c: float) -> np.ndarray:
    sk = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(x[rows], y[rows])
    return sk.decision_function(x)


@pytest.mark.parametrize("shape", [(60, 150), (80, 6)])
@pytest.mark.parametrize("c_scale", [0.03, 3.0])
def test_solver_equals_sklearn(shape, c_scale):
    """Same C, same rows: the decision values equal LogisticRegression's (p > n and p < n)."""
    rng = np.random.default_rng(1)
    n, p = shape
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, p)) * rng.gamma(1.0, 1.0, p) + 0.7 * y[:, None] * (np.arange(p) < 3)
    x += 1.5  # uncentred, as activations are
    rows = np.arange(n) % 5 != 0  # a training subset: the weights leave the rest out
    c = c_scale / (x[rows] ** 2).sum(1).mean()
    f = _orthogonal(torch.from_numpy(x))
    z, a, ok = fit_l2_logistic(
        f,
        torch.from_numpy(y.astype(float))[None],
        torch.from_numpy(rows.astype(float))[None],
        torch.tensor([c], dtype=torch.float64),
        tol=1e-10,
        max_iter=200_000,
    )
    assert ok
    mine = (z @ f.T + a[:, None])[0].numpy()
    np.testing.assert_allclose(mine, _sk_decision(x, y, rows, c), atol=SOLVER_TOL)


def test_intervals_equal_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for k, n in ((80, 100), (3, 40), (40, 40)):
        np.testing.assert_allclose(
            wilson_interval(k, n), proportion_confint(k, n, method="wilson"), atol=1e-12
        )
    rng = np.random.default_rng(0)
    a, b = rng.random(50) < 0.8, rng.random(50) < 0.6
    d = a.astype(float) - b.astype(float)
    half = 1.959963984540054 * d.std(ddof=1) / np.sqrt(50)
    np.testing.assert_allclose(paired_interval(a, b), (d.mean(), d.mean() - half, d.mean() + half))


def _planted(seed: int = 0):
    """Unit 0 carries the label only in fold 0; unit 1 carries it weakly everywhere."""
    rng = np.random.default_rng(seed)
    n = 100
    y = np.tile([0, 1], n // 2)
    fold = (np.arange(n) // 2) % 5
    x = rng.normal(size=(n, 20))
    x[:, 1] += 0.8 * y
    x[fold == 0, 0] = 6.0 * y[fold == 0]
    return x, y, fold


def test_nested_selection_never_sees_the_heldout_fold():
    """A unit informative only on the held-out fold is not chosen for it; its labels change
    nothing that is chosen for it or predicted on it."""
    x, y, fold = _planted()
    res = nested_probes(x, {"real": y}, fold, ks=(1, 8))
    assert res["k1"]["real"].units[0, 0] != 0
    assert 0 not in res["k8"]["real"].units[0]
    # the nested best unit of the per-unit probes: chosen on training accuracy, without fold 0
    best = heldout_eval(x, y, fold).best_unit
    assert best is not None and best[0] != 0
    # flipping fold 0's labels changes neither the choices for fold 0 nor its predictions
    y2 = np.where(fold == 0, 1 - y, y)
    res2 = nested_probes(x, {"real": y2}, fold, ks=(1, 8))
    for kind in ("whole_layer", "k1", "k8"):
        a, b = res[kind]["real"], res2[kind]["real"]
        assert a.c[0] == b.c[0]
        np.testing.assert_array_equal(a.decision[fold == 0], b.decision[fold == 0])
        if a.units is not None:
            np.testing.assert_array_equal(a.units[0], b.units[0])


def _sk_nested(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> float:
    """Nested CV written out with scikit-learn: C by inner CV over the other outer folds."""
    correct = np.zeros(y.size, bool)
    for k in np.unique(fold):
        outer = fold != k
        scale = 1.0 / (x[outer] ** 2).sum(1).mean()
        scores = []
        for g in C_GRID:
            right = 0
            for j in np.unique(fold):
                if j == k:
                    continue
                rows = (fold != k) & (fold != j)
                c = g / (x[rows] ** 2).sum(1).mean()
                dec = _sk_decision(x, y, rows, c)
                right += int(((dec[fold == j] > 0) == (y[fold == j] == 1)).sum())
            scores.append(right)
        c = C_GRID[int(np.argmax(scores))] * scale
        dec = _sk_decision(x, y, outer, c)
        correct[fold == k] = (dec[fold == k] > 0) == (y[fold == k] == 1)
    return float(correct.mean())


@pytest.fixture(scope="module")
def small_negation(tiny_model, shared_text):
    """E1 on tiny-gpt2, 60 samples per class, every control, activations kept."""
    return mechprobe.negation(tiny_model, shared_text, max_samples=60, save_activations=True)


@pytest.mark.unit
def test_whole_layer_equals_sklearn_nested_cv(small_negation):
    """The whole-layer accuracy in `.layers` equals nested CV written with scikit-learn."""
    res = small_negation
    a = res.raw.arrays
    x = a["mlp_acts"][:, 0, :].astype(np.float64)
    y, fold = a["labels"].astype(int), a["folds"].astype(int)
    expected = _sk_nested(x, y, fold)
    got = res.layers.query("family == 'mlp' and layer == 0 and probe == 'whole_layer'")
    # the solver stops at tol 1e-4, scikit-learn at 1e-10: a sample at log-odds ~0 may flip
    assert abs(float(got["heldout_accuracy"].iloc[0]) - expected) <= 2 / y.size


@pytest.mark.unit
def test_layers_frame(small_negation, tmp_path):
    from statsmodels.stats.proportion import proportion_confint

    res = small_negation
    df = res.layers
    assert df.columns.tolist() == [
        "family",
        "layer",
        "probe",
        "heldout_accuracy",
        "ci_low",
        "ci_high",
        "control_accuracy",
        "selectivity",
        "embedding_accuracy",
        "random_model_accuracy",
    ]
    kinds = ["unit_mean", "best_unit", "whole_layer", "k1", "k8", "k64"]
    assert len(df) == 2 * 2 * len(kinds)
    assert df["probe"].tolist()[:6] == kinds and df["family"].tolist()[0] == "qkv"
    n = res.samples.shape[0]
    assert res.samples["fold"].nunique() == 5
    sub = df[df["probe"] != "unit_mean"]
    for _, row in sub.iterrows():
        k = round(row["heldout_accuracy"] * n)
        np.testing.assert_allclose(
            (row["ci_low"], row["ci_high"]), proportion_confint(k, n, method="wilson"), atol=1e-9
        )
        assert row["selectivity"] == pytest.approx(
            row["heldout_accuracy"] - row["control_accuracy"]
        )
    whole = df["probe"] == "whole_layer"
    assert df.loc[whole, "random_model_accuracy"].notna().all()
    assert df.loc[~whole, "random_model_accuracy"].isna().all()
    assert df["embedding_accuracy"].notna().all()
    # the mean unit is the mean of the per-unit held-out accuracies
    frame = res.to_dataframe()
    mean0 = frame.query("family == 'mlp' and layer == 0")["heldout_accuracy"].mean()
    got = df.query("family == 'mlp' and layer == 0 and probe == 'unit_mean'")
    assert float(got["heldout_accuracy"].iloc[0]) == pytest.approx(mean0)
    # the nested best unit: the fold's best training unit, scored on the fold
    a = res.raw.arrays
    x = a["mlp_acts"][:, 1, :].astype(np.float64)
    y, fold = a["labels"].astype(int), a["folds"].astype(int)
    correct = np.zeros(n, bool)
    for k in range(5):
        tr, te = fold != k, fold == k
        best, best_acc = None, -1.0
        for u in range(x.shape[1]):
            sk = LogisticRegression(penalty=None, tol=1e-10, max_iter=10_000)
            sk.fit(x[tr, u : u + 1], y[tr])
            acc = sk.score(x[tr, u : u + 1], y[tr])
            if acc > best_acc + 1e-12:
                best, best_acc = sk, acc
                u_best = u
        assert a["mlp_nested_best_unit"][1, k] == u_best
        correct[te] = best.predict(x[te, u_best : u_best + 1]) == y[te]
    got = df.query("family == 'mlp' and layer == 1 and probe == 'best_unit'")
    assert float(got["heldout_accuracy"].iloc[0]) == pytest.approx(correct.mean())
    # the same frame from a step directory read back
    step = res.save(tmp_path / "out", png=False)
    back = mechprobe.load_result(step).layers
    np.testing.assert_array_equal(back.to_numpy(dtype=str), df.to_numpy(dtype=str))


@pytest.mark.unit
def test_matches_transformer_lens_sparse_probe(small_negation):
    """Same activations, same split, same objective: TL's sparse probes and ours agree.

    TransformerLens's ``sweep_sparse_probe`` chooses units by ``|mean difference|`` on the
    training rows and minimises ``mean(log-loss) + l2 |w|^2 / 2`` (unweighted with
    ``class_weight=None``), i.e. ``C = 1 / (l2 n_train)``; ours is configured the same
    (``rule="mean_diff"``, that C, no nesting: `split_probe`). Both solve to tight tolerances,
    so the units are identical and the accuracies equal to within one held-out sample (a
    sample at log-odds ~0); the whole layer is ``k`` = the width.
    """
    from transformer_lens.tools.analysis import sweep_sparse_probe

    a = small_negation.raw.arrays
    y = a["labels"].astype(int)
    groups = window_groups(a["positions"], 90, 10, sequences=a["documents"])
    l2 = 1e-2
    for fam in ("qkv", "mlp"):
        for layer in (0, 1):
            x = a[f"{fam}_acts"][:, layer, :].astype(np.float64)
            width = x.shape[1]
            sweep = sweep_sparse_probe(
                torch.from_numpy(x),
                torch.from_numpy(y),
                ks=[1, 8, 64, width],
                groups=torch.from_numpy(groups),
                class_weight=None,
                l2_strength=l2,
                seed=0,
            )
            for k, tl in zip((1, 8, 64, None), sweep.results, strict=True):
                train = np.zeros(y.size, bool)
                train[tl.train_indices.numpy()] = True
                n_test = y.size - int(train.sum())
                acc, units = split_probe(
                    x, y, train, 1.0 / (l2 * train.sum()), k=k, rule="mean_diff"
                )
                if k is not None:
                    assert sorted(units.tolist()) == sorted(tl.selected_features.tolist())
                assert abs(acc - tl.metrics.accuracy) <= 1 / n_test + 1e-12, (fam, layer, k)


@pytest.mark.unit
def test_no_folds_degrades(tiny_model):
    """No folds: the per-layer probes are unavailable with the reason; the result is written."""
    story = "It is not here, but we can go. The keeper walked along the old harbour wall. " * 30
    res = mechprobe.negation(tiny_model, story, context_pre=5, context_post=1, folds=0)
    assert res.layers.empty
    assert "unavailable" in res.summary["layer_probes"]["note"]
    assert res.finding.verdict


def test_grouped_folds_used():
    """The probes score on the folds given: every sample is held out exactly once."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    fold = grouped_folds(y, np.arange(60) // 3, 3, seed=0)
    res = nested_probes(rng.normal(size=(60, 4)) + y[:, None], {"real": y}, fold, ks=(1,))
    assert res["k1"]["real"].correct.shape == (60,) and res["k1"]["real"].c.shape == (3,)


def test_parallel_layers_equal_serial_and_restore_threads():
    """The thread pool over layers gives the serial loop's numbers exactly and restores the
    process's torch and BLAS thread settings."""
    from threadpoolctl import threadpool_info

    from mechprobe.stats.threads import map_one_thread

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 40)
    folds = np.arange(80) % 4
    layers = [rng.normal(size=(80, 30)) + 0.3 * i * y[:, None] for i in range(4)]

    def fit(x):
        res = nested_probes(x, {"real": y}, folds, ks=(1, 8))
        return {k: v["real"].decision for k, v in res.items()}

    serial = [fit(x) for x in layers]
    before = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])
    parallel = map_one_thread(fit, layers, workers=2)
    after = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])
    assert before == after
    for s, p in zip(serial, parallel, strict=True):
        assert s.keys() == p.keys()
        for k in s:
            np.testing.assert_array_equal(s[k], p[k])
