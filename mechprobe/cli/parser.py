"""The argument parser, generated from the experiment specs; building it imports no torch.

Every experiment in the registry becomes a subcommand whose options are its config's fields
(`mechprobe.experiments.spec.cli_options`). Values are parsed later, all together, so that every
invalid option of a command is reported at once (`mechprobe.cli.app`).

Example:
    >>> args = build_parser().parse_args(["heads", "--layer", "3", "--model", "tiny-gpt2"])
    >>> args.command, args.cfg_layer, args.model
    ('heads', '3', 'tiny-gpt2')
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mechprobe.experiments import default_steps, registry
from mechprobe.experiments.spec import cli_options

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_OUT = "mechprobe-out"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``mechprobe: error: message`` and exit 2 (no usage block)."""
        sys.stderr.write(f"mechprobe: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def common_options(model: bool = True) -> OneLineParser:
    """Options of every run: ``--model``, ``--device`` and placement, ``--out``, ``--resume``.

    A parent parser (never parsed itself) of the subcommands, hence of their class.
    """
    common = OneLineParser(add_help=False)
    if model:
        common.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help="model name (see 'mechprobe models'), hub id or local directory "
            f"(default: {DEFAULT_MODEL})",
        )
    common.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    place = common.add_argument_group("placement (models larger than one device)")
    place.add_argument(
        "--device-map",
        default=None,
        metavar="{auto,balanced}",
        help="spread the model's blocks over the GPUs with accelerate (instead of --device)",
    )
    place.add_argument(
        "--n-devices", default=None, metavar="N", help="split the model over N GPUs (balanced)"
    )
    place.add_argument(
        "--max-memory",
        default=None,
        metavar="BUDGETS",
        help="per-device budgets for the device map, e.g. 0=20GiB,1=20GiB,cpu=64GiB",
    )
    place.add_argument(
        "--dtype",
        default=None,
        metavar="{float32,bfloat16,float16}",
        help="weights' dtype (default float32, the only one for parity checks)",
    )
    common.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    common.add_argument(
        "--resume",
        action="store_true",
        help="reuse a step whose earlier result matches this request exactly (model, weights, "
        "settings, inputs, versions); rerun the others and say why",
    )
    common.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what OUT holds of another model (or, for probe, of another class file); "
        "without it such an OUT is refused",
    )
    common.add_argument("--no-png", action="store_true", help="skip PNG export (HTML figures only)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser: ``models``, one subcommand per experiment, ``all``."""
    parser = OneLineParser(
        prog="mechprobe",
        description="Mechanistic-interpretability experiments on TransformerLens, "
        "cross-checked against HuggingFace hooks. Each run writes OUT/<experiment>/ and the "
        "report OUT/index.html.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    sub.add_parser(
        "models", help="list the known models and their shapes", description="List models."
    )
    specs = registry()
    for name, spec in specs.items():
        p = sub.add_parser(name, parents=[common], help=spec.help, description=spec.help)
        for opt in cli_options(spec.config):
            kwargs: dict[str, Any] = {"dest": f"cfg_{opt.name}", "default": None}
            text = opt.help + (f" [{', '.join(opt.choices)}]" if opt.choices else "")
            if opt.is_flag:
                p.add_argument(opt.flag, action="store_true", help=text, **kwargs)
            else:
                metavar = opt.metavar or opt.name.upper()
                p.add_argument(opt.flag, metavar=metavar, help=text, **kwargs)
    default = (
        ",".join(default_steps())
        + "; also: "
        + ",".join(n for n, s in specs.items() if not s.in_all)
    )
    p = sub.add_parser(
        "all",
        parents=[common],
        help="run every experiment on one model and write OUT/index.html",
        description="Run every experiment (or --steps) with its defaults on one model, then "
        "build the report.",
    )
    p.add_argument(
        "--text",
        default=None,
        help="negation text: a path, an http(s) URL or gutenberg:ID (default: $MECHPROBE_TEXT, "
        "else gutenberg:32154)",
    )
    p.add_argument("--steps", default=None, help=f"comma list of steps (default: {default})")
    p.add_argument("--no-random-model", action="store_true", help=NO_RANDOM_MODEL)
    p = sub.add_parser(
        "sweep",
        parents=[common_options(model=False)],
        help="run the experiments on several models; one comparative page OUT/index.html",
        description="Run every experiment (or --experiments) on each model into "
        "OUT/<model>-<hash>/, one model in memory at a time, then write a comparative page. "
        "Models that cannot be loaded here (hub models offline) are listed as skipped.",
    )
    p.add_argument(
        "--models",
        required=True,
        help="comma list of models, e.g. smollm2-135m,gemma3-270m,gpt2 (hub models need a network)",
    )
    p.add_argument("--experiments", default=None, help=f"comma list (default: {default})")
    p.add_argument("--text", default=None, help="negation text (as for 'all')")
    p.add_argument("--no-random-model", action="store_true", help=NO_RANDOM_MODEL)
    return parser


#: ``all`` and ``sweep``'s one setting of a step: the random-weights control costs a forward pass.
NO_RANDOM_MODEL = (
    "skip the probes' random-weights control model (a second forward pass over the samples: "
    "about as long as the negation step's own); the verdict then does without that baseline"
)
