"""The package's shape: layers pointing one way, small modules, complete specs, fast help."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import subprocess
import sys

import pytest

from mechprobe.experiments import registry
from mechprobe.experiments.spec import cli_options
from tests.helpers import REPO, run_cli

#: The layers, bottom first, as the layout section of docs/concepts/architecture.md lists them.
LAYERS = (
    ("errors", "validate", "io", "faults", "models", "stats", "data", "store"),
    ("units", "hooks", "corpus"),
    ("activations", "reference", "interventions", "collect_store"),
    ("experiments",),
    ("runner", "report", "plots"),
    ("cli", "__main__", "api"),
)


def layer_of(module: str) -> int:
    """The layer of ``mechprobe.<part>...``; the package itself (lazy exports) sits at the top."""
    parts = module.split(".")
    if parts == ["mechprobe"]:
        return len(LAYERS) - 1
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and the docs' layout")


def module_name(path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path, name: str) -> list[str]:
    """Every mechprobe module ``path`` imports, at top level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{a.name}" for a in node.names]  # submodule imports
    return [m for m in found if m == "mechprobe" or m.startswith("mechprobe.")]


def package_files():
    return sorted((REPO / "mechprobe").rglob("*.py"))


@pytest.mark.unit
def test_no_module_imports_a_higher_layer():
    wrong = []
    for path in package_files():
        name = module_name(path)
        mine = layer_of(name)
        for target in imported_modules(path, name):
            try:
                theirs = layer_of(target)
            except AssertionError:
                continue  # an attribute imported from a package (from mechprobe.x import f)
            if theirs > mine:
                wrong.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.unit
def test_the_layer_check_catches_a_wrong_import(tmp_path):
    """The parser above finds an import inside a function: the check can fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mechprobe.report import build_report\n")
    assert imported_modules(bad, "mechprobe.stats.bad")[0] == "mechprobe.report"
    assert layer_of("mechprobe.report") > layer_of("mechprobe.stats.bad")


@pytest.mark.unit
def test_docs_name_the_layers_in_order():
    """The documentation's architecture page lists the layers in order; the README links it."""
    page = (REPO / "docs" / "concepts" / "architecture.md").read_text(encoding="utf-8")
    layout = page.split("## Layout", 1)[1].split("\n## ", 1)[0]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/concepts/architecture.md#layout" in readme.split("## Layout", 1)[1]
    headers = (
        "models / stats / io",
        "units / hooks / corpus",
        "activations / reference / interventions",
        "experiments",
        "runner / report / plots",
        "cli / api / scripts",
    )
    positions = [layout.find(h) for h in headers]
    assert -1 not in positions and positions == sorted(positions), positions
    for names in LAYERS:  # every package part is named in the layout
        for name in names:
            assert name.startswith("__") or name in layout, name


@pytest.mark.unit
def test_help_and_models_import_neither_torch_nor_transformers():
    code = (
        "import sys, io, contextlib\n"
        "from mechprobe.cli.main import main\n"
        "for argv in (['--help'], ['models'], ['negation', '--help'], ['heads', '--help'],"
        " ['all', '--help'], ['similarity', '--help'], ['replace', '--help'],"
        " ['crosscheck', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'plotly')"
        " if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


@pytest.mark.unit
def test_every_spec_is_complete_and_consistent():
    for name, spec in registry().items():
        assert spec.name == name
        fields = {f.name for f in dataclasses.fields(spec.config)}
        assert {o.name for o in cli_options(spec.config)} <= fields
        assert all(f.caption.endswith(".") and len(f.caption) > 40 for f in spec.figures), name
        assert len({f.name for f in spec.figures}) == len(spec.figures)
        plots = importlib.import_module(f"mechprobe.plots.{name}")
        assert callable(plots.figures), name


@pytest.mark.unit
@pytest.mark.parametrize("name", list(registry()))
def test_every_subcommand_runs_with_its_defaults_on_tiny_gpt2(
    tmp_path, tiny_cli, shared_text, name, monkeypatch
):
    monkeypatch.setenv("MECHPROBE_TEXT", str(shared_text))  # the negation text, offline
    code, out, err = run_cli(name, "--model", "tiny-gpt2", "--out", str(tmp_path))
    assert code == 0, err
    step = tmp_path / name
    manifest = json.loads((step / "manifest.json").read_text())
    assert manifest["model"]["model"] == "tiny-gpt2" and manifest["step"] == name
    drawn = json.loads((step / "figures" / "index.json").read_text())
    spec = registry()[name]
    assert [f["name"] for f in drawn] == [f.name for f in spec.figures]
    for f in drawn:
        assert not f["drawn"] or (step / "figures" / f"{f['name']}.json").is_file()
    assert (tmp_path / "index.html").is_file() and "report:" in out
