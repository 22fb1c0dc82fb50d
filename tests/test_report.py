import html
import json

import numpy as np
import pytest

from mechprobe.experiments import default_steps, registry
from mechprobe.report.html import build_report, key_numbers
from tests.helpers import render, run_cli


@pytest.mark.unit
def test_key_numbers_flattens_scalars():
    assert key_numbers({"a": 1, "b": {"c": 2.5, "d": [1]}, "e": "x"}) == [
        ("a", 1),
        ("b.c", 2.5),
        ("e", "x"),
    ]


@pytest.mark.unit
def test_report_is_self_contained(tmp_path, tiny_cli):
    code, _, err = run_cli("crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert code == 0, err
    text = build_report(tmp_path).read_text()
    assert "<script src=" not in text  # plotly.js is embedded, nothing is fetched
    assert "Plotly.newPlot" in text and "mp-figure" in text
    assert "Not run here:" in text and "E2: isolating attention heads" in text  # said, not hidden
    spec = json.loads((tmp_path / "crosscheck" / "figures" / "parity.json").read_text())
    assert spec["data"][0]["type"] == "scatter" and spec["layout"]["yaxis"]["type"] == "log"
    # the parity table: every check with its pass mark, the final norm and logits included
    for check in ("hook_q", "pattern", "final_norm", "logits"):
        assert f"<td>{check}</td>" in text
    assert text.count("<span class='ok'>pass</span>") == 8


@pytest.mark.unit
def test_report_of_two_models_says_so(tmp_path, tiny_cli):
    assert run_cli("heads", "--model", "tiny-gpt2", "--out", str(tmp_path))[0] == 0
    manifest = tmp_path / "heads" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["model"] = {**data["model"], "model": "other-model"}
    manifest.write_text(json.dumps(data))
    # another model's results in OUT: refused unless --overwrite, and then the report says so
    assert run_cli("crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path))[0] == 2
    code, _, err = run_cli(
        "crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path), "--overwrite"
    )
    assert code == 0, err
    text = (tmp_path / "index.html").read_text()
    assert "holds results of 2 models (other-model, tiny-gpt2)" in text


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shared_text):
    out = tmp_path_factory.mktemp("all")
    code, stdout, err = run_cli(
        "all", "--model", "tiny-gpt2", "--out", str(out), "--text", str(shared_text), "--no-png"
    )
    assert code == 0, err
    return out, stdout


@pytest.mark.unit
def test_all_writes_every_experiment_and_resume_reuses(full_run, shared_text):
    out, stdout = full_run
    for step in default_steps():
        assert (out / step / "manifest.json").is_file(), step
        assert (out / step / "figures" / "index.json").is_file(), step
        assert step in stdout
    assert not [p for p in out.rglob("*") if p.name.startswith(".mechprobe-")]
    before = (out / "heads" / "manifest.json").read_bytes()
    code, _, err = run_cli(
        "all", "--model", "tiny-gpt2", "--out", str(out), "--text", str(shared_text),
        "--no-png", "--resume",
    )  # fmt: skip
    assert code == 0 and err.count("[reuse]") == len(default_steps()) and "[load]" not in err
    assert (out / "heads" / "manifest.json").read_bytes() == before


@pytest.mark.unit
def test_report_shows_exactly_what_is_on_disk(full_run):
    out, _ = full_run
    text = (out / "index.html").read_text()
    for step, spec in registry().items():
        if not spec.in_all:
            continue
        m = json.loads((out / step / "manifest.json").read_text())
        assert f"<td>{step}</td><td>tiny-gpt2</td><td>{m['started']}</td>" in text  # timing table
        assert spec.title in text
        for fig in json.loads((out / step / "figures" / "index.json").read_text()):
            assert fig["caption"] in html.unescape(text)
        finding = out / step / "finding.json"
        if finding.is_file():
            verdict = json.loads(finding.read_text())["verdict"]
            assert f"'>{verdict}</span>" in text


@pytest.mark.unit
@pytest.mark.browser
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    full_run, _ = full_run
    page, profile = full_run / "index.html", tmp_path / "profile"
    dom = render(page, profile, "--enable-logging=stderr", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    n_specs = len([p for p in full_run.glob("*/figures/*.json") if p.name != "index.json"])
    assert f'data-figures-total="{n_specs}"' in html
    assert f'data-figures-rendered="{n_specs}"' in html, "not every figure rendered"
    assert "data-js-errors" not in html
    console_errors = [
        line
        for line in dom.stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
    ]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    res = render(page, profile, "--window-size=1280,2400", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "screenshot is blank"
    assert (pixels < 128).mean() > 0.005, "screenshot has almost no dark pixels"
