import time

import pytest
import torch

from mechprobe.models import load_model, load_reference, model_shape
from mechprobe.models.registry import KNOWN_MODELS
from tests.helpers import assert_one_line_error, run_cli


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
    reg = KNOWN_MODELS["tiny-gpt2"].shape
    assert (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.d_head, s.d_mlp) == tuple(
        reg[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp")
    )


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
    code, _, err = run_cli("crosscheck", "--model", "gpt2")
    assert_one_line_error(code, err, "gpt2", "smollm2-135m", "local directory")
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
    code, _, err = run_cli("crosscheck", "--model", str(tmp_path))
    assert_one_line_error(code, err, "does not hold a loadable HuggingFace model")


@pytest.mark.unit
def test_models_command_lists_names_and_shapes():
    code, out, _ = run_cli("models")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("smollm2-135m"))
    assert line.split()[1:8] == ["yes", "30", "576", "9", "3", "64", "1536"]
    assert any(x.startswith("gpt2-xl") and x.split()[1] == "no" for x in out.splitlines())


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
    assert model_shape(model).n_layers == KNOWN_MODELS[name].shape["n_layers"]
