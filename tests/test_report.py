import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from mechprobe.report.html import build_report, key_numbers
from tests.helpers import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.unit
def test_key_numbers_flattens_scalars():
    assert key_numbers({"a": 1, "b": {"c": 2.5, "d": [1]}, "e": "x"}) == [
        ("a", 1),
        ("b.c", 2.5),
        ("e", "x"),
    ]


@pytest.mark.unit
def test_report_is_self_contained(tmp_path):
    code, _, err = run_cli("crosscheck", "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert code == 0, err
    page = build_report(tmp_path, experiments=["crosscheck", "heads"], provenance={"model": "x"})
    text = page.read_text()
    assert "<script src=" not in text  # plotly.js is embedded, nothing is fetched
    assert "Plotly.newPlot" in text and "mp-figure" in text
    assert "not run" in text  # heads was not run: said, not hidden
    spec = json.loads((tmp_path / "crosscheck" / "figures" / "parity.json").read_text())
    assert spec["data"][0]["type"] == "heatmap"


def _chromium(*args, timeout=180):
    return subprocess.run(
        [CHROMIUM, *CHROME_FLAGS, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shared_text):
    out = tmp_path_factory.mktemp("all")
    code, _, err = run_cli(
        "all", "--model", "tiny-gpt2", "--out", str(out), "--text", str(shared_text), "--no-png"
    )
    assert code == 0, err
    return out


@pytest.mark.unit
def test_all_writes_every_experiment_and_resume_skips(full_run, shared_text):
    for step in ("crosscheck", "negation", "heads", "similarity", "replace"):
        assert (full_run / step / "summary.json").is_file(), step
        assert list((full_run / step / "figures").glob("*.json")), step
    assert not list(full_run.rglob("*.tmp"))
    before = (full_run / "heads" / "summary.json").stat().st_mtime_ns
    code, _, err = run_cli(
        "all",
        "--model",
        "tiny-gpt2",
        "--out",
        str(full_run),
        "--text",
        str(shared_text),
        "--no-png",
        "--resume",
    )
    assert code == 0 and "skip" in err
    assert (full_run / "heads" / "summary.json").stat().st_mtime_ns == before


@pytest.mark.unit
@pytest.mark.browser
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed")
    url = (full_run / "index.html").resolve().as_uri()
    profile = tmp_path / "profile"
    dom = _chromium(
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        "--enable-logging=stderr",
        "--dump-dom",
        url,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    n_specs = len([p for p in full_run.glob("*/figures/*.json") if p.name != "order.json"])
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
    res = _chromium(
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        url,
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "screenshot is blank"
    assert (pixels < 128).mean() > 0.005, "screenshot has almost no dark pixels"
