"""The README's Python API example, run as a doctest from a folder beside ``../shared``."""

from __future__ import annotations

import doctest
import os
import re

import pytest

from tests.helpers import REPO, SHARED_TEXT

pytestmark = pytest.mark.unit


def test_readme_python_api_example_runs(tmp_path):
    if not SHARED_TEXT.is_file():
        pytest.skip(f"no shared text at {SHARED_TEXT}")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if ">>>" in b]
    assert blocks, "the README has no doctest block"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "pg32154.txt").symlink_to(SHARED_TEXT.resolve())
    work = tmp_path / "work"
    work.mkdir()
    parser = doctest.DocTestParser()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for i, block in enumerate(blocks):
            test = parser.get_doctest(block, {}, f"README block {i}", "README.md", 0)
            runner.run(test)
    finally:
        os.chdir(cwd)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} README example(s) failed (see the output above)"
    assert result.attempted >= 10
