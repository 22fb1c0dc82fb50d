"""Fault injection through the real command: every bad input is one line and exit 2; kills resume.

Each case runs ``python -m mechprobe`` in a subprocess, as a user would. The cache-damage and
bad-server cases live in tests/test_cache.py and tests/test_download.py (marker ``faults`` too).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mechprobe.errors import MechprobeError
from mechprobe.experiments import default_steps
from tests.helpers import REPO, assert_one_line_error

pytestmark = [pytest.mark.unit, pytest.mark.faults]
LONG = "word " * 300  # 300 tokens: over tiny-gpt2's context of 256


def mechprobe(*argv, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "mechprobe", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "MECHPROBE_NO_PNG": "1", "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "long_sentences.txt").write_text(f"She gave her {LONG}.\n", encoding="utf-8")
    (root / "no_targets.txt").write_text("The cat sat on the mat. " * 200, encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    # a model directory with half of its model.safetensors, and one with pickles only
    import torch

    from mechprobe.models.sources import tiny_gpt2

    hf, tok = tiny_gpt2()
    hf.save_pretrained(root / "truncated")
    hf.config.save_pretrained(root / "pickled")
    torch.save(hf.state_dict(), root / "pickled" / "pytorch_model.bin")
    for name in ("truncated", "pickled"):
        tok.save_pretrained(root / name)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return root


CASES = [
    # (argv, fragments of the one error line); {bad} is the bad-files directory
    (["crosscheck", "--text", ""], ["--text", "empty"]),
    (["crosscheck", "--text", LONG], ["--text", "more than the model's context of 256"]),
    (["heads", "--text", LONG], ["--text", "context of 256", "truncate keeps"]),
    (["replace", "--text", LONG], ["--text", "context of 256"]),
    (["similarity", "--sentences", "{bad}/long_sentences.txt"], ["context of 256"]),
    (["negation", "--context-pre", "300"], ["--context-pre", "longer than the model's context"]),
    (["negation", "--balance", "--seed", "-1"], ["--seed: seed -1 is outside [0, 2**32)"]),
    (["replace", "--seed", "99999999999999999999999"], ["--seed", "outside [0, 2**32)"]),
    (["crosscheck", "--tolerance", "inf"], ["--tolerance", "finite"]),
    (["crosscheck", "--tolerance", "nan"], ["--tolerance", "finite"]),
    (["crosscheck", "--tolerance", "-1"], ["--tolerance", "must be in [0, inf]"]),
    (["heads", "--bandwidth", "1e-300"], ["--bandwidth", "no finite density"]),
    (["heads", "--out", ""], ["--out", "empty"]),
    (["all", "--steps", ""], ["--steps"]),
    (["all", "--steps", "heads,nope"], ["--steps"]),
    (["heads", "--layer", "-1"], ["--layer: layer -1 is out of range (0..1)"]),
    (["negation", "--layers", "-1"], ["--layers: layer -1 is out of range"]),
    (["similarity", "--layers", "-1"], ["--layers: layer -1 is out of range"]),
    (["negation", "--text", "{bad}/no_targets.txt"], ["no affirmation or negation targets"]),
    (["negation", "--text", "{bad}/empty.txt"], ["text too short"]),
    (["negation", "--text", "{bad}/missing.txt"], ["cannot read text file"]),
    (["negation", "--text", "http://127.0.0.1:9/x.txt"], ["could not download"]),
    (["negation", "--text", "ftp://example.org/x.txt"], ["only http(s)"]),
    (["heads", "--model", "{bad}/truncated"], ["model.safetensors"]),
    (["heads", "--model", "{bad}/pickled"], ["pickle"]),
    (["heads", "--model", "no-such/model-anywhere"], ["cannot load model"]),
]


@pytest.mark.parametrize(("argv", "fragments"), CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, bad_files, argv, fragments):
    argv = [a.replace("{bad}", str(bad_files)) for a in argv]
    if "--model" not in argv:
        argv += ["--model", "tiny-gpt2"]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    res = mechprobe(*argv, env={"MECHPROBE_TEXT": str(bad_files / "no_targets.txt")})
    assert_one_line_error(res.returncode, res.stderr, *fragments)
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.is_dir()]  # nothing written


@pytest.fixture(scope="module")
def clean_all(tmp_path_factory, shared_text):
    out = tmp_path_factory.mktemp("clean")
    res = mechprobe("all", "--model", "tiny-gpt2", "--out", str(out), "--text", str(shared_text))
    assert res.returncode == 0, res.stderr
    return out


def step_arrays(out, step):
    with np.load(out / step / "arrays.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_all_killed_at_several_points_then_resumed_equals_a_clean_run(
    tmp_path, clean_all, shared_text
):
    out = tmp_path / "out"
    argv = ("all", "--model", "tiny-gpt2", "--out", str(out), "--text", str(shared_text))
    # killed after computing, after writing a step's directory, and (a run without --resume
    # replacing earlier steps) between setting the old heads directory aside and the swap
    for point, resume in (
        ("negation:computed", 1),
        ("similarity:written", 1),
        ("heads:swapping", 0),
    ):
        res = mechprobe(
            *argv, *(["--resume"] if resume else []), env={"MECHPROBE_FAILPOINT": point}
        )
        assert res.returncode == -9, (point, res.stderr[-500:])  # SIGKILL at that point
    res = mechprobe(*argv, "--resume")
    assert res.returncode == 0, res.stderr
    assert "[rerun]" in res.stderr or "[reuse]" in res.stderr
    for step in default_steps():
        got, want = step_arrays(out, step), step_arrays(clean_all, step)
        assert sorted(got) == sorted(want), step
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{step}.{key}")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".mechprobe-")]
    assert not leftovers


# --- issue 20: nothing lost, nothing clobbered -------------------------------------------------

TINY = ("--model", "tiny-gpt2", "--no-png")


def tree(path):
    """Every file under ``path`` but the lock, with its bytes: equal trees mean untouched data."""
    files = (p for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".mechprobe.lock")
    return {p.relative_to(path): p.read_bytes() for p in files}


def test_start_up_cleanup_leaves_the_users_dot_directories_alone(tmp_path, tiny_cli):
    from tests.helpers import run_cli

    out = tmp_path / "work"  # an OUT that is the user's working directory
    for name in (".thesis.tmp-final", ".heads.old-draft", ".mechprobe-tmp-heads-0123456789ab"):
        (out / name).mkdir(parents=True)
        (out / name / "chapter.tex").write_text(f"user's {name}\n")
    before = tree(out)
    code, _, err = run_cli("heads", *TINY, "--out", str(out))
    assert code == 0, err
    assert "[clean]" not in err
    assert {k: v for k, v in tree(out).items() if k.parts[0] in {n.parts[0] for n in before}} == (
        before
    )
    # what a killed run leaves (temporary and set-aside directories) is still cleaned up
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".mechprobe-")) == [
        ".mechprobe-tmp-heads-0123456789ab"
    ]


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "hardlink"])
def test_a_lock_file_that_is_not_a_plain_file_is_refused_and_nothing_is_written(
    tmp_path, tiny_cli, kind
):
    from tests.helpers import run_cli

    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious results\n")
    lock = out / ".mechprobe.lock"
    make = {
        "symlink": lambda: lock.symlink_to(victim),
        "directory": lock.mkdir,
        "fifo": lambda: os.mkfifo(lock),
        "hardlink": lambda: os.link(victim, lock),
    }
    make[kind]()
    code, _, err = run_cli("heads", *TINY, "--out", str(out))
    cause = {
        "symlink": "the lock file is a symbolic link",
        "directory": "the lock file is a directory",
        "fifo": "the lock file is not a regular file",
        "hardlink": "the lock file has 2 hard links",
    }[kind]
    assert_one_line_error(code, err, f"{lock}: {cause}", "remove it")
    assert victim.read_text() == "precious results\n"
    assert not (out / "heads").exists()


def test_sweep_models_whose_names_read_alike_get_their_own_folders(tmp_path, tiny_cli):
    from mechprobe.models.sources import tiny_gpt2
    from mechprobe.runner.sweep import model_dir
    from tests.helpers import run_cli

    hf, tok = tiny_gpt2()
    models = [tmp_path / "a+1", tmp_path / "a_1"]
    for path in models:
        hf.save_pretrained(path)
        tok.save_pretrained(path)
    out = tmp_path / "out"
    code, _, err = run_cli(
        "sweep", "--models", ",".join(map(str, models)), "--experiments", "heads",
        "--out", str(out), "--no-png",
    )  # fmt: skip
    assert code == 0, err
    dirs = [model_dir(out, str(m)) for m in models]
    assert dirs[0] != dirs[1] and all("_a_1-" in d.name for d in dirs)
    for model, d in zip(models, dirs, strict=True):
        manifest = json.loads((d / "heads" / "manifest.json").read_text())
        assert manifest["model"]["model"] == str(model)


def test_sweep_refuses_a_mistyped_model_name_before_anything_runs(tmp_path, tiny_cli, monkeypatch):
    from tests.helpers import run_cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code, _, err = run_cli(
        "sweep", "--models", "tiny-gpt2,tiny-gpt3", "--experiments", "heads", "--out", str(out)
    )
    assert_one_line_error(code, err, "--models: tiny-gpt3: not a known model", "'tiny-gpt2'?")
    assert not out.exists() or not list(out.iterdir())


def test_an_out_holding_another_models_run_is_refused_unless_overwrite(tmp_path, tiny_cli):
    from mechprobe.models.sources import tiny_gpt2
    from tests.helpers import run_cli

    other = tmp_path / "other-model"
    hf, tok = tiny_gpt2()
    hf.save_pretrained(other)
    tok.save_pretrained(other)
    out = tmp_path / "out"
    assert run_cli("heads", *TINY, "--out", str(out))[0] == 0
    before = tree(out / "heads")
    for command in ("heads", "all"):
        argv = (command, "--model", str(other), "--out", str(out), "--no-png")
        if command == "all":
            argv += ("--steps", "heads")
        code, _, err = run_cli(*argv)
        assert_one_line_error(
            code, err, f"{out} holds a run of tiny-gpt2 (heads); give --overwrite to replace it"
        )
        assert tree(out / "heads") == before
    code, _, err = run_cli("heads", "--model", str(other), "--out", str(out), "--overwrite")
    assert code == 0, err
    assert f"[overwrite] {out} holds a run of tiny-gpt2 (heads)" in err
    assert json.loads((out / "heads" / "manifest.json").read_text())["model"]["model"] == str(other)


def test_a_probe_out_holding_another_class_file_is_refused(tmp_path, tiny_cli, shared_text):
    from mechprobe.runner.run import RunRequest, Step, run_steps
    from tests.helpers import run_cli

    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    rule = '[[class]]\nname = "{}"\nwords = [{}]\n'
    one.write_text(rule.format("a", '"is", "are"') + rule.format("b", '"was", "were"'))
    two.write_text(rule.format("a", '"has", "have"') + rule.format("b", '"had"'))
    out = tmp_path / "out"
    argv = ("probe", *TINY, "--out", str(out), "--text", str(shared_text), "--max-samples", "20",
            "--folds", "2")  # fmt: skip
    assert run_cli(*argv, "--classes", str(one))[0] == 0
    before = tree(out / "probe")
    code, _, err = run_cli(*argv, "--classes", str(two))
    assert_one_line_error(code, err, f"{out / 'probe'} holds a probe run on the class file {one}")
    assert tree(out / "probe") == before
    # the rule is the runner's: a library call is refused the same way
    from mechprobe.experiments import get

    config = get("probe").config(text=str(shared_text), classes=str(two), max_samples=20, folds=2)
    with pytest.raises(MechprobeError, match="holds a probe run on the class file"):
        run_steps(RunRequest("tiny-gpt2", out, [Step(get("probe"), config)], png=False))
    assert tree(out / "probe") == before


def test_weights_rewritten_in_place_with_a_restored_mtime_are_not_reused(
    tmp_path, tiny_cli, monkeypatch
):
    import time

    from mechprobe.models.sources import tiny_gpt2
    from tests.helpers import run_cli

    model = tmp_path / "local-model"
    hf, tok = tiny_gpt2()
    hf.save_pretrained(model)
    tok.save_pretrained(model)
    monkeypatch.setenv("MECHPROBE_CACHE", str(tmp_path / "cache"))  # a fresh hash memo
    time.sleep(2.1)  # older than the memo's racy window: the memo is trusted from here on
    out = tmp_path / "out"
    argv = ("heads", "--model", str(model), "--out", str(out), "--no-png")
    assert run_cli(*argv)[0] == 0
    weights = model / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as fh:  # same size, last value changed, mtime put back
        fh.seek(-4, os.SEEK_END)
        last = fh.read(4)
        fh.seek(-4, os.SEEK_END)
        fh.write(bytes(b ^ 0x40 for b in last))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    code, _, err = run_cli(*argv, "--resume")
    assert code == 0, err
    assert "[rerun] heads: model.sha256 changed" in err and "[reuse]" not in err


# --- issue 20: one line for every environmental fault -------------------------------------------


def assert_one_io_failure(code, err, *fragments):
    """An I/O failure: exit 1, one line 'mechprobe: error: <path>: <cause> (I/O failure; ...)'."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err, (code, err)
    assert lines[-1].startswith("mechprobe: error: ") and "(I/O failure;" in lines[-1], err
    assert all(line.startswith("[") for line in lines[:-1]), err
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


def bare_mechprobe(*argv, cwd, env=None, timeout=300, **kwargs):
    """`python -m mechprobe` in ``cwd`` with ``env`` replacing variables (None: removed)."""
    full = {**os.environ, "MECHPROBE_NO_PNG": "1", "HF_HUB_OFFLINE": "1"}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run(
        [sys.executable, "-m", "mechprobe", *argv], capture_output="stdout" not in kwargs,
        text=True, timeout=timeout, cwd=cwd, env=full, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("case", ["empty variable", "a file", "HOME a file"])
def test_a_cache_that_cannot_be_used_is_one_line(tmp_path, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    env = {
        "empty variable": {"MECHPROBE_CACHE": ""},
        "a file": {"MECHPROBE_CACHE": str(blocker)},
        "HOME a file": {"MECHPROBE_CACHE": None, "XDG_CACHE_HOME": None, "HOME": str(blocker)},
    }[case]
    work = tmp_path / "work"
    work.mkdir()
    res = bare_mechprobe("heads", "--model", "tiny-gpt2", "--out", "out", cwd=work, env=env)
    if case == "empty variable":
        want = ["MECHPROBE_CACHE: set but empty; unset it"]
    else:
        want = [f"{blocker}/", "cannot create the cache directory: Not a directory"]
    assert_one_line_error(res.returncode, res.stderr, *want)
    assert blocker.read_text() == "a file, not a directory\n"
    assert sorted(p.name for p in work.iterdir()) in ([], ["out"])  # no cache in the cwd
    assert not (work / "out" / "heads").exists()


@pytest.mark.parametrize("entry", ["heads is a file", "heads is not ours", "index.html is a dir"])
def test_an_out_entry_of_the_wrong_type_is_one_line_and_kept(tmp_path, tiny_cli, entry):
    from tests.helpers import run_cli

    out = tmp_path / "out"
    out.mkdir()
    if entry == "heads is a file":
        (out / "heads").write_text("my notes\n")
        want = f"{out / 'heads'}: a file where the heads step's directory goes"
    elif entry == "heads is not ours":
        (out / "heads").mkdir()
        (out / "heads" / "notes.txt").write_text("my notes\n")
        want = f"{out / 'heads'}: a directory mechprobe did not write (no manifest.json)"
    else:
        (out / "index.html").mkdir()
        (out / "index.html" / "notes.txt").write_text("my notes\n")
        want = f"{out / 'index.html'}: not a plain file where the report goes"
    before = tree(out)
    code, _, err = run_cli("heads", *TINY, "--out", str(out))
    assert_one_line_error(code, err, want, "move it away")
    assert tree(out) == before


def test_a_manifest_that_is_json_but_not_an_object_is_rerun(tmp_path, tiny_cli):
    from tests.helpers import run_cli

    out = tmp_path / "out"
    assert run_cli("heads", *TINY, "--out", str(out))[0] == 0
    (out / "heads" / "manifest.json").write_text("[1, 2, 3]\n")
    code, _, err = run_cli("heads", *TINY, "--out", str(out), "--resume")
    assert code == 0, err
    assert "[rerun] heads: no complete earlier result" in err
    assert isinstance(json.loads((out / "heads" / "manifest.json").read_text()), dict)


def test_a_file_size_limit_is_one_line_exit_1_and_earlier_results_stay(tmp_path):
    import resource
    import signal

    out = tmp_path / "out"
    assert bare_mechprobe("heads", *TINY, "--out", str(out), cwd=tmp_path).returncode == 0
    before = tree(out)

    def limit():  # 64 KB per file: the step's figures cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    res = bare_mechprobe(
        "heads", *TINY, "--out", str(out), "--layer", "0", cwd=tmp_path, preexec_fn=limit
    )
    assert_one_io_failure(res.returncode, res.stderr, f"{out}/", ": File too large")
    assert tree(out) == before


def test_a_full_disk_is_one_line_exit_1_and_earlier_results_stay(tmp_path, tiny_cli, monkeypatch):
    import errno

    import mechprobe.runner.steps
    from tests.helpers import run_cli

    out = tmp_path / "out"
    assert run_cli("heads", *TINY, "--out", str(out))[0] == 0
    before = tree(out)

    def full(path, arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mechprobe.runner.steps, "write_npz", full)
    code, _, err = run_cli("heads", *TINY, "--out", str(out), "--layer", "0")
    assert_one_io_failure(code, err, "arrays.npz: No space left on device")
    assert tree(out) == before


def test_a_full_or_closed_stdout_is_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        res = bare_mechprobe("models", cwd=tmp_path, stdout=full, stderr=subprocess.PIPE)
    assert_one_io_failure(res.returncode, res.stderr, "<stdout>: No space left on device")
    res = bare_mechprobe(
        "heads", *TINY, "--out", "out", cwd=tmp_path, preexec_fn=lambda: os.close(1)
    )
    assert_one_line_error(res.returncode, res.stderr, "<stdout>: closed; redirect it")
    assert not (tmp_path / "out").exists()


# --- issue 20: bounds and clear messages for local inputs ---------------------------------------


@pytest.mark.parametrize("option", ["--text", "--classes", "--labels"])
def test_a_device_as_a_local_input_is_one_line(tmp_path, tiny_cli, shared_text, option):
    from tests.helpers import run_cli

    argv = ["probe", *TINY, "--out", str(tmp_path / "out"), option, "/dev/zero"]
    if option == "--classes":
        argv += ["--text", str(shared_text)]
    code, _, err = run_cli(*argv)
    assert_one_line_error(code, err, "/dev/zero: ", "a device, not a file")
    assert "[load]" not in err


def test_a_local_text_over_the_cap_is_one_line(tmp_path, tiny_cli):
    from tests.helpers import run_cli

    big = tmp_path / "big.txt"
    big.write_text("It is not here, and it can be there. " * 60_000)  # 2.2 MB
    argv = ("probe", *TINY, "--out", str(tmp_path / "out"), "--text", str(big))
    code, _, err = run_cli(*argv, "--max-download-mb", "1")
    assert_one_line_error(
        code, err, f"{big}: the text file is larger than the 1 MiB cap on local inputs",
        "--max-download-mb", "MECHPROBE_MAX_INPUT_MB",
    )  # fmt: skip
    assert "[load]" not in err


def test_a_catastrophic_class_regex_is_refused_at_load_naming_the_class(
    tmp_path, tiny_cli, shared_text
):
    from tests.helpers import run_cli

    classes = tmp_path / "c.toml"
    classes.write_text(
        '[[class]]\nname = "plain"\nwords = ["is"]\n'
        '[[class]]\nname = "greedy"\nregex = "(a|aa)+z"\n'
    )
    argv = ("probe", *TINY, "--out", str(tmp_path / "out"), "--text", str(shared_text))
    code, _, err = run_cli(*argv, "--classes", str(classes), "--unit", "word")
    assert_one_line_error(
        code, err, f"{classes}: class 'greedy': the regex '(a|aa)+z' backtracks catastrophically"
    )
    assert "[load]" not in err


def test_a_class_regex_that_runs_too_long_on_a_word_is_one_line(tmp_path, tiny_cli, monkeypatch):
    import mechprobe.corpus.bounded_regex as bounded
    from tests.helpers import run_cli

    monkeypatch.setattr(bounded, "check_backtracking", lambda *a: None)  # past the check
    monkeypatch.setattr(bounded, "REGEX_TIMEOUT_S", 0.2)
    classes = tmp_path / "c.toml"
    classes.write_text(
        '[[class]]\nname = "plain"\nwords = ["is"]\n'
        '[[class]]\nname = "greedy"\nregex = "(a|aa)+z"\n'
    )
    text = tmp_path / "t.txt"
    text.write_text(("It is here. " * 30 + "a" * 60 + " is. ") * 3)
    argv = ("probe", *TINY, "--out", str(tmp_path / "out"), "--text", str(text))
    code, _, err = run_cli(*argv, "--classes", str(classes), "--unit", "word", "--context-pre",
                           "4", "--context-post", "2")  # fmt: skip
    assert_one_line_error(code, err, "class 'greedy': the regex '(a|aa)+z' ran over 0.2 s")
    assert not (tmp_path / "out" / "probe").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8-sig", "utf-32"])
def test_a_utf16_or_bom_text_is_decoded(tmp_path, shared_text, encoding):
    from mechprobe.corpus.text import load_text

    want = shared_text.read_text(encoding="utf-8")
    path = tmp_path / "t.txt"
    path.write_bytes(want.encode(encoding))
    assert load_text(str(path)).text == want


def test_a_binary_text_is_named(tmp_path, tiny_cli):
    from tests.helpers import run_cli

    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    code, _, err = run_cli("negation", *TINY, "--out", str(tmp_path / "out"), "--text", str(blob))
    assert_one_line_error(code, err, f"{blob}: the text file is binary (a NUL byte at offset 4)")


def test_jsonl_labels_with_u2028_inside_a_string_are_accepted(tmp_path):
    from mechprobe.corpus.labels import load_labels

    path = tmp_path / "l.jsonl"
    text = "It is here.\u2028It is not there."
    lines = [
        json.dumps({"text": text, "char": 3, "label": "a"}, ensure_ascii=False),
        json.dumps({"text": text, "char": 15, "label": "b"}, ensure_ascii=False),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = load_labels(path)
    assert [(r.line, r.text, r.char, r.label) for r in records] == [
        (1, text, 3, "a"),
        (2, text, 15, "b"),
    ]


# --- issue 20: deadlines for a Dask cluster -----------------------------------------------------


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers; yields its tcp:// address."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def store_run(tmp_path, shared_text, scheduler, env):
    argv = ("negation", *TINY, "--text", str(shared_text), "--max-samples", "10",
            "--out", str(tmp_path / "out"), "--store", str(tmp_path / "s.zarr"),
            "--scheduler", scheduler)  # fmt: skip
    return bare_mechprobe(*argv, cwd=tmp_path, env=env, timeout=120)


def test_a_scheduler_that_never_answers_is_one_line_with_a_hint(
    tmp_path, shared_text, silent_server
):
    pytest.importorskip("zarr")
    pytest.importorskip("distributed")
    res = store_run(tmp_path, shared_text, silent_server, {"MECHPROBE_DASK_CONNECT_S": "2"})
    assert_one_line_error(
        res.returncode, res.stderr,
        f"{silent_server}: the Dask scheduler did not answer within 2 s", "dask scheduler --port",
    )  # fmt: skip
    assert not (tmp_path / "out" / "negation").exists()


def test_a_cluster_without_workers_is_one_line_with_a_hint(tmp_path, shared_text):
    pytest.importorskip("zarr")
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        res = store_run(tmp_path, shared_text, address, {"MECHPROBE_DASK_WORKER_WAIT_S": "3"})
    assert_one_line_error(
        res.returncode, res.stderr,
        f"{address}: no Dask worker joined the scheduler within 3 s", f"dask worker {address}",
    )  # fmt: skip
    assert not (tmp_path / "out" / "negation").exists()


# --- issue 20: library inputs -------------------------------------------------------------------


def test_fit_logistic_names_string_labels_non_finite_and_overflowing_units():
    from mechprobe.stats import fit_logistic

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 4)) + y[:, None]
    with pytest.raises(MechprobeError, match=r"y must be 0/1 numbers or booleans, got dtype <U"):
        fit_logistic(x, np.where(y == 1, "negation", "affirmation"))
    bad = x.copy()
    bad[7, 2] = np.inf
    with pytest.raises(
        MechprobeError, match=r"NaN or infinite values in 1 unit\(s\), e.g. units \[2\]"
    ):
        fit_logistic(bad, y)
    huge = x.copy()
    huge[:, 1] *= 1e200
    with pytest.raises(MechprobeError, match=r"1 unit\(s\) overflow float64 .* units \[1\]"):
        fit_logistic(huge, y)
    ok = fit_logistic(x, y)  # the same data, at a sane scale, fits
    assert np.isfinite(ok.beta).all()


def test_labels_whose_every_sample_of_a_label_is_outside_the_context_are_one_line(
    tmp_path, tiny_cli
):
    from tests.helpers import run_cli

    text = "It is a long day and we will not go out because it is raining hard over the hills."
    lines = [{"text": f"{text} {i}", "token": 12, "label": "a"} for i in range(20)]
    lines += [{"text": f"{text} {i}", "token": 0, "label": "b"} for i in range(20)]
    labels = tmp_path / "l.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, _, err = run_cli("probe", *TINY, "--out", str(tmp_path / "out"), "--labels",
                           str(labels), "--context-pre", "4", "--context-post", "2")  # fmt: skip
    assert_one_line_error(
        code, err, f"{labels}: no sample left of label 'b' (all 20): each has fewer than 4 tokens"
    )
    assert not (tmp_path / "out" / "probe").exists()


# --- issue 20: a reused activation store is verified --------------------------------------------


def damage_store(url, how):
    """Change values in, delete or truncate one chunk file of the store's block 0."""
    acts = sorted(p for p in (url / "acts").rglob("*") if p.is_file() and "c" in p.parts)
    score = sorted(p for p in (url / "score").rglob("*") if p.is_file() and "c" in p.parts)
    assert acts and score, sorted(url.rglob("*"))
    if how == "values changed":
        data = bytearray(acts[0].read_bytes())
        data[64:72] = np.array([1.5, -2.5], dtype=np.float32).tobytes()
        acts[0].write_bytes(bytes(data))
    elif how == "chunk deleted":
        score[-1].unlink()
    else:
        acts[-1].write_bytes(acts[-1].read_bytes()[:100])


@pytest.mark.parametrize("how", ["values changed", "chunk deleted", "chunk truncated"])
def test_a_damaged_store_block_is_collected_again_and_equals_a_clean_run(
    tmp_path, tiny_cli, shared_text, how
):
    pytest.importorskip("zarr")
    from tests.helpers import run_cli

    url = tmp_path / "s.zarr"
    argv = ("negation", *TINY, "--text", str(shared_text), "--max-samples", "10",
            "--store", str(url))  # fmt: skip
    code, _, err = run_cli(*argv, "--out", str(tmp_path / "clean"))
    assert code == 0, err
    want = step_arrays(tmp_path / "clean", "negation")
    damage_store(url, how)
    code, _, err = run_cli(*argv, "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert f"[store] {url}: 1 of 1 blocks damaged or missing" in err, err
    assert "collecting them again" in err
    got = step_arrays(tmp_path / "again", "negation")
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    code, _, err = run_cli(*argv, "--out", str(tmp_path / "third"))  # now whole: reused as is
    assert code == 0 and "blocks damaged" not in err, err
