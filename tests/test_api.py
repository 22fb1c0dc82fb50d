"""The library API (`mechprobe.api`): one call per experiment, labelled results, no side effects.

Every value is checked against an independent computation: the samples against the class rule
applied by hand to the tokenizer's pieces, betas and p-values against statsmodels on activations
captured with a plain HF forward hook, the CLI's step directories against the function's result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mechprobe
from mechprobe.errors import MechprobeError
from tests.helpers import REPO, SHARED_TEXT, hf_mlp_pre, run_cli

pytestmark = pytest.mark.unit

CLASSES = {"modal": ["can", "could", "may"], "negation": ["not", "never"]}
PRE, POST = 30, 5
COLUMNS = [
    "family", "layer", "unit", "beta", "pvalue", "significant", "accuracy",
    "heldout_accuracy", "heldout_auc", "control_accuracy",
]  # fmt: skip


@pytest.fixture(scope="module")
def text() -> str:
    """A piece of The Variable Man as a string (the text itself, not a path)."""
    if not SHARED_TEXT.is_file():
        pytest.skip(f"no shared text at {SHARED_TEXT}")
    return SHARED_TEXT.read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="module")
def result(tiny_model, text):
    return mechprobe.probe(
        tiny_model, text, CLASSES, families=["mlp"], layers=[0, 1],
        context_pre=PRE, context_post=POST,
    )  # fmt: skip


def rule_samples(tok, text: str) -> list[tuple[int, str]]:
    """The class rule applied by hand: every token in range whose stripped, lower text is listed."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    out = []
    for ti in range(PRE, len(ids) - POST):
        word = pieces[ti].strip().lower()
        for name, words in CLASSES.items():
            if word in words:
                out.append((ti, name))
    return out


def test_probe_dataframe_has_the_columns_and_one_row_per_layer_and_unit(result, tiny_model):
    df = result.to_dataframe()
    d_mlp = tiny_model.cfg.d_mlp
    assert len(df) == 2 * d_mlp
    assert all(c in df.columns for c in COLUMNS)
    assert set(df["family"]) == {"mlp"}
    assert sorted(df.groupby("layer").size().items()) == [(0, d_mlp), (1, d_mlp)]
    assert df["unit"].max() == d_mlp - 1
    assert df["significant"].dtype == bool


def test_probe_samples_are_exactly_the_tokens_the_rule_selects(result, tiny_reference, text):
    _, tok = tiny_reference
    expected = rule_samples(tok, text)
    s = result.samples
    assert list(zip(s["position"], s["class"], strict=True)) == expected
    assert set(s["doc"]) == {0}
    assert (s["label"] == s["class"].map({"modal": 0, "negation": 1})).all()
    assert [t.strip().lower() for t in s["token"]] == [
        tok.decode([tok(text, add_special_tokens=False)["input_ids"][p]]).strip().lower()
        for p in s["position"]
    ]
    assert s["fold"].between(0, 4).all()


def test_probe_betas_and_pvalues_equal_statsmodels(result, tiny_reference, text):
    sm = pytest.importorskip("statsmodels.api")
    hf, tok = tiny_reference
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    s = result.samples
    windows = torch.stack([ids[p - PRE : p + POST + 1] for p in s["position"]])
    df = result.to_dataframe()
    rng = np.random.default_rng(3)
    for layer in (0, 1):
        x = hf_mlp_pre(hf, windows, layer, PRE)
        rows = df[(df["layer"] == layer) & df["converged"] & ~df["separated"]]
        for unit in rng.choice(rows["unit"].to_numpy(), size=12, replace=False):
            fit = sm.Logit(s["label"].to_numpy(), sm.add_constant(x[:, unit])).fit(disp=0)
            row = rows[rows["unit"] == unit].iloc[0]
            assert row["beta"] == pytest.approx(fit.params[1], rel=1e-5, abs=1e-8)
            assert row["pvalue"] == pytest.approx(fit.pvalues[1], rel=1e-4, abs=1e-12)


def test_load_result_of_a_cli_probe_equals_the_function(tiny_model, text, tmp_path):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    (tmp_path / "c.toml").write_text(
        '[[class]]\nname = "modal"\nwords = ["can", "could", "may"]\n'
        '[[class]]\nname = "negation"\nwords = ["not", "never"]\n',
        encoding="utf-8",
    )
    code, _, err = run_cli(
        "probe", "--model", "tiny-gpt2", "--classes", str(tmp_path / "c.toml"),
        "--text", str(tmp_path / "t.txt"), "--components", "mlp", "--layers", "0,1",
        "--context-pre", str(PRE), "--context-post", str(POST),
        "--out", str(tmp_path / "out"), "--no-png",
    )  # fmt: skip
    assert code == 0, err
    from_cli = mechprobe.load_result(tmp_path / "out" / "probe")
    from_dict = mechprobe.probe(
        tiny_model, Path(tmp_path / "t.txt"), CLASSES, families=["mlp"], layers=[0, 1],
        context_pre=PRE, context_post=POST,
    )  # fmt: skip
    from_file = mechprobe.probe(
        tiny_model, Path(tmp_path / "t.txt"), tmp_path / "c.toml", families=["mlp"],
        layers=[0, 1], context_pre=PRE, context_post=POST,
    )  # fmt: skip
    pd.testing.assert_frame_equal(from_cli.to_dataframe(), from_dict.to_dataframe())
    pd.testing.assert_frame_equal(from_cli.to_dataframe(), from_file.to_dataframe())
    pd.testing.assert_frame_equal(from_cli.samples, from_dict.samples)
    assert from_cli.manifest["inputs"]["text"] == from_dict.manifest["inputs"]["text"]
    assert from_cli.finding == from_dict.finding


@pytest.mark.parametrize("name", ["heads", "similarity", "replace"])
def test_each_function_dataset_equals_its_cli_step(name, tiny_model, tmp_path):
    import xarray as xr

    code, _, err = run_cli(
        "all", "--model", "tiny-gpt2", "--steps", name, "--out", str(tmp_path), "--no-png"
    )
    assert code == 0, err
    from_cli = mechprobe.load_result(tmp_path / name)
    from_function = getattr(mechprobe, name)(tiny_model)
    xr.testing.assert_equal(from_cli.ds, from_function.ds)
    assert from_cli.ds.sizes == from_function.ds.sizes
    assert not [d for d in from_function.ds.dims if d.rsplit("_", 1)[-1].isdigit()]  # all named
    assert from_function.finding == from_cli.finding


def test_save_then_load_result_gives_an_equal_result(result, tmp_path):
    step = result.save(tmp_path, png=False)
    assert step == tmp_path / "probe"
    assert (tmp_path / "index.html").is_file()
    again = mechprobe.load_result(step)
    pd.testing.assert_frame_equal(again.to_dataframe(), result.to_dataframe())
    pd.testing.assert_frame_equal(again.samples, result.samples)
    manifest = json.loads((step / "manifest.json").read_text())
    assert manifest["config"]["components"] == ["mlp"]
    assert set(manifest["files"]) >= {"arrays.npz", "summary.json", "finding.json"}


def test_repr_fits_on_one_screen_and_names_the_samples(result):
    text = repr(result)
    assert len(text.splitlines()) <= 24
    n = result.samples["class"].value_counts()
    assert f"{n['modal']} modal" in text and f"{n['negation']} negation" in text
    assert "mlp: best layer" in text and "held-out accuracy" in text


def test_figures_are_the_reports_builders(result):
    figures = result.figures()
    assert "laminar" in figures
    assert type(figures["laminar"]).__name__ == "Figure"


def test_several_documents_keep_their_windows_apart(tiny_model, tiny_reference, text):
    docs = [text[:20_000], text[20_000:40_000]]
    res = mechprobe.probe(
        tiny_model, docs, CLASSES, families=["mlp"], layers=[1], context_pre=PRE,
        context_post=POST, folds=0, no_controls=True,
    )  # fmt: skip
    _, tok = tiny_reference
    s = res.samples
    for d, doc in enumerate(docs):
        mine = s[s["doc"] == d]
        assert list(zip(mine["position"], mine["class"], strict=True)) == rule_samples(tok, doc)


def test_rule_dicts_and_bad_inputs(tiny_model, text):
    res = mechprobe.probe(
        tiny_model, text, {"past": {"regex": "[a-z]+ed"}, "modal": ["can", "could"]},
        families=["mlp"], layers=[1], context_pre=PRE, context_post=POST, folds=0,
        no_controls=True,
    )  # fmt: skip
    past = res.samples[res.samples["class"] == "past"]["token"]
    assert len(past) and all(t.strip().lower().endswith("ed") for t in past)
    with pytest.raises(MechprobeError, match="unknown option"):
        mechprobe.probe(tiny_model, text, CLASSES, folds_typo=3)
    with pytest.raises(MechprobeError, match="class 'x' needs a list of words"):
        mechprobe.probe(tiny_model, text, {"x": 3, "y": ["a"]})
    with pytest.raises(MechprobeError, match="layers"):
        mechprobe.probe(tiny_model, text, CLASSES, layers=[9])


SIDE_EFFECTS = """
import json, os, sys, torch, mechprobe
from pathlib import Path
model = mechprobe.load_model("tiny-gpt2")
text = Path(sys.argv[1]).read_text(encoding="utf-8")[:60000]
torch.set_num_threads(2)
os.umask(0o027)
before = [torch.get_num_threads(), os.umask(0o027), torch.initial_seed()]
res = mechprobe.probe(model, text, {"a": ["can"], "b": ["not"]}, families=["mlp"],
                      layers=[0, 1], context_pre=30, context_post=5)
after = [torch.get_num_threads(), os.umask(0o027), torch.initial_seed()]
loaded = sorted(m for m in ("zarr", "dask", "distributed") if m in sys.modules)
print(json.dumps({"before": before, "after": after, "loaded": loaded}))
"""


def test_probe_leaves_the_process_as_it_found_it(tmp_path):
    if not SHARED_TEXT.is_file():
        pytest.skip(f"no shared text at {SHARED_TEXT}")
    done = subprocess.run(
        [sys.executable, "-c", SIDE_EFFECTS, str(SHARED_TEXT)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["after"] == out["before"]
    assert out["loaded"] == []


NO_DASK = """
import sys
for name in ("dask", "zarr", "distributed"):
    sys.modules[name] = None  # as if not installed: find_spec gives None, import fails
import mechprobe
res = mechprobe.similarity("tiny-gpt2", n_boot=0)
print(len(res.to_dataframe()), res.ds["hist"].dims)
"""


def test_base_install_without_the_scale_extra_runs_and_labels(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", NO_DASK], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "('position', 'block', 'layer', 'bin')" in done.stdout


NO_SCALE_CLI = """
import sys
for name in ("dask", "zarr", "distributed"):
    sys.modules[name] = None
from mechprobe.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_store_without_the_scale_extra_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", NO_SCALE_CLI, "probe", "--model", "tiny-gpt2", "--store",
         str(tmp_path / "s.zarr"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mechprobe: error: --store: needs zarr, dask, which the base install leaves out: "
        "pip install 'mechprobe[scale]'"
    ]


def test_captions_describe_the_figure_as_drawn(result, tmp_path):
    """Only MLP ran: the laminar caption names the rows drawn and no Q/K/V panel."""
    step = result.save(tmp_path, png=False)
    index = {f["name"]: f for f in json.loads((step / "figures" / "index.json").read_text())}
    caption = index["laminar"]["caption"]
    fig = result.figures()["laminar"]
    n_rows = len({t.yaxis for t in fig.data})
    assert f"{n_rows} rows, top to bottom" in caption
    assert "Q/K/V" not in caption and "Q, K, V" not in index["beta_by_unit"]["caption"]
    assert "MLP units" in caption
    assert "grey: the token embedding alone" in caption


def test_three_classes_give_one_row_per_contrast(tiny_model, text):
    classes = {"modal": ["can", "could"], "negation": ["not", "never"], "past": ["was", "were"]}
    res = mechprobe.probe(
        tiny_model, text, classes, families=["mlp"], layers=[1], context_pre=PRE,
        context_post=POST, folds=0, no_controls=True,
    )  # fmt: skip
    df = res.to_dataframe()
    d_mlp = tiny_model.cfg.d_mlp
    assert list(df.columns[:4]) == ["family", "contrast", "layer", "unit"]
    assert len(df) == 3 * d_mlp
    assert sorted(df["contrast"].unique()) == sorted(classes)
    assert sorted(res.samples["class"].unique()) == sorted(classes)
    assert "mlp:modal: most significant layer 1" in repr(res)


def test_save_refuses_an_out_holding_another_models_run(result, tmp_path):
    """The CLI's no-silent-overwrite rule holds for the library too."""
    step = result.save(tmp_path, png=False)
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["model"]["model"] = "smollm2-135m"  # as if another model's run were there
    (step / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MechprobeError, match="holds a run of smollm2-135m"):
        result.save(tmp_path, png=False)
    again = result.save(tmp_path, png=False, overwrite=True)
    assert json.loads((again / "manifest.json").read_text())["model"]["model"] == "tiny-gpt2"
