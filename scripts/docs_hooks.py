"""MkDocs hooks: pages and files generated at build time (see mkdocs.yml's ``hooks``).

- ``reference/cli.md``: every command and option of ``mechprobe``, read from the argument parser,
  which is itself generated from the experiment specs (`mechprobe.cli.parser.build_parser`), so
  the page is the ``--help`` of every command and cannot drift from it.
- ``assets/javascripts/plotly.min.js``: plotly.js from the installed plotly package, loaded once
  by every page (docs/overrides/main.html), so the tutorials' figures render offline.
- ``figures/*.png``: the repository's figures, shown by the pages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `mkdocs build` from the repository root imports this checkout
    sys.path.insert(0, str(REPO))


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split())


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | value | what it does |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = ", ".join(f"`{f}`" for f in action.option_strings)
        if action.nargs == 0:
            value = "flag"
        else:
            value = f"`{action.metavar or action.dest.removeprefix('cfg_').upper()}`"
        text = (action.help or "").replace("|", "\\|").replace("\n", " ")
        if action.required:
            text += " (required)"
        value = value.replace("|", "\\|")
        rows.append(f"| {flag} | {value} | {text} |")
    return rows


def cli_markdown() -> str:
    """The command-line reference page, one section per command, from the live parser."""
    from mechprobe.cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "# Command line",
        "",
        "Generated at build time from `mechprobe`'s argument parser, which is built from each",
        "experiment's config (`mechprobe.experiments.spec.cli_options`): this page is what",
        "`mechprobe COMMAND --help` prints. Every run also takes the common options (`--model`,",
        "`--device`, the placement options, `--out`, `--resume`, `--no-png`), listed under each",
        "command.",
        "",
        f"`{_usage(parser)}`",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name in sub.choices:
        lines.append(f"| [`mechprobe {name}`](#{name}) | {helps.get(name, '')} |")
    for name, p in sub.choices.items():
        lines += ["", f"## `mechprobe {name}` {{#{name}}}", "", p.description or "", ""]
        lines += [f"`{_usage(p)}`", ""]
        rows = _option_rows(p)
        lines += rows if len(rows) > 2 else ["No options."]
    return "\n".join(lines) + "\n"


def on_files(files: Files, config) -> Files:
    """Add the generated page and the files the pages load."""
    import plotly

    files.append(File.generated(config, "reference/cli.md", content=cli_markdown()))
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    files.append(
        File.generated(config, "assets/javascripts/plotly.min.js", abs_src_path=str(plotly_js))
    )
    for png in sorted((REPO / "figures").rglob("*.png")):
        uri = png.relative_to(REPO).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
