"""No silent overwrite: an output directory holding another model's run is refused.

A run writes ``OUT/<step>/`` for each of its steps, and the report puts every step directory in
OUT side by side. A run of model B into an OUT that holds model A's steps would replace them (or
sit next to them as if they were one run), so it is refused unless the caller asks for
``overwrite``; so is a ``probe`` run whose class file (or labels file) is not the one of the
probe already there. The check reads the manifests only: it costs a few milliseconds.

An entry of the wrong type where a run writes (a file named like a step, a directory named
``index.html``), or a step-named directory that mechprobe did not write (no ``manifest.json``),
is refused too (`misplaced`), so that nothing of the user's is moved or removed.

Example:
    >>> foreign_run(Path("empty-out"), "tiny-gpt2", {}) is None
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechprobe.runner.manifest import read_manifest

__all__ = ["foreign_run", "misplaced"]


def _recorded_model(manifest: dict[str, Any]) -> str | None:
    model = manifest.get("model")
    name = model.get("model") if isinstance(model, dict) else None
    return name if isinstance(name, str) else None


def _probe_data(inputs: Any) -> dict[str, Any]:
    inputs = inputs if isinstance(inputs, dict) else {}
    return {k: inputs.get(k) for k in ("classes", "labels") if k in inputs}


def _what_probe(manifest: dict[str, Any]) -> str:
    found = manifest.get("config")
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    if config.get("labels"):
        return f"the labels file {config['labels']}"
    return f"the class file {config['classes']}" if config.get("classes") else "the negation preset"


def foreign_run(out: Path, model: str, requests: dict[str, dict[str, Any]]) -> str | None:
    """What in ``out`` is not this run's to replace (one line), or None when nothing is.

    Args:
        out: The output directory.
        model: The model of this run, as named.
        requests: ``{step: request}`` of this run (`mechprobe.runner.manifest.request`).

    Returns:
        E.g. ``"out holds a run of smollm2-135m (heads, negation)"``; None when every step
        directory in ``out`` is of ``model`` (and, for ``probe``, of the same class file).
    """
    if not out.is_dir():
        return None
    others: dict[str, list[str]] = {}
    for entry in sorted(out.iterdir()):
        manifest = read_manifest(entry) if entry.is_dir() and not entry.is_symlink() else None
        if manifest is None or manifest.get("step") != entry.name:
            continue
        recorded = _recorded_model(manifest)
        if recorded is not None and recorded != model:
            others.setdefault(recorded, []).append(entry.name)
        elif entry.name == "probe" and "probe" in requests:
            new = _probe_data(requests["probe"].get("inputs"))
            if _probe_data(manifest.get("inputs")) != new:
                return f"{entry} holds a probe run on {_what_probe(manifest)}"
    if others:
        runs = "; ".join(f"{m} ({', '.join(steps)})" for m, steps in others.items())
        return f"{out} holds a run of {runs}"
    return None


def misplaced(out: Path, steps: list[str], *, overwrite: bool = False) -> str | None:
    """``<path>: <cause>`` for an entry of ``out`` a run must not replace, or None.

    Args:
        out: The output directory.
        steps: The names of the steps this run writes (``OUT/<step>/``).
        overwrite: Allow replacing a step-named directory that has no manifest.

    Example:
        >>> Path("out").mkdir()
        >>> _ = Path("out/heads").write_text("my notes")
        >>> misplaced(Path("out"), ["heads"])
        "out/heads: a file where the heads step's directory goes; move it away or choose another --out"
    """  # noqa: E501
    hint = "move it away or choose another --out"
    for name in steps:
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            kind = "a symbolic link" if path.is_symlink() else "a file"
            return f"{path}: {kind} where the {name} step's directory goes; {hint}"
        if path.is_dir() and not (path / "manifest.json").exists() and not overwrite:
            return (
                f"{path}: a directory mechprobe did not write (no manifest.json); {hint}, or give "
                "--overwrite to replace it"
            )
    report = out / "index.html"
    if report.is_symlink() or (report.exists() and not report.is_file()):
        return f"{report}: not a plain file where the report goes; {hint}"
    return None
