"""Every tutorial of the documentation site runs: a cell that raises fails the suite.

The tutorials are jupytext ``.py`` notebooks under ``docs/tutorials/``; the site's build executes
them too (mkdocs-jupyter, ``mkdocs build --strict`` in ``.ci/run``). Here each is executed in a
fresh kernel with nbclient, and a few of its printed results are checked.
"""

from __future__ import annotations

import pytest

from tests.helpers import REPO, SHARED_TEXT

TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.py"))


def _outputs(nb) -> str:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("name") == "stdout":
                texts.append(out["text"])
            elif "text/plain" in out.get("data", {}):
                texts.append(out["data"]["text/plain"])
    return "\n".join(texts)


#: A line each tutorial prints, by file name: the page shows what it claims to show.
EXPECTED = {
    "probe_your_classes.py": "<probe on smollm2-135m: 75 present, 80 past samples",
    "probe_to_cause.py": "zero ablation of 16 held-out samples, 50 random sets",
    "reproducing_the_course.py": "course: Unit-by-unit cosines of Q/K/V",
    "scaling_out.py": "same betas: True | same p-values: True",
}


def test_every_tutorial_is_in_the_site_and_checked_here():
    names = {p.name for p in TUTORIALS}
    assert names == set(EXPECTED)
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert all(f"tutorials/{n}" in nav for n in names)


@pytest.mark.integration
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_executes(path):
    if not SHARED_TEXT.is_file():
        pytest.skip(f"no shared text at {SHARED_TEXT}")
    jupytext = pytest.importorskip("jupytext", reason="the docs extra: pip install -e '.[docs]'")
    nbclient = pytest.importorskip("nbclient", reason="the docs extra: pip install -e '.[docs]'")
    nb = jupytext.read(path)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()  # raises on error
    assert EXPECTED[path.name] in _outputs(nb)
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    if path.name != "scaling_out.py":  # every other tutorial shows a figure inline
        assert any("plotly-graph-div" in o["data"]["text/html"] for o in html), path.name
