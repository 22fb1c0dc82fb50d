"""``mechprobe sweep``: the same steps on several models, one model in memory at a time.

Each model's run goes into ``OUT/<model>-<hash>/`` (`model_dir`) through
`mechprobe.runner.run.run_steps` (its lock, manifests and ``--resume``); every model is checked
before the first runs (`check_models`: a typo is refused at once), and a model that cannot be
loaded here (a hub model offline) is listed as skipped with a one-line reason and the others run.
Then the comparative page ``OUT/index.html`` is built from what is on disk
(`mechprobe.report.sweep`).

Example:
    >>> from mechprobe.experiments import get
    >>> res = sweep(["tiny-gpt2", "gpt2"], Path("out"), lambda: [Step(get("heads"))])
    >>> sorted(res.runs), res.skipped["gpt2"][:20]
    (['tiny-gpt2'], 'gpt2 needs the Huggi')
"""

from __future__ import annotations

import gc
import hashlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechprobe.errors import MechprobeError
from mechprobe.models.placement import Placement
from mechprobe.runner.run import RunOutcome, RunRequest, Step, run_steps


@dataclass
class SweepOutcome:
    """What a sweep did.

    Attributes:
        runs: ``{model: RunOutcome}`` of the models that ran.
        skipped: ``{model: reason}`` of the models that could not be loaded here.
        wall_s: Wall time per model, seconds (load included).
        page: The comparative page ``OUT/index.html``.
    """

    runs: dict[str, RunOutcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    page: Path = Path()


def model_source(model: str) -> str:
    """What ``model`` names in full: a local directory's absolute path, else the name itself.

    Example:
        >>> model_source("org/model")
        'org/model'
    """
    from mechprobe.models.source import resolve_model

    src = resolve_model(model)
    return str(src.repo) if src.kind == "local" else model


def model_dir(out: Path, model: str) -> Path:
    """``OUT/<name>-<hash>``: a readable folder name plus 8 hex of the model's full source.

    The hash is of `model_source`, so two models whose names read alike (``a+1`` and ``a_1``,
    ``org/model`` and ``org_model``) never share a folder.

    Example:
        >>> model_dir(Path("out"), "org/some model").as_posix()
        'out/org_some_model-bfc9d9c3'
        >>> model_dir(Path("out"), "org_some_model").name
        'org_some_model-9cd8a266'
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._-")[-64:] or "model"
    digest = hashlib.sha256(model_source(model).encode("utf-8")).hexdigest()[:8]
    return out / f"{readable}-{digest}"


def check_models(models: list[str]) -> dict[str, str]:
    """Check every model before any runs; return ``{model: reason}`` of those to skip.

    A mistyped path, or a name that is a near miss of a known model and cannot be found here,
    is bad input: it is refused at once, before the first model loads. A hub id that only
    needs a network is skipped with its reason.

    Raises:
        MechprobeError: ``--models: <model>: <why>`` for the first bad name.

    Example:
        >>> check_models(["tiny-gpt2", "tiny-gpt3"])
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: --models: tiny-gpt3: not a known model ... 'tiny-gpt2'?
    """
    from mechprobe.models.availability import unavailable
    from mechprobe.models.sources import did_you_mean, missing_path

    if len(set(models)) != len(models) or not models:
        raise MechprobeError(f"give each model once, at least one: got {', '.join(models)}")
    for model in models:  # a mistyped path is bad input, not a model to skip
        if why := missing_path(model):
            raise MechprobeError(f"--models: {model}: {why}")
    skipped = {}
    for model in models:
        reason = unavailable(model)
        if reason is None:
            continue
        if hint := did_you_mean(model).strip():
            raise MechprobeError(
                f"--models: {model}: not a known model and not found here (no network, not in "
                f"the local HuggingFace cache); {hint}"
            )
        skipped[model] = reason
    return skipped


def sweep(
    models: list[str],
    out: Path,
    steps: Callable[[], list[Step]],
    *,
    resume: bool = False,
    placement: Placement | None = None,
    png: bool | None = None,
    command: str = "mechprobe sweep (library call)",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> SweepOutcome:
    """Run ``steps()`` on each model into `model_dir`, then write the comparative page.

    Args:
        models: Model names, in page order (duplicates are an error).
        out: The sweep's output directory.
        steps: Makes a fresh list of steps for a model.
        resume: Reuse steps whose manifests match exactly.
        placement: Where each model's weights go, and their dtype (default: one device).
        png: Export PNG figures (default: when a browser is available).
        command: The command line, for the manifests.
        overwrite: Replace a model folder's run of another model (see `RunRequest`).
        log: Progress lines.
    """
    from mechprobe.report.sweep import build_sweep_page

    outcome = SweepOutcome()
    to_skip = check_models(models)
    for i, model in enumerate(models, 1):
        if model in to_skip:
            log(f"[skip] {model}: {to_skip[model]}")
            outcome.skipped[model] = to_skip[model]
            continue
        log(f"[model {i}/{len(models)}] {model}")
        t0 = time.perf_counter()
        request = RunRequest(
            model=model,
            out=model_dir(out, model),
            steps=steps(),
            resume=resume,
            placement=placement or Placement(),
            png=png,
            command=command,
            overwrite=overwrite,
        )
        outcome.runs[model] = run_steps(request, log=log)
        outcome.wall_s[model] = time.perf_counter() - t0
        gc.collect()  # the model goes before the next one loads
    outcome.page = build_sweep_page(out, models, outcome.skipped)
    return outcome


def describe_outcome(outcome: SweepOutcome) -> list[dict[str, Any]]:
    """One row per model: ran or skipped, wall time, the steps' peak memory (from manifests).

    Example:
        >>> describe_outcome(SweepOutcome(skipped={"gpt2": "no network"}))
        [{'model': 'gpt2', 'status': 'skipped: no network'}]
    """
    rows: list[dict[str, Any]] = []
    for model, run in outcome.runs.items():
        peak = max((s.manifest.get("peak_rss_mb", 0.0) for s in run.steps.values()), default=0.0)
        reused = sum(s.reused for s in run.steps.values())
        rows.append(
            {
                "model": model,
                "status": f"ran ({reused} of {len(run.steps)} steps reused)",
                "wall_s": round(outcome.wall_s[model], 1),
                "peak_rss_mb": round(peak, 1),
            }
        )
    rows += [{"model": m, "status": f"skipped: {r}"} for m, r in outcome.skipped.items()]
    return rows
