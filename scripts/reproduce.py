"""Reproduce the course's experiments with the course's exact settings, read from their specs.

Every experiment in the registry that declares the course's settings runs with them: E1 negation
on gpt2-large (The Variable Man, gutenberg:32154, all layers), E2 heads on gpt2 (layer 6), E3
similarity on gpt2-xl, E4 replace on gpt2 (layers 3, 5, 8). The course's models come from the
HuggingFace hub; without a network the script stops with one line, unless --model (and, for an
experiment that reads a text, --text) name what to run instead. It never falls back silently.

Usage:
    python scripts/reproduce.py                       # every experiment, the course's models
    python scripts/reproduce.py heads replace         # some of them
    python scripts/reproduce.py --model smollm2-135m --text ../shared/data/pg32154.txt

Results go to OUT/<model>/<experiment>/ (default OUT: reproduce-out), each with its report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def plan(names: list[str], model: str | None, text: str | None) -> dict[str, list]:
    """``{model: [Step, ...]}`` with the course's settings; raises MechprobeError when unsure."""
    from mechprobe.errors import MechprobeError
    from mechprobe.experiments import registry
    from mechprobe.runner.run import Step

    specs = registry()
    unknown = [n for n in names if n not in specs or specs[n].course is None]
    if unknown:
        course = [n for n, s in specs.items() if s.course is not None]
        raise MechprobeError(f"no course settings for {', '.join(unknown)} (choose {course})")
    by_model: dict[str, list] = {}
    for name in names or [n for n, s in specs.items() if s.course is not None]:
        spec = specs[name]
        course = spec.course
        settings = dict(course.overrides)
        if course.needs_text:
            if model is not None and text is None:
                raise MechprobeError(
                    f"{name} reads a text: with --model give --text too (the course's text is "
                    "gutenberg:32154, The Variable Man; e.g. --text ../shared/data/pg32154.txt)"
                )
            settings["text"] = text or "gutenberg:32154"
        fields = {f.name for f in dataclasses.fields(spec.config)}
        config = spec.config(**{k: v for k, v in settings.items() if k in fields})
        by_model.setdefault(model or course.model, []).append(Step(spec, config))
    return by_model


def _in_local_cache(model: str) -> bool:
    """Whether a hub model's files are in the local HuggingFace cache (no network needed)."""
    from huggingface_hub import try_to_load_from_cache

    from mechprobe.models.registry import KNOWN_MODELS

    known = KNOWN_MODELS.get(model)
    if known is not None and known.offline:
        return True
    repo = known.hub_id if known and known.hub_id else model
    return Path(model).is_dir() or isinstance(try_to_load_from_cache(repo, "config.json"), str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", help="experiments (default: every one)")
    parser.add_argument("--model", default=None, help="run on this model instead of the course's")
    parser.add_argument("--text", default=None, help="the negation text (path, URL, gutenberg:ID)")
    parser.add_argument("--out", default="reproduce-out", help="output root (reproduce-out)")
    parser.add_argument("--device", default=None, help="torch device")
    args = parser.parse_args(argv)

    from mechprobe.errors import MechprobeError
    from mechprobe.models import static_shape
    from mechprobe.models.placement import Placement
    from mechprobe.models.sources import hub_reachable
    from mechprobe.runner.run import RunRequest, resolve_steps, run_steps

    try:
        by_model = plan(args.experiments, args.model, args.text)
        missing = [m for m in by_model if not _in_local_cache(m)]
        if missing and args.model is None and not hub_reachable():
            raise MechprobeError(
                f"the course's models ({', '.join(by_model)}) need the HuggingFace hub, which "
                "cannot be reached and they are not in the local HuggingFace cache; to run the "
                "course's settings on an offline model give "
                "--model smollm2-135m --text ../shared/data/pg32154.txt"
            )
        for model, steps in by_model.items():
            shape = static_shape(model)
            if shape is not None:
                resolve_steps(steps, shape, prefix=lambda s: f"{s.spec.name}.")
        for model, steps in by_model.items():
            request = RunRequest(
                model=model,
                out=Path(args.out) / model,
                steps=steps,
                placement=Placement(device=args.device),
                command=" ".join(["python", "scripts/reproduce.py", *sys.argv[1:]]),
            )
            outcome = run_steps(request)
            for name, done in outcome.steps.items():
                spec = next(s.spec for s in steps if s.spec.name == name)
                print(f"== {name} on {model} (the course's settings)")
                print(spec.table(done.result))
                if spec.finding is not None:
                    f = spec.finding(done.result)
                    print(f"course finding: {f.verdict} ({f.key})")
            print(f"report: {outcome.report}")
    except MechprobeError as exc:
        print(f"reproduce: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reproduce: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
