import subprocess
import sys

import pytest

from mechprobe.io import write_json
from tests.helpers import assert_one_line_error, run_cli


@pytest.mark.unit
def test_python_dash_m_works():
    res = subprocess.run(
        [sys.executable, "-m", "mechprobe", "models"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "tiny-gpt2" in res.stdout


@pytest.mark.unit
def test_argparse_errors_are_one_line():
    code, _, err = run_cli("crosscheck", "--no-such-option")
    assert_one_line_error(code, err, "--no-such-option")
    code, _, err = run_cli("no-such-command")
    assert_one_line_error(code, err, "no-such-command")


@pytest.mark.unit
def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"a": Boom()})
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "x.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
