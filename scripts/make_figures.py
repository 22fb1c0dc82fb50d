"""Regenerate figures/ and the findings tables (README, docs/findings.md) from full offline runs.

Runs ``mechprobe sweep`` over the models (default smollm2-135m and gemma3-270m) with the shared
text, copies every PNG of the first model to figures/<experiment>_<figure>.png, screenshots the top
of its report (figures/report.png) and of the comparative page (figures/sweep.png), and rewrites
the findings tables between the markers from the runs' finding.json files: the short form (verdict
and key number) in the README, the long form (this run's numbers and the sample) in
docs/findings.md.

Usage:
    python scripts/make_figures.py [--text ../shared/data/pg32154.txt] [--out mechprobe-out]
        [--models smollm2-135m,gemma3-270m] [--resume]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The patching runs of the findings: built-in pair set -> components patched.
PATCH_RUNS = {"ioi": "resid_pre,z", "negation": "resid_pre"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "pg32154.txt"))
    ap.add_argument("--out", default="mechprobe-out")
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--resume", action="store_true", help="reuse finished steps in --out")
    args = ap.parse_args()

    from mechprobe.cli.main import main as mechprobe_main
    from mechprobe.report.markdown import (
        PATCH_END,
        PATCH_START,
        findings_markdown,
        patch_figures_markdown,
        patch_markdown,
        replace_block,
    )

    models = [m for m in args.models.split(",") if m]
    out = Path(args.out)
    argv = ["sweep", "--models", ",".join(models), "--out", str(out), "--text", args.text]
    resume = ["--resume"] if args.resume else []
    code = mechprobe_main(argv + resume)
    if code != 0:
        return code
    from mechprobe.runner.sweep import model_dir

    outs = {m: model_dir(out, m) for m in models}
    first = outs[models[0]]
    pngs = sorted(first.glob("*/figures/*.png"))
    if not pngs:
        print("no PNGs were written (is Chromium installed?)", file=sys.stderr)
        return 1
    dest = REPO / "figures"
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.png"):
        old.unlink()
    for png in pngs:
        shutil.copyfile(png, dest / f"{png.parent.parent.name}_{png.name}")
    print(f"copied {len(pngs)} PNGs to {dest}")
    screenshot(first / "index.html", dest / "report.png")
    screenshot(out / "index.html", dest / "sweep.png", height=1400)
    for doc, short in ((REPO / "README.md", True), (REPO / "docs" / "findings.md", False)):
        doc.write_text(
            replace_block(doc.read_text(encoding="utf-8"), findings_markdown(outs, short=short)),
            encoding="utf-8",
        )
        print(f"updated the findings table in {doc}")
    patches = {}
    for m in models:
        patches[m] = {}
        for pairs, components in PATCH_RUNS.items():
            run_out = out / f"patch-{pairs}-{m}"
            argv = ["patch", "--model", m, "--pairs", pairs, "--components", components]
            code = mechprobe_main([*argv, "--out", str(run_out), *resume])
            if code != 0:
                return code
            patches[m][pairs] = run_out / "patch"
            for png in sorted((run_out / "patch" / "figures").glob("*.png")):
                shutil.copyfile(png, dest / f"patch_{pairs}_{m}_{png.name}")
    table = patch_markdown(patches) + "\n" + patch_figures_markdown(dest, models)
    for doc in (REPO / "README.md", REPO / "docs" / "findings.md"):
        text = replace_block(doc.read_text(encoding="utf-8"), table, PATCH_START, PATCH_END)
        doc.write_text(text, encoding="utf-8")
        print(f"updated the patching table in {doc}")
    return 0


def screenshot(page: Path, png: Path, height: int = 1700) -> None:
    """Save the top of an HTML page as seen in headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: no report screenshot", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=30000",
                f"--window-size=1280,{height}",
                f"--screenshot={png}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    print(f"wrote {png}")


if __name__ == "__main__":
    raise SystemExit(main())
