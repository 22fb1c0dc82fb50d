"""The verified cache of converted models (mechprobe.models.cache).

Most tests convert a tiny GGUF file (a 2-layer llama with random weights and a byte-level BPE,
written here with the ``gguf`` package) through `gguf_model_dir`, the very function smollm2-135m
and gemma3-270m go through; each test has its own ``MECHPROBE_CACHE``. One integration test
damages a copy of the real smollm2-135m cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mechprobe.models import cache as cache_mod
from mechprobe.models.cache import (
    MANIFEST,
    cache_dir,
    cached_build,
    cached_sha256,
    remove_leftovers,
    verify_dir,
)
from mechprobe.models.gguf import gguf_model_dir, smollm2_dir
from mechprobe.models.sources import _from_pretrained
from tests.helpers import REPO

IDS = torch.tensor([[3, 70, 120, 257, 200, 5]])


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: token i is the character standing for byte i."""
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def write_tiny_gguf(path: Path) -> None:
    """A 2-layer llama (d_model 32, 4 heads, 2 kv heads) as an F32 GGUF file, seed 0."""
    import gguf

    merges = ["Ġ t", "h e", "Ġt he", "Ġ a"]
    tokens = [*_byte_chars(), *(m.replace(" ", "") for m in merges), "<|endoftext|>"]
    n_vocab, d, ffn, layers, heads, kv = len(tokens), 32, 64, 2, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(d // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (n_vocab - 1) + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 1)
    w.add_eos_token_id(n_vocab - 1)
    rng = np.random.default_rng(0)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    rand("token_embd.weight", n_vocab, d)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        rand(f"blk.{i}.attn_q.weight", d, d)
        rand(f"blk.{i}.attn_k.weight", kv * d // heads, d)
        rand(f"blk.{i}.attn_v.weight", kv * d // heads, d)
        rand(f"blk.{i}.attn_output.weight", d, d)
        rand(f"blk.{i}.ffn_gate.weight", ffn, d)
        rand(f"blk.{i}.ffn_up.weight", ffn, d)
        rand(f"blk.{i}.ffn_down.weight", d, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_gguf(path)
    return path


def build_tiny(gguf: Path) -> Path:
    """The tiny model's cache directory, through the same function as smollm2-135m's."""
    return gguf_model_dir(
        "tiny-llama", hashlib.sha256(gguf.read_bytes()).hexdigest(), lambda _: gguf
    )


def logits_of(directory: Path) -> torch.Tensor:
    """Load a converted directory without any verification and run fixed ids through it."""
    hf, _ = _from_pretrained(str(directory), use_safetensors=True)
    with torch.inference_mode():
        return hf(IDS).logits


def file_hashes(directory: Path) -> dict[str, tuple[int, str]]:
    """Size and sha256 of every file but the sidecar, computed here with hashlib."""
    return {
        p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


@pytest.fixture(scope="module")
def clean_run(tiny_gguf, tmp_path_factory):
    """A clean conversion of the tiny GGUF in its own cache: file hashes and logits."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MECHPROBE_CACHE", str(tmp_path_factory.mktemp("clean-cache")))
    try:
        d = build_tiny(tiny_gguf)
        return {"hashes": file_hashes(d), "logits": logits_of(d)}
    finally:
        mp.undo()


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MECHPROBE_CACHE", str(root))
    return root


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.unit
def test_clean_conversion_records_every_file(tiny_gguf, cache_root, clean_run, caplog):
    with caplog.at_level(logging.WARNING):
        d = build_tiny(tiny_gguf)
    (line,) = warnings_of(caplog)  # a slow first conversion is announced in one line
    assert line == f"mechprobe: building tiny-llama once into {d}"
    assert d.parent == cache_root / "models"
    manifest = json.loads((d / MANIFEST).read_text())
    recorded = {k: (v["size"], v["sha256"]) for k, v in manifest["files"].items()}
    assert recorded == file_hashes(d)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(recorded)
    assert manifest["source_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    # Deterministic: a second, independent conversion holds the same bytes and numbers.
    assert file_hashes(d) == clean_run["hashes"]
    assert torch.equal(logits_of(d), clean_run["logits"])
    assert json.loads((d / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    # A warm call verifies and returns the same directory without rebuilding or warning.
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert build_tiny(tiny_gguf) == d
    assert warnings_of(caplog) == []
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in d.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _tensor_offset(path: Path, name: str) -> int:
    """Byte offset of tensor ``name``'s data in a safetensors file (parsed here by hand)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n + json.loads(raw[8 : 8 + n])[name]["data_offsets"][0]


def _damage(d: Path, how: str) -> None:
    weights = d / "model.safetensors"
    if how == "truncated":
        with open(weights, "r+b") as fh:
            fh.truncate(weights.stat().st_size // 2)
    elif how == "header corrupted":
        with open(weights, "r+b") as fh:
            fh.seek(8)
            fh.write(b"#corrupt#")
    elif how == "one tensor scaled by 3":
        state = load_file(str(weights))
        state["model.layers.0.mlp.down_proj.weight"] *= 3
        save_file(state, str(weights), metadata={"format": "pt"})
    elif how == "NaN written":
        with open(weights, "r+b") as fh:
            fh.seek(_tensor_offset(weights, "model.layers.1.self_attn.o_proj.weight") + 40)
            fh.write(np.array([np.nan], dtype=np.float32).tobytes())
    elif how == "deleted file":
        (d / "tokenizer.json").unlink()
    elif how == "broken config":
        (d / "config.json").write_text('{"model_type": "llama", ')
    elif how == "empty directory":
        shutil.rmtree(d)
        d.mkdir()
    elif how == "manifest deleted":
        (d / MANIFEST).unlink()
    elif how == "extra file":
        (d / "pytorch_model.bin").write_bytes(b"\x80\x02")
    else:  # pragma: no cover
        raise AssertionError(how)


DAMAGE = {
    "truncated": "model.safetensors has ",
    "header corrupted": "model.safetensors does not match its sha256",
    "one tensor scaled by 3": "model.safetensors does not match its sha256",
    "NaN written": "model.safetensors does not match its sha256",
    "deleted file": "tokenizer.json is missing",
    "broken config": "config.json has ",
    "empty directory": "no manifest (empty directory)",
    "manifest deleted": "no manifest",
    "extra file": "unexpected file pytorch_model.bin",
}


@pytest.mark.faults
@pytest.mark.unit
@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_cache_is_rebuilt_with_clean_numbers(how, tiny_gguf, cache_root, clean_run, caplog):
    d = build_tiny(tiny_gguf)
    _damage(d, how)
    problem = verify_dir(d)
    assert problem is not None and problem.startswith(DAMAGE[how]), problem
    if how in {"one tensor scaled by 3", "NaN written"}:
        # The damage is real: read without verification, the numbers change.
        damaged = logits_of(d)
        assert not torch.equal(damaged, clean_run["logits"])
        assert torch.isnan(damaged).any() == (how == "NaN written")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert build_tiny(tiny_gguf) == d
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "damaged" in lines[0] and problem in lines[0] and "rebuilding" in lines[0]
    assert verify_dir(d) is None
    assert file_hashes(d) == clean_run["hashes"]
    assert torch.equal(logits_of(d), clean_run["logits"])
    assert sorted(p.name for p in d.parent.iterdir()) == [f".{d.name}.lock", d.name]


@pytest.mark.faults
@pytest.mark.unit
def test_failed_build_leaves_nothing_behind(cache_root):
    dest = cache_dir("models") / "broken"

    def build(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        cached_build(dest, build, what="broken")
    assert [p.name for p in dest.parent.iterdir()] == [".broken.lock"]


@pytest.mark.faults
@pytest.mark.unit
def test_killed_conversion_leftover_is_removed(cache_root, caplog):
    dest = cache_root / "models" / "slow"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from mechprobe.models.cache import cached_build

        def build(tmp):
            (tmp / "part.safetensors").write_bytes(b"x" * 1000)
            time.sleep(120)

        cached_build(Path({str(dest)!r}), build, what="slow")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list(dest.parent.glob(".slow.tmp-*/part.safetensors")):
            assert proc.poll() is None and time.monotonic() < deadline, "build did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (leftover,) = dest.parent.glob(".slow.tmp-*")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cached_build(dest, lambda t: (t / "ok.txt").write_text("ok"), what="slow")
    assert not leftover.exists()
    assert (dest / "ok.txt").read_text() == "ok" and verify_dir(dest) is None
    assert any(str(leftover) in m and "interrupted" in m for m in warnings_of(caplog))


@pytest.mark.unit
def test_leftover_of_a_running_build_is_kept(tmp_path):
    busy = tmp_path / ".busy.tmp-abcd1234"
    stale = tmp_path / ".stale.tmp-abcd1234"
    busy.mkdir()
    stale.mkdir()
    with cache_mod._lock(tmp_path / ".busy.lock") as held:  # another build of "busy" is running
        assert held
        assert remove_leftovers(tmp_path) == [stale]
        assert busy.is_dir() and not stale.exists()
    assert remove_leftovers(tmp_path) == [busy]


@pytest.mark.unit
def test_cached_sha256_follows_changes(tmp_path, cache_root):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    assert cached_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    memo = json.loads((cache_root / "hashes" / "sha256.json").read_text())
    assert memo[str(f.resolve())][2] == hashlib.sha256(b"a" * 1000).hexdigest()
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size, changed in place
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cached_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()


@pytest.mark.faults
@pytest.mark.integration
def test_damaged_smollm2_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    """The real model: a copy of the user's cache, one tensor scaled by 3, rebuilt from the GGUF."""
    real = smollm2_dir()  # the user's cache, verified; only read here
    clean_hashes = file_hashes(real)
    clean_logits = logits_of(real)
    monkeypatch.setenv("MECHPROBE_CACHE", str(tmp_path / "cache"))
    copy = cache_dir("models") / real.name
    shutil.copytree(real, copy)
    assert smollm2_dir() == copy  # the copy verifies, nothing is rebuilt
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    state["model.layers.3.mlp.down_proj.weight"] *= 3
    save_file(state, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == clean_hashes["model.safetensors"][0]
    assert not torch.equal(logits_of(copy), clean_logits)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert smollm2_dir() == copy
    (line,) = warnings_of(caplog)
    assert "smollm2-135m" in line and "model.safetensors does not match its sha256" in line
    assert file_hashes(copy) == clean_hashes
    assert torch.equal(logits_of(copy), clean_logits)


@pytest.mark.unit
def test_gpt2_tokenizer_cache_goes_through_the_same_checks(cache_root, caplog):
    from mechprobe.models.sources import gpt2_tokenizer

    with caplog.at_level(logging.WARNING):
        assert gpt2_tokenizer()("Hello world").input_ids == [15496, 995]
    assert warnings_of(caplog) == []  # a first build of a tokenizer is quiet (info level)
    (d,) = (cache_root / "tokenizers").glob("gpt2-*")
    clean = file_hashes(d)
    (d / "tokenizer.json").write_text("{}")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert gpt2_tokenizer()("Hello world").input_ids == [15496, 995]
    (line,) = warnings_of(caplog)
    assert "GPT-2 tokenizer" in line and "tokenizer.json has 2 bytes" in line
    assert file_hashes(d) == clean
