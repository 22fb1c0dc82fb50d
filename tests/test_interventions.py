"""Interventions on TransformerLens hooks, and their parity with plain HuggingFace forward hooks."""

import math

import pytest
import torch
from torch import nn

from mechprobe.errors import MechprobeError
from mechprobe.hooks import hidden_state_names
from mechprobe.interventions import (
    MLPNoise,
    ScaleOutput,
    ZeroHead,
    intervene,
    intervention_hooks,
)
from mechprobe.reference import capture_reference
from mechprobe.reference.arch import hf_arch
from mechprobe.reference.interventions import (
    describe_block_output,
    reference_interventions,
    run_reference,
    scale_block_hook,
)
from mechprobe.validate import parse_units, resolve_positions, resolve_units
from tests.helpers import assert_close, run_tl

TEXT = "My sister bought a bicycle at the market on Sunday."


def tokens_of(tok, text=TEXT):
    return torch.tensor([tok(text, add_special_tokens=False).input_ids])


def seeded_noise(n_pos, n_units, mean, std, seed):
    """Independent re-derivation of the documented noise: N(0,1) draws, float32, CPU generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.normal(0.0, 1.0, (n_pos, n_units), generator=g) * std + mean


def tl_hidden(model, tokens, ivs):
    names = hidden_state_names(model.cfg.n_layers)
    acts, logits = run_tl(model, tokens, ivs, names)
    return [acts[n] for n in names], logits


def max_diff(xs, ys):
    return max((a.double() - b.double()).abs().max().item() for a, b in zip(xs, ys, strict=True))


# --- argument handling


@pytest.mark.unit
def test_parse_units_forms():
    assert parse_units("::2") == slice(None, None, 2)
    assert parse_units("10:20") == slice(10, 20, None)
    assert parse_units("1, 5,9") == (1, 5, 9)
    assert resolve_units(parse_units("::2"), 7) == [0, 2, 4, 6]
    assert resolve_units([5, 7, 5], 8) == [5, 7]
    assert resolve_positions(None, 3) == [0, 1, 2]
    assert resolve_positions(10, 11) == [10]
    for bad in ("abc", "1:2:3:4", "1,x"):
        with pytest.raises(MechprobeError, match="is not a slice"):
            parse_units(bad)
    with pytest.raises(MechprobeError, match="step must be positive"):
        parse_units("::0")
    with pytest.raises(MechprobeError, match="never negative"):
        parse_units("-3:")
    with pytest.raises(MechprobeError, match="unit -1 is out of range"):
        resolve_units([5, -1], 8)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("iv", "fragment"),
    [
        (ZeroHead(2, 0), "layer 2 is out of range"),
        (ZeroHead(-1, 0), "layer -1 is out of range"),
        (ZeroHead(0, 4), "head 4 is out of range"),
        (ZeroHead(0, -1), "head -1 is out of range"),
        (ZeroHead(0, 0, "x"), "component"),
        (MLPNoise(5), "layer 5 is out of range"),
        (MLPNoise(0, units=slice(5, 5)), "selects no MLP unit"),
        (MLPNoise(0, units=(999,)), "MLP unit 999 is out of range"),
        (MLPNoise(0, units=()), "selects no MLP unit"),
        (MLPNoise(0, positions=()), "selects no position"),
        (MLPNoise(0, positions=(11,)), "position 11 is out of range"),
        (MLPNoise(0, std=-1.0), "noise std must be in"),
        (MLPNoise(0, mean=math.inf), "noise mean must be a finite number"),
        (MLPNoise(0, seed=-1), "seed -1 is outside"),
        (ScaleOutput(0, math.nan), "factor must be a finite number"),
        (ScaleOutput(0, math.inf), "factor must be a finite number"),
        (ScaleOutput(7, 2.0), "layer 7 is out of range"),
    ],
)
def test_bad_arguments_name_the_argument(tiny_model, tiny_reference, iv, fragment):
    with pytest.raises(MechprobeError, match=fragment):
        iv.hooks(tiny_model, n_tokens=11)
    # the HF reference validates the same way, before registering anything
    hf, _ = tiny_reference
    before = sum(len(m._forward_hooks) for m in hf.modules())
    ok = ScaleOutput(0, 2.0)  # a valid one first: it must be removed again on the error
    with pytest.raises(MechprobeError, match=fragment), reference_interventions(hf, [ok, iv], 11):
        pass
    assert sum(len(m._forward_hooks) for m in hf.modules()) == before


@pytest.mark.unit
def test_hook_pairs_name_existing_hook_points(tiny_model):
    pairs = intervention_hooks(
        tiny_model, [ZeroHead(1, 2, "k"), MLPNoise(0, positions=4), ScaleOutput(1, 2.0)]
    )
    assert [n for n, _ in pairs] == [
        "blocks.1.attn.hook_k",
        "blocks.0.mlp.hook_pre",
        "blocks.1.hook_resid_post",
    ]
    assert all(n in tiny_model.hook_dict for n, _ in pairs)


# --- each changes what it should


@pytest.mark.unit
@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_zero_head_zeroes_only_that_head(tiny_model, tiny_reference, component):
    toks = tokens_of(tiny_reference[1])
    name = f"blocks.1.attn.hook_{component}"
    base, _ = run_tl(tiny_model, toks, [], [name])
    acts, _ = run_tl(tiny_model, toks, [ZeroHead(1, 2, component)], [name])
    assert base[name][:, :, 2].abs().max() > 0
    assert torch.all(acts[name][:, :, 2] == 0)
    others = [0, 1, 3]
    assert torch.equal(acts[name][:, :, others], base[name][:, :, others])


@pytest.mark.unit
def test_mlp_noise_only_at_chosen_units_and_positions(tiny_model, tiny_reference):
    toks = tokens_of(tiny_reference[1]).repeat(2, 1)  # two batch rows get the same noise
    name = "blocks.0.mlp.hook_pre"
    iv = MLPNoise(0, units=slice(None, None, 2), positions=(4, 7), mean=10.0, std=1.0, seed=3)
    base, _ = run_tl(tiny_model, toks, [], [name])
    acts, _ = run_tl(tiny_model, toks, [iv], [name])
    got, ref = acts[name], base[name]
    noise = seeded_noise(2, 128, 10.0, 1.0, 3)
    for row in range(2):
        assert_close(got[row, [4, 7]][:, ::2], noise, atol=0)
    # right mean: 256 draws of N(10, 1): the sample mean is within 4 standard errors
    assert abs(got[0, [4, 7]][:, ::2].mean().item() - 10.0) < 4 / math.sqrt(256)
    mask = torch.ones_like(got, dtype=torch.bool)
    mask[:, 4, ::2] = False
    mask[:, 7, ::2] = False
    assert torch.equal(got[mask], ref[mask])
    # same seed -> same noise on the next forward pass; another seed -> other noise
    again, _ = run_tl(tiny_model, toks, [iv], [name])
    assert torch.equal(again[name], got)
    other, _ = run_tl(tiny_model, toks, [MLPNoise(0, positions=(4, 7), seed=4)], [name])
    assert not torch.equal(other[name], got)


@pytest.mark.unit
def test_scale_output_is_exact_and_propagates(tiny_model, tiny_reference):
    toks = tokens_of(tiny_reference[1])
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    base, base_logits = run_tl(tiny_model, toks, [], names)
    acts, logits = run_tl(tiny_model, toks, [ScaleOutput(0, 10.0)], names)
    assert_close(acts[names[0]], 10.0 * base[names[0]], atol=0, rtol=1e-6)
    assert (acts[names[1]] - base[names[1]]).abs().max() > 1e-3
    assert (logits - base_logits).abs().max() > 1e-4


@pytest.mark.unit
def test_composable_and_context_manager_removes_hooks(tiny_model, tiny_reference):
    toks = tokens_of(tiny_reference[1])
    with torch.inference_mode():
        base = tiny_model(toks)
    ivs = [ZeroHead(0, 1, "v"), ScaleOutput(1, 0.5)]
    with torch.inference_mode():
        both = tiny_model.run_with_hooks(toks, fwd_hooks=intervention_hooks(tiny_model, ivs))
        with intervene(tiny_model, ivs, n_tokens=toks.shape[1]):
            inside = tiny_model(toks)
        after = tiny_model(toks)
    assert torch.equal(inside, both)
    assert (both - base).abs().max() > 1e-4
    assert torch.equal(after, base)


# --- HF parity


TINY_CASES = [
    [],
    [ZeroHead(1, 2, "k")],
    [ZeroHead(0, 0, "q")],
    [ZeroHead(1, 3, "v")],
    [MLPNoise(1, units=slice(None, None, 2), positions=(4,))],
    [MLPNoise(0, units=(1, 5, 200), positions=None, mean=-3.0, std=2.0, seed=7)],
    [ScaleOutput(0, 0.1)],
    [ScaleOutput(0, 10.0)],
    [ScaleOutput(1, 10.0)],  # the last block: HF's last hidden state is after the final norm
    [ZeroHead(0, 2, "k"), MLPNoise(1, positions=4), ScaleOutput(0, 3.0)],
]


@pytest.mark.unit
@pytest.mark.parametrize("ivs", TINY_CASES, ids=lambda ivs: "+".join(type(i).__name__ for i in ivs))
def test_tl_matches_hf_reference_tiny(tiny_model, tiny_reference, ivs):
    hf, tok = tiny_reference
    toks = tokens_of(tok)
    capture_reference(hf, toks)  # transformers 5 installs its hidden-state hooks here, first
    hs, logits = tl_hidden(tiny_model, toks, ivs)
    ref = run_reference(hf, toks, ivs)
    assert len(ref["hidden_states"]) == len(hs) == 3
    assert max_diff(hs, ref["hidden_states"]) <= 1e-4
    assert max_diff([logits], [ref["logits"]]) <= 1e-4
    if ivs:  # the intervention did something the comparison could have missed
        base = run_reference(hf, toks, [])
        changed = max_diff(ref["hidden_states"], base["hidden_states"])
        assert changed > 1e-4


@pytest.mark.unit
def test_hf_zero_head_matches_capture_of_split_heads(tiny_reference):
    """The fused c_attn hook zeroes exactly K head 2 as capture_reference splits it."""
    hf, tok = tiny_reference
    toks = tokens_of(tok)
    base = capture_reference(hf, toks, layers=[1], attentions=False)
    with reference_interventions(hf, [ZeroHead(1, 2, "k")], toks.shape[1]):
        got = capture_reference(hf, toks, layers=[1], attentions=False)
    # capture hooks are registered after ours and see the modified c_attn output
    assert torch.all(got["blocks.1.attn.hook_k"][:, :, 2] == 0)
    assert torch.equal(
        got["blocks.1.attn.hook_k"][:, :, [0, 1, 3]], base["blocks.1.attn.hook_k"][:, :, [0, 1, 3]]
    )
    assert torch.equal(got["blocks.1.attn.hook_q"], base["blocks.1.attn.hook_q"])
    assert torch.equal(got["blocks.1.attn.hook_v"], base["blocks.1.attn.hook_v"])


@pytest.mark.unit
def test_hf_hook_order_matters_for_output_hidden_states(tiny_reference):
    """Why the reference prepends: transformers 5 records hidden states with its own block hooks."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("hidden states are returned by the model loop before transformers 5")
    hf, tok = tiny_reference
    toks = tokens_of(tok)
    with torch.inference_mode():
        base = hf(toks, output_hidden_states=True).hidden_states
    handle = (
        hf_arch(hf).module(hf, "block", 0).register_forward_hook(scale_block_hook(10.0))
    )  # appended
    try:
        with torch.inference_mode():
            late = hf(toks, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    assert torch.equal(late[1], base[1])  # recorded before our hook ran
    ours = run_reference(hf, toks, [ScaleOutput(0, 10.0)])["hidden_states"]
    assert_close(ours[1], 10.0 * base[1], atol=0, rtol=1e-6)
    assert_close(ours[2], late[2], atol=1e-5)  # downstream the same either way


# --- tuple-shaped block outputs


class TupleBlock(nn.Module):
    """A block as transformers 4.x returns it: (hidden, present, attentions)."""

    def __init__(self, block):
        super().__init__()
        self.block = block
        self.extra = torch.arange(3.0)

    def forward(self, hidden):
        return (self.block(hidden), None, self.extra)


@pytest.mark.unit
def test_scale_hook_on_tuple_output_direct():
    hidden, attn = torch.randn(1, 5, 8), torch.rand(1, 2, 5, 5)
    out = scale_block_hook(0.1)(None, (hidden,), (hidden, attn))
    assert isinstance(out, tuple) and len(out) == 2
    assert_close(out[0], hidden * 0.1, atol=0, rtol=1e-7)
    assert out[1] is attn
    plain = scale_block_hook(10.0)(None, (hidden,), hidden)
    assert isinstance(plain, torch.Tensor)
    assert_close(plain, hidden * 10.0, atol=0, rtol=1e-7)


@pytest.mark.unit
def test_scale_hook_on_tuple_returning_module(tiny_reference):
    hf, tok = tiny_reference
    block = hf_arch(hf).module(hf, "block", 0)
    with torch.inference_mode():
        x = hf.transformer.wte(tokens_of(tok)) + hf.transformer.wpe(torch.arange(11))[None]
        expected = block(x)
        wrapped = TupleBlock(block)
        handle = wrapped.register_forward_hook(scale_block_hook(10.0), prepend=True)
        try:
            out = wrapped(x)
        finally:
            handle.remove()
    assert isinstance(out, tuple) and len(out) == 3
    assert_close(out[0], 10.0 * expected, atol=0, rtol=1e-6)
    assert out[1] is None and torch.equal(out[2], wrapped.extra)


@pytest.mark.unit
def test_describe_block_output_is_live(tiny_reference):
    import transformers

    hf, tok = tiny_reference
    text = describe_block_output(hf, tokens_of(tok), layer=1)
    assert f"transformers {transformers.__version__}" in text
    assert "GPT2Block" in text and "output_attentions" in text
    assert "(1, 11, 64)" in text


# --- smollm2-135m (GQA, Llama)


SMOL_CASES = [
    [ZeroHead(3, 2, "k")],  # kv head 2 of 3
    [ZeroHead(3, 8, "q")],
    [ZeroHead(29, 0, "v")],
    [MLPNoise(5, units=slice(None, None, 2), positions=(4,))],
    [ScaleOutput(8, 0.1)],
    [ScaleOutput(8, 10.0)],
    [ScaleOutput(29, 10.0)],
]


@pytest.mark.integration
def test_tl_matches_hf_reference_smollm2(smol_model, smol_reference):
    hf, tok = smol_reference
    toks = tokens_of(tok)
    capture_reference(hf, toks, layers=[0], attentions=False)
    base = run_reference(hf, toks, [])
    for ivs in SMOL_CASES:
        hs, logits = tl_hidden(smol_model, toks, ivs)
        ref = run_reference(hf, toks, ivs)
        assert len(hs) == 31
        assert max_diff(hs, ref["hidden_states"]) <= 1e-4, ivs
        assert max_diff([logits], [ref["logits"]]) <= 1e-4, ivs
        if ivs != [ScaleOutput(29, 10.0)]:
            assert max_diff(ref["hidden_states"], base["hidden_states"]) > 1e-3, ivs


@pytest.mark.integration
def test_scaling_last_block_is_hidden_by_the_final_norm_smollm2(smol_model, smol_reference):
    """HF's last hidden state is after the final RMSNorm, which undoes a scale of the last block
    (up to eps); the scaled pre-norm output itself must still agree."""
    hf, tok = smol_reference
    toks = tokens_of(tok)
    iv = [ScaleOutput(29, 10.0)]
    name = "blocks.29.hook_resid_post"
    base_tl, _ = run_tl(smol_model, toks, [], [name])
    acts, _ = run_tl(smol_model, toks, iv, [name])
    with reference_interventions(hf, iv, toks.shape[1]):
        ref = capture_reference(hf, toks, layers=[29], attentions=False)
    assert_close(acts[name], ref[name], atol=1e-4)
    assert_close(acts[name], 10.0 * base_tl[name], atol=0, rtol=1e-6)
    scaled = run_reference(hf, toks, iv)["hidden_states"][-1]
    plain = run_reference(hf, toks, [])["hidden_states"][-1]
    assert max_diff([scaled], [plain]) < 1e-3


@pytest.mark.integration
def test_gqa_head_ranges_smollm2(smol_model):
    ZeroHead(3, 8, "q").validate(smol_model)
    with pytest.raises(MechprobeError, match=r"K head 3 is out of range \(0..2\)"):
        ZeroHead(3, 3, "k").validate(smol_model)
    with pytest.raises(MechprobeError, match="MLP unit 1536 is out of range"):
        MLPNoise(5, units=(1536,)).validate(smol_model)
