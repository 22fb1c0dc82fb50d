"""Regenerate figures/: run `mechprobe all` offline on smollm2-135m and copy every PNG.

Usage:
    python scripts/make_figures.py --text ../shared/data/pg32154.txt [--out mechprobe-out]

The PNGs land in figures/<experiment>_<figure>.png (the README shows some of them).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mechprobe.cli.main import main as mechprobe_main

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default="../shared/data/pg32154.txt")
    ap.add_argument("--out", default="mechprobe-out")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--resume", action="store_true", help="reuse finished experiments in --out")
    args = ap.parse_args()
    argv = ["all", "--model", args.model, "--out", args.out, "--text", args.text]
    code = mechprobe_main(argv + (["--resume"] if args.resume else []))
    if code != 0:
        return code
    dest = REPO / "figures"
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.png"):
        old.unlink()
    pngs = sorted(Path(args.out).glob("*/figures/*.png"))
    if not pngs:
        print("no PNGs were written (is Chromium installed?)", file=sys.stderr)
        return 1
    for png in pngs:
        shutil.copyfile(png, dest / f"{png.parent.parent.name}_{png.name}")
    print(f"copied {len(pngs)} PNGs to {dest}")
    screenshot(Path(args.out) / "index.html", dest / "report.png")
    return 0


def screenshot(page: Path, png: Path) -> None:
    """Save the top of the HTML report as seen in headless Chromium (for the README)."""
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
                "--window-size=1280,1700",
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
