"""The experiment spec: what an experiment declares once, for the CLI, the runner and the report.

An experiment module defines a config dataclass whose fields are declared with `option` (the
CLI's options are generated from them), a ``run(config, model, reference) -> ExperimentResult``
function, and one `Experiment` named ``SPEC`` that ties them together with the experiment's
figures (title and caption of each), its finding (the course's claim, this run's numbers, a
verdict) and its terminal table. `mechprobe.experiments.registry` lists the specs; the CLI, the
runner, the report, the README's findings table and the reproduce script iterate it.

Importing an experiment module is cheap (no torch, no transformers): heavy imports live inside
the functions, so that ``mechprobe --help`` stays fast.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class DemoConfig:
    ...     layer: int | None = option(None, "layer to look at (default: the middle one)")
    >>> cli_options(DemoConfig)[0].flag
    '--layer'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechprobe.models.registry import ModelShape

#: The verdict of classes that are decodable, but no better than the words' identity (the
#: control task) or the token embedding: the probe cannot tell tuning to the classes from that.
WORD_IDENTITY = "decodable, explained by word identity"
#: The verdicts a finding can have.
VERDICTS = ("holds", "partly holds", WORD_IDENTITY, "does not hold", "not tested")


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    cli: bool = True,
) -> Any:
    """A config field with what the CLI needs to offer it as an option.

    Args:
        default: The default value (a tuple for sequences; it is not copied).
        help: One line for ``--help``; say the default in it where it is not obvious.
        parse: Turns the typed text into the value (raises `MechprobeError` on a bad form);
            default: ``int``/``float``/``str`` from the default's type.
        flag: The option's flag (default ``--`` + the field name with dashes).
        metavar: The placeholder shown in ``--help``.
        choices: The allowed values of a string option.
        cli: Offer it on the command line at all.

    Example:
        >>> option(0.05, "significance level").metadata["help"]
        'significance level'
    """
    meta = {
        "help": help,
        "parse": parse,
        "flag": flag,
        "metavar": metavar,
        "choices": tuple(choices) if choices else None,
        "cli": cli,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CliOption:
    """One generated command-line option of a config field.

    Attributes:
        name: The config field.
        flag: ``--layer``.
        help: Help text.
        parse: Text to value.
        is_flag: A boolean switch (``store_true``).
        default: The field's default.
        metavar: Placeholder in ``--help``.
        choices: Allowed values.
    """

    name: str
    flag: str
    help: str
    parse: Callable[[str], Any]
    is_flag: bool
    default: Any
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


def _default_parse(default: Any) -> Callable[[str], Any]:
    from mechprobe.validate import parse_float, parse_int

    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return parse_int
    if isinstance(default, float):
        return parse_float
    return str


def cli_options(config_type: type) -> list[CliOption]:
    """The command-line options of a config dataclass, in field order.

    Example:
        >>> from mechprobe.experiments.heads import HeadsConfig
        >>> [o.flag for o in cli_options(HeadsConfig)][:2]
        ['--layer', '--text']
    """
    out = []
    for f in dataclasses.fields(config_type):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        out.append(
            CliOption(
                name=f.name,
                flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
                help=meta["help"],
                parse=meta.get("parse") or _default_parse(f.default),
                is_flag=isinstance(f.default, bool),
                default=f.default,
                metavar=meta.get("metavar"),
                choices=meta.get("choices"),
            )
        )
    return out


@dataclass(frozen=True)
class Figure:
    """A figure an experiment draws: its file name, title and a caption that says how to read it.

    Attributes:
        name: File name stem (``laminar`` -> ``figures/laminar.json``).
        title: Heading in the report.
        caption: One or two sentences: what it shows and how to read it.
    """

    name: str
    title: str
    caption: str


@dataclass(frozen=True)
class Finding:
    """The course's claim beside this run's numbers, with a verdict.

    Attributes:
        claim: What the course found (on GPT-2).
        this_run: This run's numbers, in a sentence or two.
        verdict: One of `VERDICTS`.
        key: The key number, short, for overview tables (``66.3% negative``).
        sample: Sample size and uncertainty behind the verdict.

    Example:
        >>> Finding("x", "y", "holds").as_dict()["verdict"]
        'holds'
    """

    claim: str
    this_run: str
    verdict: str
    key: str = ""
    sample: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def as_dict(self) -> dict[str, str]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Inputs:
    """The data a run reads, loaded once, and the sha256 of each input.

    `Experiment.inputs` loads them (downloading once, reading files once) and the runner passes
    ``data`` on to `Experiment.run`, so that nothing is read or hashed twice.

    Attributes:
        sha256: ``{name: hex sha256}`` of each input, for the manifest.
        data: What ``run`` reads (a text source, sentences, a probe's documents and classes);
            None where the config's literal values are all it needs.

    Example:
        >>> Inputs({"text": "ab12"}).sha256
        {'text': 'ab12'}
    """

    sha256: dict[str, str]
    data: Any = None


def verdict_of(holds: bool | None, partly: bool = False) -> str:
    """The verdict word of a boolean test (None: not tested; ``partly``: partly holds).

    Example:
        >>> verdict_of(True), verdict_of(False), verdict_of(None), verdict_of(False, partly=True)
        ('holds', 'does not hold', 'not tested', 'partly holds')
    """
    if holds is None:
        return "not tested"
    if holds:
        return "holds"
    return "partly holds" if partly else "does not hold"


@dataclass(frozen=True)
class Course:
    """The course's exact settings of an experiment, for ``scripts/reproduce.py``.

    Attributes:
        model: The course's model (a GPT-2 size; needs the hub).
        overrides: Config fields the course sets differently from mechprobe's defaults.
        needs_text: Whether the experiment reads a text source (``--text`` must then be given
            when running on another model).
    """

    model: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    needs_text: bool = False


@dataclass(frozen=True)
class Experiment:
    """Everything mechprobe knows about one experiment, declared once.

    Attributes:
        name: Short name: subcommand, step directory ``OUT/<name>/``, plot module name.
        title: Heading in the report.
        help: One line for ``mechprobe --help``.
        config: The config dataclass (fields declared with `option`).
        run: ``run(config, model, reference, data) -> ExperimentResult``; ``reference`` is the
            HF ``(model, tokenizer)`` pair when ``needs_reference``, else None; ``data`` is
            `Inputs.data` (None: ``run`` loads what the config names itself).
        resolve: ``resolve(config, shape) -> config``: fill model-dependent defaults and
            validate every setting against the model's shape; raises `ConfigError` naming each
            bad setting. Cheap: runs before the model is loaded when the shape is known.
        inputs: ``inputs(config) -> Inputs``: the data the run reads (texts, classes,
            sentences), loaded once, with their sha256; may download them, so a missing file
            fails before the model is loaded.
        figures: The figures the plot module draws, in report order.
        finding: ``finding(result) -> Finding`` (None: the experiment tests no claim).
        table: ``table(result) -> str``, printed after the run.
        passed: ``passed(result) -> bool | None``: False makes the command exit 1 (parity).
        checks: ``checks(result) -> [{"check", "value", "tolerance", "passed"}, ...]``: the
            pass/fail checks the report shows as a table (parity).
        needs_reference: Whether ``run`` needs the independent HF reference.
        course: The course's settings, for the reproduce script.
        text_source: Whether its ``text`` setting names a text source (a path, URL or
            ``gutenberg:ID``) that ``mechprobe all --text`` sets.
        depth_curves: ``depth_curves(result) -> {label: (layers, values)}``: the per-layer
            curves ``mechprobe sweep`` overlays across models on relative depth.
        in_all: Whether ``mechprobe all`` and ``mechprobe sweep`` run it by default.
        reads: The step whose result it reads when its config names none (``ablate`` reads
            ``negation``): the runner runs it after that step and passes ``run`` the tuple
            ``(that step's result, that step's Inputs.data)`` as ``data``, reruns it whenever
            that step reruns, and reads ``OUT/<reads>/`` when that step is not in the run (None
            where there is none: ``run`` then computes what it reads itself).
    """

    name: str
    title: str
    help: str
    config: type
    run: Callable[..., Any]
    resolve: Callable[[Any, ModelShape], Any]
    inputs: Callable[[Any], Inputs]
    figures: tuple[Figure, ...]
    table: Callable[[Any], str]
    finding: Callable[[Any], Finding] | None = None
    passed: Callable[[Any], bool | None] | None = None
    checks: Callable[[Any], list[dict[str, Any]]] | None = None
    needs_reference: bool = False
    course: Course | None = None
    text_source: bool = False
    depth_curves: Callable[[Any], dict[str, tuple[list[int], list[float]]]] | None = None
    in_all: bool = True
    reads: str | None = None

    def figure(self, name: str) -> Figure:
        """The declared figure ``name``."""
        for f in self.figures:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} declares no figure {name!r}")


def no_inputs(config: Any) -> Inputs:
    """`Experiment.inputs` of an experiment that reads nothing beyond its config's values.

    Example:
        >>> no_inputs(None).sha256
        {}
    """
    return Inputs({})
