"""Entry point of the ``mechprobe`` command.

Each subcommand lives in its own module ``mechprobe.cli.<name>`` that defines
``add_parser(subparsers, common)``; this file wires them up and turns user errors into one line
``mechprobe: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mechprobe.errors import MechprobeError

COMMANDS = ("models", "crosscheck", "negation", "heads", "similarity", "replace", "all")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``mechprobe: error: message`` and exit 2 (no usage block)."""
        sys.stderr.write(f"mechprobe: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand takes: ``--model``, ``--device``, ``--out``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default="smollm2-135m",
        help="model name (see 'mechprobe models'), hub id or local directory "
        "(default: smollm2-135m)",
    )
    common.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    common.add_argument(
        "--out", default="mechprobe-out", help="output directory (default: mechprobe-out)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every available subcommand."""
    parser = OneLineParser(
        prog="mechprobe",
        description="Mechanistic-interpretability experiments on TransformerLens, "
        "cross-checked against HuggingFace hooks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    for name in COMMANDS:
        module_name = f"mechprobe.cli.{'run_all' if name == 'all' else name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.add_parser(sub, common)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mechprobe`` command; return its exit status.

    Example:
        >>> main(["models"])
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except MechprobeError as exc:
        sys.stderr.write(f"mechprobe: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mechprobe: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
