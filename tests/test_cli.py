"""The command line: one-line errors naming every bad option, exit statuses, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import pytest

from mechprobe.io import write_json
from tests.helpers import REPO, assert_one_line_error, run_cli


@pytest.mark.unit
def test_python_dash_m_works():
    res = subprocess.run(
        [sys.executable, "-m", "mechprobe", "models"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "tiny-gpt2" in res.stdout and "gemma3-270m" in res.stdout


@pytest.mark.unit
def test_argparse_errors_are_one_line():
    code, _, err = run_cli("crosscheck", "--no-such-option")
    assert_one_line_error(code, err, "--no-such-option")
    code, _, err = run_cli("no-such-command")
    assert_one_line_error(code, err, "no-such-command")


@pytest.mark.unit
def test_every_bad_option_is_reported_at_once(tiny_cli, tmp_path):
    code, _, err = run_cli(
        "negation", "--model", "tiny-gpt2", "--out", str(tmp_path), "--layers", "0,9",
        "--alpha", "2", "--seed", "-1", "--context-pre", "300", "--correction", "holm",
        "--components", "qkv,attn", "--batch-size", "x",
    )  # fmt: skip
    assert_one_line_error(
        code, err, "--layers: layer 9 is out of range (0..1)", "--alpha: alpha must be in (0, 1)",
        "--seed: seed -1 is outside [0, 2**32)", "--context-pre: a window of 300 + 1 + 10",
        "--correction: expected one of bonferroni, fdr", "--components", "--batch-size",
    )  # fmt: skip
    assert not (tmp_path / "negation").exists()


@pytest.mark.unit
def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"a": Boom()})
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "x.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.faults
def test_ctrl_c_inside_an_import_ends_at_once_and_elsewhere_raises(tmp_path):
    """The SIGINT handler of the command, called as the signal would call it: inside a module
    being imported it ends the process with the line and 130 (no exception that C++ code
    running the import could not pass on); anywhere else it raises KeyboardInterrupt."""
    (tmp_path / "slow_module.py").write_text(
        "import signal, sys\n"
        "from mechprobe.cli.main import _on_interrupt\n"
        "_on_interrupt(signal.SIGINT, sys._getframe())\n"
        "print('not reached')\n"
    )
    code = (
        "import signal, sys\n"
        "from mechprobe.cli.main import _on_interrupt\n"
        "try:\n"
        "    _on_interrupt(signal.SIGINT, sys._getframe())\n"
        "except KeyboardInterrupt:\n"
        "    print('raised')\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import slow_module\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 130 and proc.stdout == "raised\n", proc
    assert proc.stderr == "mechprobe: interrupted\n"


@pytest.mark.faults
def test_ctrl_c_at_any_moment_of_the_imports_is_130(tmp_path):
    """SIGINT at 12 moments across the imports: always one line and status 130.

    Two interpreter details made this flaky before: a Ctrl-C inside a library's class creation
    arrives as a RuntimeError caused by the KeyboardInterrupt, and one that escaped C-level code
    makes CPython end itself by SIGINT (status -2) whatever the program returns.
    """
    for i in range(12):
        delay = 0.1 + 0.2 * i
        proc = subprocess.Popen(
            [sys.executable, "-m", "mechprobe", "similarity", "--model", "tiny-gpt2", "--out",
             str(tmp_path / str(i)), "--no-png"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            continue  # finished before the signal (a fast machine)
        assert proc.returncode == 130, (delay, proc.returncode, err[-2000:])
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "mechprobe: interrupted"


@pytest.mark.unit
@pytest.mark.parametrize("when", ["imports", "load"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, when):
    """SIGINT while libraries import, or once the model loads: one line, status 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechprobe", "similarity", "--model", "tiny-gpt2", "--out",
         str(tmp_path), "--no-png"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    if when == "imports":
        time.sleep(0.4)  # python has started; torch and transformers are being imported
        first = ""
    else:
        first = proc.stderr.readline()  # "[load] tiny-gpt2": the run is under way
        assert first.startswith("[load]"), first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, first + err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "mechprobe: interrupted"
    assert not (tmp_path / "similarity").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mechprobe-tmp")]


@pytest.mark.unit
def test_ctrl_c_during_exit_handlers_is_one_line(tmp_path):
    """A SIGINT while exit handlers run (atexit) still gives the one line and status 130."""
    code = (
        "import atexit, os, signal, time, sys\n"
        "sys.argv = ['mechprobe', 'models']\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))\n"
        "from mechprobe.cli.main import entry\n"
        "entry()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ},
    )  # fmt: skip
    assert res.returncode == 130, res.stderr
    assert res.stderr.strip() == "mechprobe: interrupted"


@pytest.mark.unit
def test_all_passes_no_random_model_to_the_probe_steps(tmp_path):
    import json

    from tests.helpers import SHARED_TEXT

    text, out = SHARED_TEXT, tmp_path / "out"
    code, _, err = run_cli(
        "all", "--model", "tiny-gpt2", "--steps", "negation", "--no-png", "--no-random-model",
        "--text", str(text), "--out", str(out),
    )  # fmt: skip
    assert code == 0, err[-2000:]
    manifest = json.loads((out / "negation" / "manifest.json").read_text())
    assert manifest["config"]["no_random_model"] is True
    summary = json.loads((out / "negation" / "summary.json").read_text())
    assert "random_model" not in summary.get("timing_s", {})


@pytest.mark.unit
def test_the_command_ends_with_its_status_after_the_exit_handlers(tmp_path):
    """`entry` ends by os._exit after running the atexit handlers (no module-by-module
    teardown): the handlers' output arrives, in order, and the status is main's."""
    code = (
        "import atexit, sys\n"
        "sys.argv = ['mechprobe', 'models']\n"
        "atexit.register(lambda: print('first registered, last run', flush=True))\n"
        "atexit.register(lambda: print('handler', end=' '))\n"
        "from mechprobe.cli.main import entry\n"
        "entry()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("name ")  # the command's own output came first
    assert res.stdout.endswith("handler first registered, last run\n")
    bad = subprocess.run(
        [sys.executable, "-c", code.replace("'models'", "'models', '--bogus'")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "handler first registered" in bad.stdout


@pytest.mark.unit
def test_a_live_foreign_thread_gets_the_interpreters_own_exit():
    """With a non-daemon thread still running, the exit waits for it, as Python's would."""
    code = (
        "import sys, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(1), print('thread done', flush=True)))"
        ".start()\n"
        "from mechprobe.cli.main import _exit_now\n"
        "_exit_now(3)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and res.stdout == "thread done\n", res
