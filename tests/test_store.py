"""Activation store: collection, resume after a kill, score test, Dask fits, a cluster, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("zarr", reason="the activation store needs zarr 3 (Python 3.11+)")

from mechprobe.activations import collect_units
from mechprobe.collect_store import collect_to_store, open_store
from mechprobe.errors import MechprobeError
from mechprobe.experiments import probe
from mechprobe.faults import ONCE_ENV
from mechprobe.models.registry import model_shape
from mechprobe.stats.probe import fit_layers
from mechprobe.store import ActivationStore, fit_store, zarr_store
from tests.helpers import REPO, assert_one_line_error, run_cli

pytestmark = pytest.mark.unit

#: The in-sample arrays that must equal the in-memory path's bit for bit.
IN_SAMPLE = ("beta", "pvalue", "accuracy", "converged", "separated", "significant")
LAYERS, POS, BATCH = [0, 1], 7, 2  # blocks of 8 * 2 = 16 windows


def sm_score(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' score test of adding each column of x to the intercept-only logit GLM."""
    import statsmodels.api as sm

    null = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial()).fit(tol=1e-14)
    res = [null.score_test(exog_extra=x[:, [j]]) for j in range(x.shape[1])]
    return np.array([r.statistic[0] for r in res]), np.array([r.pvalue[0] for r in res])


@pytest.fixture(scope="module")
def windows():
    """40 random windows of 10 tokens (3 blocks, the last one partial), labels, positions."""
    rng = np.random.default_rng(0)
    w = torch.as_tensor(rng.integers(0, 50000, (40, 10)))
    return w, rng.integers(0, 2, 40), np.arange(40) * 3


def make_store(url, model, windows, **kw):
    w, labels, positions = windows
    return open_store(
        url, model, w, labels, positions, position=POS, layers=LAYERS, batch_size=BATCH, **kw
    )


def in_memory(model, windows):
    return collect_units(model, windows[0], POS, LAYERS, batch_size=BATCH, progress=False)


def assert_store_equals(store, units):
    for fam, x in units.items():
        for i, layer in enumerate(LAYERS):
            got = store.columns(fam, layer, 0, x.shape[2])
            np.testing.assert_array_equal(got, x[:, i, :].numpy(), err_msg=f"{fam} {layer}")


# ------------------------------------------------------------------ collection and resume


def test_store_holds_exactly_what_collect_units_gives(tiny_model, windows, tmp_path):
    store, resumed = make_store(str(tmp_path / "s.zarr"), tiny_model, windows)
    assert not resumed and store.n_blocks == 3 and store.block == 16
    assert collect_to_store(tiny_model, store, batch_size=BATCH, progress=False) == [0, 1, 2]
    assert_store_equals(store, in_memory(tiny_model, windows))
    np.testing.assert_array_equal(store.labels(), windows[1])
    np.testing.assert_array_equal(store.positions(), windows[2])
    np.testing.assert_array_equal(store.windows(slice(0, 40)), windows[0].numpy())
    again, resumed = make_store(str(tmp_path / "s.zarr"), tiny_model, windows)
    assert resumed and collect_to_store(tiny_model, again, batch_size=BATCH) == []
    other = (windows[0], 1 - windows[1], windows[2])  # other labels: refused, never mixed
    with pytest.raises(MechprobeError, match=r"holds another collection .*labels_sha256"):
        make_store(str(tmp_path / "s.zarr"), tiny_model, other)


def test_killed_collection_resumes_with_identical_arrays(tiny_model, windows, tmp_path):
    url = str(tmp_path / "k.zarr")
    np.save(tmp_path / "w.npy", windows[0].numpy())
    np.save(tmp_path / "y.npy", windows[1])
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from mechprobe.collect_store import collect_to_store, open_store
        from mechprobe.models import load_model
        model = load_model("tiny-gpt2", device="cpu")
        w = torch.as_tensor(np.load({str(tmp_path / "w.npy")!r}))
        y = np.load({str(tmp_path / "y.npy")!r})
        store, _ = open_store({url!r}, model, w, y, np.arange(40) * 3, position={POS},
                              layers={LAYERS}, batch_size={BATCH})
        collect_to_store(model, store, batch_size={BATCH}, progress=False)
    """)
    env = {**os.environ, "MECHPROBE_FAILPOINT": "store:block1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert res.returncode == -9, res.stderr.decode()[-2000:]  # SIGKILLed inside block 1
    store, resumed = make_store(url, tiny_model, windows)
    assert resumed and store.done().tolist() == [True, False, False]
    store.array("mlp", 1)[16:32] = 1e6  # as if block 1 had been torn while being written
    assert collect_to_store(tiny_model, store, batch_size=BATCH, progress=False) == [1, 2]
    assert_store_equals(store, in_memory(tiny_model, windows))


# ------------------------------------------------------------------ the score test


def test_score_test_from_the_store_equals_statsmodels(tiny_model, windows, tmp_path):
    """Per-block states merged in block order; three classes: one contrast per class."""
    labels = np.arange(40) % 3
    w = windows[0].clone()
    w[:24, POS] = torch.tensor([11, 2222, 33333])[labels[:24]]  # class tokens: real effects
    w3 = (w, labels, windows[2])
    store, _ = make_store(str(tmp_path / "c.zarr"), tiny_model, w3, contrasts=[0, 1, 2])
    collect_to_store(tiny_model, store, batch_size=BATCH, progress=False)
    x = store.columns("qkv", 1, 0, 30).astype(np.float64)
    results = store.score("qkv", 1)
    assert len(results) == 3
    for c, res in enumerate(results):
        stat, p = sm_score(x, (labels == c).astype(float))
        assert p.min() < 1e-4 and p.max() > 1e-3
        np.testing.assert_allclose(res.statistic[:30], stat, rtol=1e-8)
        np.testing.assert_allclose(res.pvalue[:30], p, rtol=1e-7)


# ------------------------------------------------------------------ fits with Dask


def synthetic_store(url, n=90, widths=(("qkv", 50), ("mlp", 37)), seed=0):
    """A store of random activations with real effects, a separating and a constant unit."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    store = ActivationStore.create(
        url,
        windows=np.zeros((n, 2), int),
        labels=y,
        positions=np.arange(n),
        position=0,
        layers=[3, 5],
        widths=dict(widths),
        block=32,
        unit_chunk=16,
    )
    acts = {}
    for fam, m in widths:
        x = rng.normal(size=(n, 2, m)) + rng.normal(0, 0.8, m) * y[:, None, None]
        x[:, 0, 0] = y * 5.0 + rng.random(n)  # separates the classes
        x[:, 1, 1] = 2.5  # constant
        acts[fam] = x.astype(np.float32)
    for b in range(store.n_blocks):
        rows = store.block_rows(b)
        store.write_block(b, {fam: a[rows] for fam, a in acts.items()})
    return store, acts, y


def assert_fits_equal(fits, acts, y, select=None):
    for fam, x in acts.items():
        want = fit_layers(torch.as_tensor(x), y, progress=False)
        got = fits[fam][0]
        for key, value in want.items():
            if select is not None:
                value = np.where(select[fam][0], value, np.nan if value.dtype.kind == "f" else 0)
            np.testing.assert_array_equal(got[key], value, err_msg=f"{fam} {key}")


def test_dask_fit_from_the_store_equals_the_in_memory_fit(tmp_path):
    store, acts, y = synthetic_store(str(tmp_path / "f.zarr"))
    fits = fit_store(store, firth_separated=True)
    assert_fits_equal(fits, acts, y)
    mlp = fits["mlp"][0]
    assert mlp["separated"][0, 0] and np.isnan(mlp["beta"][1, 1]) and mlp["fitted"].all()
    firth = np.isfinite(mlp["firth_beta"])
    assert firth.tolist() == mlp["separated"].tolist()  # Firth exactly where separated
    from mechprobe.stats.firth import fit_firth

    want = fit_firth(acts["mlp"][:, 0, :1], y)
    np.testing.assert_allclose(mlp["firth_beta"][0, 0], want.beta[0], rtol=1e-10)
    # a selection: only those units are fitted, with the same numbers
    rng = np.random.default_rng(1)
    select = {f: rng.random((1, 2, store.widths[f])) < 0.3 for f in store.widths}
    select["qkv"][0, 1, :] = False  # a whole layer left out: no task at all
    part = fit_store(store, select=select)
    assert_fits_equal(part, acts, y, select)
    assert part["qkv"][0]["fitted"].tolist() == select["qkv"][0].tolist()


# ------------------------------------------------------------------ the probe


def run_probe(model, text, **kw):
    settings = dict(text=str(text), max_samples=24, folds=0, no_controls=True, batch_size=2)
    return probe.run(probe.resolve(probe.ProbeConfig(**settings, **kw), model_shape(model)), model)


def assert_in_sample_equal(a, b):
    for fam in ("qkv", "mlp"):
        for key in IN_SAMPLE:
            np.testing.assert_array_equal(
                b.arrays[f"{fam}_{key}"], a.arrays[f"{fam}_{key}"], err_msg=f"{fam}_{key}"
            )
    for key in ("labels", "positions", "best_unit_probability"):
        np.testing.assert_array_equal(b.arrays[key], a.arrays[key], err_msg=key)
    assert b.summary["best_unit"]["unit"] == a.summary["best_unit"]["unit"]


@pytest.fixture(scope="module")
def memory_run(tiny_model, shared_text):
    return run_probe(tiny_model, shared_text)


def test_probe_with_a_store_equals_the_in_memory_probe(
    tiny_model, shared_text, memory_run, tmp_path, monkeypatch
):
    monkeypatch.setattr(zarr_store, "MAX_UNIT_CHUNK", 64)  # several unit blocks a layer
    url = str(tmp_path / "p.zarr")
    res = run_probe(tiny_model, shared_text, store=url)
    assert_in_sample_equal(memory_run, res)
    for key in ("mlp_firth_beta", "mlp_firth_pvalue"):
        if key in memory_run.arrays:
            np.testing.assert_allclose(res.arrays[key], memory_run.arrays[key], rtol=1e-9)
    info = res.summary["store"]
    assert info["blocks"] == info["blocks_written"] == 3 and info["unit_chunk"] == 64
    assert "held-out accuracy and AUC" in info["skipped"] and res.summary["folds"] == 0
    # the streaming score test, against statsmodels on the stored columns
    store = ActivationStore.open(url)
    x = store.columns("mlp", 1, 0, 40).astype(np.float64)
    stat, _ = sm_score(x, (store.labels() == 1).astype(float))
    np.testing.assert_allclose(res.arrays["mlp_score_statistic"][1, :40], stat, rtol=1e-8)
    # fit only where the score test passes: the same numbers there, nothing elsewhere
    again = run_probe(tiny_model, shared_text, store=url, score_threshold=1e-3)
    assert again.summary["store"]["blocks_written"] == 0  # the complete store is reused
    for fam in ("qkv", "mlp"):
        fitted = again.arrays[f"{fam}_fitted"]
        assert fitted.tolist() == (~(res.arrays[f"{fam}_score_pvalue"] >= 1e-3)).tolist()
        assert 0 < fitted.sum() < fitted.size
        for key in ("beta", "pvalue", "accuracy"):
            want = np.where(fitted, memory_run.arrays[f"{fam}_{key}"], np.nan)
            np.testing.assert_array_equal(again.arrays[f"{fam}_{key}"], want)


def test_cli_store_and_bad_settings(tmp_path, tiny_cli, shared_text):
    url = tmp_path / "cli.zarr"
    args = ["negation", "--model", "tiny-gpt2", "--text", str(shared_text), "--max-samples", "10"]
    code, _, err = run_cli(*args, "--out", str(tmp_path / "o"), "--store", str(url))
    assert code == 0, err
    with np.load(tmp_path / "o" / "negation" / "arrays.npz") as z:
        assert z["qkv_score_pvalue"].shape == z["qkv_beta"].shape == (2, 192)
        assert "qkv_heldout_accuracy" not in z.files
    summary = json.loads((tmp_path / "o" / "negation" / "summary.json").read_text())
    assert summary["store"]["path"] == str(url) and summary["settings"]["store"] == str(url)
    code, _, err = run_cli(*args, "--out", str(tmp_path / "o2"), "--scheduler", "tcp://x:1")
    assert_one_line_error(code, err, "scheduler", "only with an activation store")
    code, _, err = run_cli(
        *args,
        "--out",
        str(tmp_path / "o3"),
        "--store",
        str(url),
        "--score-threshold",
        "2",
        "--save-activations",
    )
    assert_one_line_error(code, err, "must be in [0, 1]", "already holds the activations")


# ------------------------------------------------------------------ a dask.distributed cluster


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as c:
            yield c


def test_cluster_collects_and_fits_like_the_in_memory_probe(
    tiny_model, shared_text, memory_run, cluster, tmp_path, monkeypatch
):
    """Blocks collected by two worker processes (each loads tiny-gpt2), units fitted there."""
    monkeypatch.setattr(zarr_store, "MAX_UNIT_CHUNK", 64)
    res = run_probe(
        tiny_model, shared_text, store=str(tmp_path / "d.zarr"), scheduler=cluster.scheduler_address
    )
    assert_in_sample_equal(memory_run, res)
    assert res.summary["store"]["blocks_written"] == 3


def _arm(marker: str) -> None:
    os.environ["MECHPROBE_FAILPOINT"] = "store:fit"
    os.environ[ONCE_ENV] = marker


def test_a_worker_killed_while_fitting_changes_nothing(cluster, tmp_path):
    from distributed import Client

    store, acts, y = synthetic_store(str(tmp_path / "kill.zarr"), n=300, seed=2)
    marker = tmp_path / "killed"
    with Client(cluster) as client:
        before = set(client.scheduler_info()["workers"])
        client.run(_arm, str(marker))  # in the worker processes only
        fits = fit_store(store, scheduler=cluster.scheduler_address)
        client.wait_for_workers(2, timeout=60)
        after = set(client.scheduler_info()["workers"])
    assert marker.exists()  # a task reached the failpoint: its worker was SIGKILLed
    assert len(after) == 2 and len(before & after) == 1  # the nanny started a new worker
    assert_fits_equal(fits, acts, y)


# ------------------------------------------------------------------ the benchmark, small


def test_bench_store_small_prints_both_sides_and_the_ratio(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_store.py"),
            "--gb",
            "0.004",
            "--windows",
            "2000",
            "--slice-units",
            "128",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "store (from disk)" in out and "in memory (slice)" in out and "ratio" in out, out
    assert "identical: True" in out, out
    assert not any(tmp_path.iterdir())  # the store is deleted
