"""mechprobe sweep: each model's run through the runner, skipped models, the comparative page."""

from __future__ import annotations

import json

import pytest

from mechprobe.experiments import default_steps, registry
from mechprobe.report.markdown import verdicts_in_markdown
from mechprobe.runner.sweep import model_dir
from tests.helpers import REPO, assert_one_line_error, render, run_cli


@pytest.mark.unit
def test_sweep_runs_each_model_and_skips_what_cannot_load(
    tmp_path, tiny_cli, shared_text, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(
        "sweep", "--models", "tiny-gpt2,gpt2", "--experiments", "crosscheck,heads,similarity",
        "--out", str(tmp_path), "--text", str(shared_text),
    )  # fmt: skip
    assert code == 0, err
    assert "[skip] gpt2: gpt2 needs the HuggingFace hub" in err
    assert "tiny-gpt2        ran (0 of 3 steps reused)" in out
    for step in ("crosscheck", "heads", "similarity"):
        manifest = json.loads(
            (model_dir(tmp_path, "tiny-gpt2") / step / "manifest.json").read_text()
        )
        assert manifest["model"]["model"] == "tiny-gpt2"
    assert (model_dir(tmp_path, "tiny-gpt2") / "index.html").is_file()
    page = (tmp_path / "index.html").read_text()
    assert (
        "gpt2</b>: skipped" in page
        and f"href='{model_dir(tmp_path, 'tiny-gpt2').name}/index.html'" in page
    )
    assert page.count("class='mp-figure'") == 2  # heads and similarity curves
    code, out, err = run_cli(
        "sweep", "--models", "tiny-gpt2", "--experiments", "heads", "--out", str(tmp_path),
        "--resume",
    )  # fmt: skip
    assert code == 0 and "[reuse] heads" in err and "(1 of 1 steps reused)" in out


@pytest.mark.unit
def test_sweep_checks_every_model_before_running(tmp_path, tiny_cli):
    code, _, err = run_cli(
        "sweep", "--models", "tiny-gpt2,smollm2-135m", "--experiments", "heads", "--out",
        str(tmp_path), "--layer", "5",
    )  # fmt: skip
    assert code == 2  # --layer is no sweep option: argparse refuses it in one line
    code, _, err = run_cli("sweep", "--models", "", "--out", str(tmp_path))
    assert code == 2 and "--models" in err
    missing = str(tmp_path / "my-model")
    code, _, err = run_cli("sweep", "--models", f"tiny-gpt2,{missing}", "--out", str(tmp_path))
    assert_one_line_error(code, err, f"--models: {missing}: no such directory")
    assert not model_dir(tmp_path, "tiny-gpt2").exists()  # refused before anything ran


@pytest.mark.unit
def test_a_mistyped_model_name_is_skipped_with_a_suggestion(monkeypatch):
    from mechprobe.models.availability import unavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert unavailable("tiny-gpt3").endswith("HuggingFace cache (did you mean 'tiny-gpt2'?)")
    assert unavailable("./no/such/model") == "./no/such/model: no such directory"


@pytest.fixture(scope="session")
def offline_sweep(tmp_path_factory, shared_text):
    """The README's sweep: both offline models, every experiment, the shared text."""
    out = tmp_path_factory.mktemp("sweep")
    code, stdout, err = run_cli(
        "sweep", "--models", "smollm2-135m,gemma3-270m", "--out", str(out),
        "--text", str(shared_text),
    )  # fmt: skip
    assert code == 0, err[-3000:]
    return out, stdout


@pytest.mark.integration
@pytest.mark.browser
def test_offline_sweep_page_renders_every_figure(offline_sweep, tmp_path):
    out, stdout = offline_sweep
    assert "smollm2-135m" in stdout and "gemma3-270m" in stdout
    for model in ("smollm2-135m", "gemma3-270m"):
        for step in default_steps():
            assert (model_dir(out, model) / step / "manifest.json").is_file(), (model, step)
    res = render(out / "index.html", tmp_path / "profile")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    total = dom.split('data-figures-total="', 1)[1].split('"', 1)[0]
    assert int(total) >= 4 and f'data-figures-rendered="{total}"' in dom
    assert "data-js-errors" not in dom


@pytest.mark.integration
def test_readme_findings_agree_with_the_runs(offline_sweep):
    """The README's table and the docs' Findings page have the verdicts these runs give."""
    out, _ = offline_sweep
    for doc in ("README.md", "docs/findings.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        table = text.split("<!-- findings:start -->", 1)[1].split("<!-- findings:end -->", 1)[0]
        columns = table.strip().splitlines()[0].split("|")[3:-1]
        models = [c.strip() for c in columns]
        assert models == ["smollm2-135m", "gemma3-270m"], (doc, models)
        in_doc = verdicts_in_markdown(table)
        for name in default_steps():
            spec = registry()[name]
            if spec.finding is None:
                continue
            got = [
                json.loads((model_dir(out, m) / name / "finding.json").read_text())["verdict"]
                for m in models
            ]
            assert in_doc[spec.title] == got, (doc, name, in_doc.get(spec.title), got)
