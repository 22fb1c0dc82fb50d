"""mechprobe probe: class files and labelled positions, held-out statistics, controls, Firth."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mechprobe.experiments import negation as e1
from mechprobe.experiments import probe
from mechprobe.models.registry import model_shape
from mechprobe.stats.firth import fit_firth
from mechprobe.stats.heldout import window_groups
from tests.helpers import assert_close, assert_one_line_error, run_cli

TENSE = """
[[class]]
name = "present"
words = ["is", "are", "has", "have", "does", "do"]
next_starts_with_space = true
[[class]]
name = "past"
words = ["was", "were", "had", "did"]
regex = "[a-z]+ed"
next_starts_with_space = true
"""


def run(config, model):
    return probe.run(probe.resolve(config, model_shape(model)), model)


@pytest.mark.unit
def test_negation_is_the_probe_preset(tiny_model, shared_text):
    settings = {"text": str(shared_text), "max_samples": 25, "folds": 3}
    a = e1.run(e1.resolve(e1.NegationConfig(**settings), model_shape(tiny_model)), tiny_model)
    b = run(probe.ProbeConfig(**settings), tiny_model)
    assert sorted(a.arrays) == sorted(b.arrays)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


@pytest.mark.unit
def test_class_file_selection_equals_a_plain_loop(
    tiny_model, tiny_reference, shared_text, tmp_path
):
    classes = tmp_path / "tense.toml"
    classes.write_text(TENSE, encoding="utf-8")
    res = run(probe.ProbeConfig(classes=str(classes), text=str(shared_text), folds=0,
                                no_controls=True, layers=(1,)), tiny_model)  # fmt: skip
    _, tok = tiny_reference
    ids = tok(shared_text.read_bytes().decode("utf-8", "replace"), add_special_tokens=False,
              verbose=False)["input_ids"]  # fmt: skip
    want_pos, want_lab = [], []
    for ti in range(90, len(ids) - 10):
        t, nxt = tok.decode([ids[ti]]).strip().lower(), tok.decode([ids[ti + 1]])
        if not nxt.startswith(" "):
            continue
        if t in {"is", "are", "has", "have", "does", "do"}:
            want_pos.append(ti), want_lab.append(0)
        elif t in {"was", "were", "had", "did"} or re.fullmatch("[a-z]+ed", t):
            want_pos.append(ti), want_lab.append(1)
    assert res.arrays["positions"].tolist() == want_pos
    assert res.arrays["labels"].tolist() == want_lab
    assert res.summary["classes"] == ["present", "past"]
    assert res.summary["matched_tokens"]["past"]["was"] > 0


@pytest.fixture(scope="module")
def random_labels(tmp_path_factory, shared_text):
    """A JSONL of 300 random positions of the shared text with random labels."""
    rng = np.random.default_rng(0)
    text = shared_text.read_bytes().decode("utf-8", "replace")
    chars = 2000 + np.cumsum(rng.integers(100, 700, 300))  # 20-160 tokens apart
    path = tmp_path_factory.mktemp("labels") / "random.jsonl"
    lines = [json.dumps({"text": text, "char": int(c), "label": str(rng.integers(0, 2))})
             for c in chars]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.unit
def test_random_labels_give_chance_held_out_accuracy_and_no_selectivity(tiny_model, random_labels):
    res = run(probe.ProbeConfig(labels=str(random_labels), context_pre=60, context_post=5,
                                folds=5), tiny_model)  # fmt: skip
    a, s = res.arrays, res.summary
    n = len(a["labels"])
    assert n >= 290
    half = 1.96 * np.sqrt(0.25 / n)  # the binomial 95% half-width of one unit's accuracy
    chance = max(np.mean(a["labels"]), 1 - np.mean(a["labels"]))  # always the larger class
    assert s["chance_accuracy"] == pytest.approx(chance)
    for fam in ("qkv", "mlp"):
        held, auc = a[f"{fam}_heldout_accuracy"], a[f"{fam}_heldout_auc"]
        # the mean over many units has far less noise than one unit's accuracy
        assert 0.5 - half / 3 < np.nanmean(held) < chance + half / 3, (fam, np.nanmean(held))
        assert abs(np.nanmean(auc) - 0.5) < half / 3, (fam, np.nanmean(auc))
        for row in s["per_layer"]:
            assert abs(row[fam]["selectivity"]) < half / 2, row[fam]["selectivity"]
    # no two samples whose windows overlap are on different sides of a split
    start, end = a["positions"] - 60, a["positions"] + 5
    overlap = (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None])
    assert overlap.sum() > n  # some windows do overlap (beyond each with itself) ...
    assert np.all(a["folds"][:, None] == a["folds"][None, :], where=overlap)  # ... same fold
    assert len(np.unique(window_groups(a["positions"], 60, 5))) < n


@pytest.mark.unit
def test_multiclass_is_one_vs_rest(tiny_model, shared_text, tmp_path):
    classes = tmp_path / "three.json"
    classes.write_text(json.dumps({"class": [
        {"name": "negation", "words": ["not", "never"], "next_starts_with_space": True},
        {"name": "modal", "words": ["can", "could", "may"], "next_starts_with_space": True},
        {"name": "copula", "words": ["is", "was"], "next_starts_with_space": True},
    ]}))  # fmt: skip
    res = run(probe.ProbeConfig(classes=str(classes), text=str(shared_text), max_samples=30,
                                folds=3, layers=(0,)), tiny_model)  # fmt: skip
    a = res.arrays
    assert res.summary["contrasts"] == ["negation", "modal", "copula"]
    assert a["mlp_beta"].shape == (3, 1, 256) and a["mlp_heldout_accuracy"].shape == (3, 1, 256)
    # each contrast is the plain binary probe of its class against the rest
    y = (a["labels"] == 1).astype(int)
    binary = run(probe.ProbeConfig(classes=str(classes), text=str(shared_text), max_samples=30,
                                   folds=0, no_controls=True, layers=(0,), save_activations=True),
                 tiny_model)  # fmt: skip
    from mechprobe.stats.logistic import fit_logistic

    fit = fit_logistic(binary.arrays["mlp_acts"][:, 0], y)
    assert_close(a["mlp_beta"][1, 0], fit.beta, atol=0)


@pytest.mark.unit
def test_firth_gives_separated_units_a_finite_beta(tiny_model, shared_text):
    res = run(probe.ProbeConfig(text=str(shared_text), max_samples=6, folds=0, no_controls=True,
                                save_activations=True), tiny_model)  # fmt: skip
    a = res.arrays
    sep = a["mlp_separated"]
    assert sep.any(), "6 samples a class must separate some units"
    assert np.all(np.isinf(a["mlp_beta"][sep]))
    assert np.all(np.isfinite(a["mlp_firth_beta"][sep])) and np.all(
        np.isnan(a["mlp_firth_beta"][~sep])
    )
    layer, unit = np.argwhere(sep)[0]
    direct = fit_firth(a["mlp_acts"][:, layer, [unit]], a["labels"])
    assert a["mlp_firth_beta"][layer, unit] == pytest.approx(direct.beta[0], rel=1e-9)
    assert a["mlp_firth_pvalue"][layer, unit] == pytest.approx(direct.pvalue[0], rel=1e-9)
    firth = run(probe.ProbeConfig(text=str(shared_text), max_samples=6, folds=0, no_controls=True,
                                  method="firth"), tiny_model)  # fmt: skip
    assert np.all(np.isfinite(firth.arrays["mlp_firth_beta"]))


@pytest.mark.unit
def test_probe_cli_and_bad_class_files(tmp_path, tiny_cli, shared_text):
    classes = tmp_path / "tense.toml"
    classes.write_text(TENSE, encoding="utf-8")
    code, out, err = run_cli("probe", "--model", "tiny-gpt2", "--out", str(tmp_path / "o"),
                             "--classes", str(classes), "--text", str(shared_text),
                             "--max-samples", "40", "--folds", "3", "--context-pre", "8",
                             "--context-post", "2")  # fmt: skip
    assert code == 0, err
    assert "samples: 40 present, 40 past" in out and "selectivity" in out
    summary = json.loads((tmp_path / "o" / "probe" / "summary.json").read_text())
    assert summary["examples"]["past"][0].count("[[") == 1
    page = (tmp_path / "o" / "index.html").read_text()
    assert "Probe: any classes" in page
    bad = tmp_path / "bad.toml"
    bad.write_text('[[class]]\nname = "a"\nwords = ["x"]\n', encoding="utf-8")
    code, _, err = run_cli("probe", "--model", "tiny-gpt2", "--out", str(tmp_path / "o"),
                           "--classes", str(bad), "--text", str(shared_text))  # fmt: skip
    assert_one_line_error(code, err, "bad.toml", "2")
    assert "[load]" not in err  # the class file is checked before the model loads
    code, _, err = run_cli("probe", "--model", "tiny-gpt2", "--out", str(tmp_path / "o"),
                           "--folds", "1", "--components", "qkv,nope")  # fmt: skip
    assert_one_line_error(code, err, "--folds", "--components")


@pytest.mark.unit
def test_laminar_marks_the_chance_of_an_unbalanced_probe():
    from mechprobe.experiments.probe_report import chance_of
    from mechprobe.plots.probe import laminar_figure

    curves = {"mlp": {"mean_accuracy": [0.9, 0.88], "mean_heldout_accuracy": [0.88, 0.87]}}
    fig = laminar_figure([0, 1], curves, chance=2288 / 2595)
    assert [round(sh.y0, 3) for sh in fig.layout.shapes] == [0.882, 0.882]
    assert [a.text for a in fig.layout.annotations].count("chance (majority class)") == 2
    fig = laminar_figure([0, 1], curves)  # balanced: the 0.5 line, unlabelled
    assert [sh.y0 for sh in fig.layout.shapes] == [0.5, 0.5]
    assert "chance (majority class)" not in [a.text for a in fig.layout.annotations]
    two = {"classes": ["present", "past"], "chance_accuracy": 2288 / 2595}
    assert chance_of(two) == 2288 / 2595
    assert chance_of({**two, "classes": ["a", "b", "c"]}) == 0.5  # one-vs-rest contrasts differ
