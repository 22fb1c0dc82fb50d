"""Run experiment steps on one model into an output directory, and rebuild its report.

The order of a run, so that bad input fails before anything is computed:

1. the output directory is created, checked writable and locked (a second run exits at once);
   debris of a killed run (temporary step directories) is cleaned up;
2. every step's settings are resolved against the model's shape (known without loading for the
   registry's models and local directories) and every invalid setting is reported at once;
3. every step's inputs are loaded and hashed (a missing text file fails here);
4. with ``resume``, a step whose manifest matches the request exactly is reused, and every other
   step says in one line why it runs again;
5. the model (and the HF reference, if a step needs it) is loaded once, and each remaining step
   runs and is written as a whole with its manifest;
6. the report is rebuilt from what is on disk.

Example:
    >>> from mechprobe.experiments import get
    >>> outcome = run_steps(RunRequest("tiny-gpt2", Path("out"), [Step(get("heads"))]))
    >>> outcome.steps["heads"].reused, outcome.report.name
    (False, 'index.html')
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechprobe.errors import ConfigError
from mechprobe.experiments.result import ExperimentResult
from mechprobe.experiments.spec import Experiment
from mechprobe.models.placement import Placement
from mechprobe.models.source import ModelSource


@dataclass
class Step:
    """One experiment to run, with its settings as asked for (None: the defaults).

    Attributes:
        spec: The experiment.
        config: Its config (an instance of ``spec.config``); None for the defaults.
        resolved: The config already resolved against the model's shape by the caller (the
            CLI checks every setting before the run); None: the runner resolves it.
    """

    spec: Experiment
    config: Any = None
    resolved: Any = None

    def requested(self) -> Any:
        """The config as asked for."""
        return self.config if self.config is not None else self.spec.config()


@dataclass
class RunRequest:
    """A run: which model, where, which steps.

    Attributes:
        model: Model name (see ``mechprobe models``), hub id or local directory, or the
            `mechprobe.models.source.ModelSource` the caller resolved it to.
        out: The output directory.
        steps: The steps, in order.
        resume: Reuse steps whose manifest matches the request exactly.
        placement: The device (None: CUDA if available, else CPU) or device map, and dtype.
        png: Export PNG figures (None: when a browser is available).
        command: The command line, recorded in the manifests and the lock.
        overwrite: Replace what OUT holds of another model (or, for ``probe``, of another class
            file); without it such an OUT is refused (`mechprobe.runner.overwrite`).
    """

    model: str | ModelSource
    out: Path
    steps: list[Step]
    resume: bool = False
    placement: Placement = field(default_factory=Placement)
    png: bool | None = None
    command: str = "mechprobe (library call)"
    overwrite: bool = False


@dataclass
class StepOutcome:
    """What happened to one step.

    Attributes:
        path: Its directory.
        reused: Whether an earlier result was reused (``--resume``).
        reason: Why it ran (with ``resume``), or why it was reused.
        result: The result (loaded from disk when reused).
        manifest: Its manifest.
    """

    path: Path
    reused: bool
    reason: str
    result: ExperimentResult
    manifest: dict[str, Any]


@dataclass
class RunOutcome:
    """The steps of a run and the report.

    Attributes:
        steps: ``{name: StepOutcome}`` in run order.
        report: Path of ``OUT/index.html``.
        timings: Wall time per phase (``load`` and each step run), seconds.
    """

    steps: dict[str, StepOutcome] = field(default_factory=dict)
    report: Path = Path()
    timings: dict[str, float] = field(default_factory=dict)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_steps(
    steps: list[Step], shape: Any, *, prefix: Callable[[Step], str] | None = None
) -> dict[str, Any]:
    """Resolve every step's config against ``shape``; raise one `ConfigError` for all problems.

    Args:
        steps: The steps.
        shape: The model's `ModelShape`.
        prefix: Names each problem's setting for a step (default: ``"<step>.<setting>"`` when
            there are several steps, the setting alone for one).

    Example:
        >>> from mechprobe.experiments import get
        >>> from mechprobe.models import static_shape
        >>> cfg = resolve_steps([Step(get("heads"))], static_shape("tiny-gpt2"))
        >>> cfg["heads"].layer
        1
    """
    resolved, problems = {}, []
    for step in steps:
        try:
            resolved[step.spec.name] = step.spec.resolve(step.requested(), shape)
        except ConfigError as exc:
            name = prefix or (lambda s: f"{s.spec.name}." if len(steps) > 1 else "")
            problems += [(f"{name(step)}{n}", m) for n, m in exc.problems]
    if problems:
        raise ConfigError(problems)
    return resolved


def run_steps(request: RunRequest, *, log: Callable[[str], None] = _log) -> RunOutcome:
    """Run ``request`` (see the module docstring for the order of things).

    Args:
        request: The run.
        log: Where progress lines go (default: stderr).

    Returns:
        What each step did, and the report's path.

    Raises:
        MechprobeError: Bad settings or inputs, a held or unwritable output directory, a model
            that cannot be loaded.
    """
    from mechprobe.io import recover_directories
    from mechprobe.models.source import resolve_model
    from mechprobe.plots.export import png_session
    from mechprobe.runner.lock import out_lock
    from mechprobe.runner.manifest import mismatch, read_manifest
    from mechprobe.runner.manifest import request as make_request
    from mechprobe.runner.steps import load_result, verify_step

    outcome = RunOutcome()
    with out_lock(request.out, request.command) as out:
        for line in recover_directories(out):
            log(f"[clean] {line} (left by an interrupted run)")
        source = resolve_model(request.model)  # classified once, passed on
        shape = source.shape
        resolved = _resolved(request.steps, shape)
        model_id = source.identity
        device = request.placement.label(_device_type(request.placement))
        requests, todo, data = {}, [], {}
        for step in request.steps:
            name = step.spec.name
            loaded = step.spec.inputs(step.requested())
            data[name] = loaded.data
            requests[name] = make_request(
                name, model_id, dataclasses.asdict(step.requested()), loaded.sha256, device
            )
            manifest = read_manifest(out / name)
            why = mismatch(manifest, requests[name]) if request.resume else "not resuming"
            if why is None:
                why = verify_step(out / name, manifest)
            if why is None:
                log(f"[reuse] {name}: an earlier result answers this request exactly")
                outcome.steps[name] = StepOutcome(
                    out / name, True, "manifest matches", load_result(out / name), manifest or {}
                )
            else:
                if request.resume:
                    log(f"[rerun] {name}: {why}")
                todo.append(step)
        _refuse_foreign(out, request, requests, log)
        todo = _with_readers(request.steps, todo, log)
        if todo:
            model, reference, loaded_shape = _load(request, source, todo, outcome, log)
            if resolved is None:
                resolved = resolve_steps(request.steps, loaded_shape)
            # one browser for all the run's PNGs; each step is written while the next computes
            with png_session(request.png), StepWriter() as writer:
                for i, step in enumerate(todo, 1):
                    name = step.spec.name
                    log(f"[{i}/{len(todo)}] {name}")
                    step_data = data[name]
                    if step_data is None and step.spec.reads is not None:
                        step_data = _upstream(out, step.spec.reads, outcome, data)
                    outcome.steps[name] = _run_one(
                        out,
                        step,
                        resolved[name],
                        (model, reference, step_data),
                        requests[name],
                        request,
                        writer,
                    )
                    outcome.timings[name] = outcome.steps[name].manifest["wall_s"]
                    log(f"[{i}/{len(todo)}] {name}: done in {outcome.timings[name]:.1f} s")
            for done in outcome.steps.values():  # the manifests as written (file digests)
                if not done.reused:
                    done.manifest = read_manifest(done.path) or done.manifest
        outcome.steps = {s.spec.name: outcome.steps[s.spec.name] for s in request.steps}
        from mechprobe.report import build_report

        outcome.report = build_report(out)
    return outcome


def _with_readers(steps: list[Step], todo: list[Step], log: Callable[[str], None]) -> list[Step]:
    """``todo`` plus every step that reads (`Experiment.reads`) a step that runs, in run order."""
    names = {s.spec.name for s in todo}
    for step in steps:
        reads = step.spec.reads
        if (
            reads in names
            and step.spec.name not in names
            and getattr(step.requested(), "source", None) is None
        ):
            log(f"[rerun] {step.spec.name}: it reads {reads}, which runs again")
            names.add(step.spec.name)
    return [s for s in steps if s.spec.name in names]


def _upstream(out: Path, reads: str, outcome: RunOutcome, data: dict[str, Any]) -> Any:
    """``(result, inputs' data)`` of the step ``reads``: of this run, else from ``OUT/<reads>``.

    None where neither exists.
    """
    if reads in outcome.steps:
        return (outcome.steps[reads].result, data.get(reads))
    from mechprobe.runner.manifest import read_manifest
    from mechprobe.runner.steps import load_result

    path = out / reads
    if read_manifest(path) is None:
        return None  # the step runs what it reads itself
    return (load_result(path), None)


def _refuse_foreign(
    out: Path, request: RunRequest, requests: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Refuse wrong entries in OUT, and another model's run unless ``request.overwrite``."""
    from mechprobe.errors import MechprobeError
    from mechprobe.runner.overwrite import foreign_run, misplaced

    if bad := misplaced(out, list(requests), overwrite=request.overwrite):
        raise MechprobeError(bad)
    from mechprobe.models.source import resolve_model

    if (what := foreign_run(out, resolve_model(request.model).name, requests)) is None:
        return
    if not request.overwrite:
        raise MechprobeError(f"{what}; give --overwrite to replace it, or choose another --out")
    log(f"[overwrite] {what}")


def _device_type(placement: Placement) -> str:
    if placement.device is not None:
        return str(placement.device).split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolved(steps: list[Step], shape: Any) -> dict[str, Any] | None:
    """The steps' configs resolved: as the caller resolved them, or now against ``shape``."""
    if all(s.resolved is not None for s in steps):
        return {s.spec.name: s.resolved for s in steps}
    return resolve_steps(steps, shape) if shape is not None else None


def _load(
    request: RunRequest,
    source: Any,
    todo: list[Step],
    outcome: RunOutcome,
    log: Callable[[str], None],
) -> tuple[Any, Any, Any]:
    from mechprobe.models import load_model, load_reference, model_shape

    t0 = time.perf_counter()
    log(f"[load] {source.name}")
    model = load_model(source, placement=request.placement)
    reference = None
    if any(s.spec.needs_reference for s in todo):
        reference = load_reference(source, placement=request.placement)
    outcome.timings["load"] = time.perf_counter() - t0
    return model, reference, model_shape(model)


def _run_one(
    out: Path,
    step: Step,
    config: Any,
    loaded: tuple[Any, Any, Any],
    req: dict[str, Any],
    request: RunRequest,
    writer: StepWriter,
) -> StepOutcome:
    """Run one step through `mechprobe.experiments.execute` (the library's path), write it.

    The step is written in the background by ``writer`` (`StepWriter`); the outcome's manifest
    lacks the files' digests until the caller reads it back.
    """
    from mechprobe.faults import failpoint
    from mechprobe.plots import captions_of, figures_of
    from mechprobe.runner.execute import execute, step_manifest
    from mechprobe.runner.steps import write_step

    model, reference, data = loaded
    run = execute(step.spec, config, model, reference, data)
    figures = figures_of(run.result)
    writer.wait()  # the step before is on disk before this one counts as computed
    failpoint(f"{step.spec.name}:computed")
    manifest = step_manifest(run, req, request.command)
    writer.start(
        lambda: write_step(
            out,
            step.spec,
            run.result,
            figures,
            manifest,
            png=request.png,
            captions=captions_of(run.result),
        )
    )
    return StepOutcome(out / step.spec.name, False, "ran", run.result, manifest)


class StepWriter:
    """Writes one step directory in a background thread while the next step computes.

    Writing a step is mostly waiting for the browser that draws its PNGs (0.5 s a figure);
    the next step's computation need not wait for it. At most one write is in flight:
    `start` is called only after `wait`, which the runner calls before the next step counts
    as computed, so the order on disk is the order of the steps, and a crash (or a
    ``<step>:computed`` failpoint) after step N+1's computation finds step N complete. Leaving
    the context waits for the last write, also on an error or an interrupt, so that nothing
    computed is lost; an error of the write is raised by `wait`.

    Example:
        >>> with StepWriter() as writer:
        ...     writer.start(lambda: None)
        ...     writer.wait()
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechprobe-write")
        self._pending: Future[Any] | None = None

    def start(self, write: Callable[[], Any]) -> None:
        """Run ``write`` in the background (after the previous write: call `wait` first)."""
        if self._pending is not None:
            raise RuntimeError("a step is still being written: wait() first")
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> StepWriter:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                self.wait()
            else:  # the run failed: finish writing what was computed, keep the first error
                with contextlib.suppress(Exception):
                    self.wait()
        finally:
            self._pool.shutdown(wait=True)
