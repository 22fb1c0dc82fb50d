"""Run a parsed ``mechprobe`` command: settings from the options, then the runner.

Every option of a command is parsed, then checked against the model's shape, and every problem
is reported in one line naming each flag (``--layers: layer 40 is out of range (0..29); --alpha:
...``) before anything is loaded or computed.

Example:
    >>> dispatch(["heads", "--model", "tiny-gpt2", "--layer", "9", "--bandwidth", "-1"])
    Traceback (most recent call last):
    ...
    mechprobe.errors.MechprobeError: --layer: layer 9 is out of range (0..1); --bandwidth: ...
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechprobe.errors import ConfigError, MechprobeError
from mechprobe.experiments import default_steps, registry
from mechprobe.experiments.spec import Experiment, cli_options


def _quiet_libraries() -> None:
    """Settings for the command's own process: quiet libraries, a tuned CPU allocator.

    The allocator setting is process-wide, so the command makes it and the library leaves it
    (`mechprobe.models.loading.tune_cpu_allocator`).
    """
    from mechprobe.models.loading import tune_cpu_allocator

    tune_cpu_allocator()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _problems_line(problems: Sequence[tuple[str, str]], flags: dict[str, str]) -> str:
    return "; ".join(f"{flags.get(name, name)}: {msg}" for name, msg in problems)


def config_from_args(spec: Experiment, args: Any) -> tuple[Any, list[tuple[str, str]]]:
    """The config from the parsed options, and the problems of the options that do not parse.

    Options that do not parse keep their default, so that the settings can still be checked
    against the model and every problem reported at once.

    Example:
        >>> from mechprobe.cli.parser import build_parser
        >>> args = build_parser().parse_args(["heads", "--layer", "x"])
        >>> config_from_args(registry()["heads"], args)[1]
        [('layer', "expected an integer, got 'x'")]
    """
    values, problems = {}, []
    for opt in cli_options(spec.config):
        raw = getattr(args, f"cfg_{opt.name}")
        if raw is None or raw is False:
            continue
        if opt.is_flag:
            values[opt.name] = True
            continue
        try:
            if opt.choices and raw not in opt.choices:
                raise MechprobeError(f"expected one of {', '.join(opt.choices)}, got {raw!r}")
            values[opt.name] = opt.parse(raw)
        except MechprobeError as exc:
            problems.append((opt.name, str(exc)))
    return spec.config(**values), problems


def _check_common(args: Any, names: Sequence[str]) -> Any:
    """Check the options every run shares; return the model's placement.

    Raises:
        MechprobeError: One line naming every bad option.
    """
    from mechprobe.models.placement import placement_from_options

    if not args.out.strip():
        raise MechprobeError("--out: the output directory is empty: give a path")
    if not getattr(args, "model", "-").strip():
        raise MechprobeError("--model: the model name is empty (see 'mechprobe models')")
    flags = {n: "--" + n.replace("_", "-") for n in ("device_map", "n_devices", "max_memory")}
    try:
        placement = placement_from_options(
            device=args.device,
            device_map=args.device_map,
            n_devices=args.n_devices,
            max_memory=args.max_memory,
            dtype=args.dtype,
        )
    except ConfigError as exc:
        raise MechprobeError(_problems_line(exc.problems, {**flags, "dtype": "--dtype"})) from exc
    if placement.mapped:
        from mechprobe.models.placement import check_devices

        try:
            check_devices(placement)
        except ConfigError as exc:
            raise MechprobeError(_problems_line(exc.problems, flags)) from exc
    parity = [n for n in names if registry()[n].needs_reference]
    if placement.dtype != "float32" and parity:
        raise MechprobeError(
            f"--dtype {placement.dtype}: {', '.join(parity)} compare against HuggingFace in "
            "float32 only; leave --dtype out, or run the other steps"
        )
    return placement


def run_experiment(spec: Experiment, args: Any, argv: Sequence[str]) -> int:
    """One experiment as a command: options, early checks, the run, its table, exit status."""
    from mechprobe.models.source import resolve_model

    flags = {o.name: o.flag for o in cli_options(spec.config)}
    config, problems = config_from_args(spec, args)
    if spec.reads is not None and getattr(config, "source", None):
        _from_step(args, argv, config.source)
    placement = _check_common(args, [spec.name])
    source = resolve_model(args.model)  # classified once; the runner uses this object
    resolved = None
    if source.shape is not None:
        try:
            resolved = spec.resolve(config, source.shape)
        except ConfigError as exc:
            bad = {name for name, _ in problems}
            problems += [(n, m) for n, m in exc.problems if n not in bad]
    if problems:
        raise MechprobeError(_problems_line(problems, flags))
    _quiet_libraries()
    from mechprobe.runner.run import RunRequest, Step, run_steps

    request = RunRequest(
        model=source,
        out=Path(args.out),
        steps=[Step(spec, config, resolved)],
        resume=args.resume,
        placement=placement,
        png=False if args.no_png else None,
        command=shlex.join(["mechprobe", *argv]),
        overwrite=args.overwrite,
    )
    try:
        outcome = run_steps(request)
    except ConfigError as exc:  # a model whose shape was known only once loaded
        raise MechprobeError(_problems_line(exc.problems, flags)) from exc
    done = outcome.steps[spec.name]
    print(f"{spec.name} {args.model}:")
    print(spec.table(done.result))
    print(f"wrote {done.path}; report: {outcome.report}")
    ok = spec.passed(done.result) if spec.passed else None
    if ok is False:
        failed = [c for c in (spec.checks(done.result) if spec.checks else []) if not c["passed"]]
        what = ", ".join(f"{c['check']}={c['value']:.3g}" for c in failed) or "a check"
        sys.stderr.write(f"mechprobe {spec.name}: FAIL: {what} above the tolerance\n")
        return 1
    return 0


def _from_step(args: Any, argv: Sequence[str], source: str) -> None:
    """``--from DIR``: the model and the output directory default to DIR's run's."""
    from mechprobe.experiments.ablate import read_probe_step
    from mechprobe.runner.manifest import read_manifest

    read_probe_step(source)  # a missing or wrong directory fails here, in one line
    given = {a.split("=")[0] for a in argv}
    model = (read_manifest(Path(source)) or {}).get("model", {})
    if "--model" not in given and isinstance(model, dict) and model.get("model"):
        args.model = str(model["model"])
    if "--out" not in given:
        args.out = str(Path(source).resolve().parent)


def _steps_of(args: Any, names: Sequence[str]) -> list[Any]:
    """Default-config steps for ``names``, with ``--text`` for the steps that read a source."""
    from mechprobe.runner.run import Step

    specs = registry()
    steps = []
    for name in names:
        spec = specs[name]
        given: dict[str, Any] = {}
        if args.text is not None and spec.text_source:
            given["text"] = args.text
        if getattr(args, "no_random_model", False) and "no_random_model" in _fields(spec.config):
            given["no_random_model"] = True
        steps.append(Step(spec, spec.config(**given) if given else None))
    return steps


def _fields(config: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(config)}


def _names(text: str | None, flag: str) -> list[str]:
    specs = registry()
    if text is None:
        return default_steps()
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names or any(n not in specs for n in names):
        raise MechprobeError(f"{flag}: expected a comma list of {', '.join(specs)}; got {text!r}")
    return names


def run_sweep(args: Any, argv: Sequence[str]) -> int:
    """``mechprobe sweep``: every experiment on every model, then the comparative page."""
    from mechprobe.models import static_shape
    from mechprobe.runner.run import Step, resolve_steps

    names = _names(args.experiments, "--experiments")
    placement = _check_common(args, names)
    models = list(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    if not models:
        raise MechprobeError("--models: give at least one model, e.g. smollm2-135m,gemma3-270m")
    if args.text is not None and not args.text.strip():
        raise MechprobeError("--text: the text source is empty")
    for model in models:  # every setting against every model's shape, before any work
        shape = static_shape(model)
        if shape is not None:

            def prefix(s: Step, m: str = model) -> str:
                return f"{m} {s.spec.name}."

            resolve_steps(_steps_of(args, names), shape, prefix=prefix)
    _quiet_libraries()
    from mechprobe.runner.sweep import describe_outcome, sweep

    outcome = sweep(
        models,
        Path(args.out),
        lambda: _steps_of(args, names),
        resume=args.resume,
        placement=placement,
        png=False if args.no_png else None,
        command=shlex.join(["mechprobe", *argv]),
        overwrite=args.overwrite,
    )
    for row in describe_outcome(outcome):
        extra = (
            f", {row['wall_s']:.1f} s, peak {row['peak_rss_mb']:,.0f} MB" if "wall_s" in row else ""
        )
        print(f"{row['model']:<16} {row['status']}{extra}")
    print(f"comparative page: {outcome.page}")
    specs = registry()
    failed = [
        f"{m} {n}"
        for m, run in outcome.runs.items()
        for n, done in run.steps.items()
        if (passed := specs[n].passed) and passed(done.result) is False
    ]
    if failed:
        sys.stderr.write(
            f"mechprobe sweep: FAIL: checks above their tolerance in {', '.join(failed)}\n"
        )
    return 1 if failed or not outcome.runs else 0


def run_all(args: Any, argv: Sequence[str]) -> int:
    """``mechprobe all``: every experiment (or ``--steps``) with its defaults, then the report."""
    specs = registry()
    names = _names(args.steps, "--steps")
    placement = _check_common(args, names)
    if args.text is not None and not args.text.strip():
        raise MechprobeError("--text: the text source is empty")
    from mechprobe.models.source import resolve_model
    from mechprobe.runner.run import RunRequest, resolve_steps

    steps = _steps_of(args, names)
    source = resolve_model(args.model)  # classified once; the runner uses this object
    if source.shape is not None:  # every setting checked now; the runner reuses the result
        resolved = resolve_steps(steps, source.shape)
        for step in steps:
            step.resolved = resolved[step.spec.name]
    _quiet_libraries()
    from mechprobe.runner.run import run_steps

    request = RunRequest(
        model=source,
        out=Path(args.out),
        steps=steps,
        resume=args.resume,
        placement=placement,
        png=False if args.no_png else None,
        command=shlex.join(["mechprobe", *argv]),
        overwrite=args.overwrite,
    )
    outcome = run_steps(request)
    failed = []
    for name, done in outcome.steps.items():
        spec = specs[name]
        finding = spec.finding(done.result) if spec.finding else None
        ok = spec.passed(done.result) if spec.passed else None
        state = "reused" if done.reused else f"{done.manifest['wall_s']:.1f} s"
        verdict = f"{finding.verdict}: {finding.key}" if finding else ""
        check = {True: "checks pass", False: "CHECKS FAIL", None: ""}[ok]
        print(f"{name:<11} {state:>9}  {'; '.join(x for x in (verdict, check) if x)}")
        if ok is False:
            failed.append(name)
    print(f"report: {outcome.report}")
    return 1 if failed else 0


def dispatch(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return its exit status."""
    from mechprobe.cli.parser import build_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "models":
        from mechprobe.cli.models import models_table

        print(models_table())
        return 0
    if args.command == "all":
        return run_all(args, argv)
    if args.command == "sweep":
        return run_sweep(args, argv)
    return run_experiment(registry()[args.command], args, argv)
